"""Room 5: studies that drive the pipeline and then the analysis (speed, fidelity, roofline) and the
regeneration of the committed results. Imports bench.core, bench.measure, bench.pipeline and
bench.analysis only (docs/architecture.md)."""
