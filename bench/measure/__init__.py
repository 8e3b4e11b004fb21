"""Room 2: measuring one model (complexity, latency, roofline, training and its data, checkpoints,
loggers, distributed). Imports bench.core only (docs/architecture.md)."""
