"""Room 4: records and measurements turned into tables, plots and studies (report, plots, stats,
reference, fidelity, speed). Imports bench.core, bench.measure and bench.pipeline only
(docs/architecture.md)."""
