"""Room 3: grids of cells run into a run folder's records (grid, runner, launch, status, jobs,
liveness, cancel, interleave). Imports bench.core and bench.measure only (docs/architecture.md)."""
