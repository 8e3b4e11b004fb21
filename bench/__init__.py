"""vtbench harness: complexity, latency, training, grids, launching, records and reports."""

__version__ = "0.1.0"
