"""Room 4: records turned into comparisons, tables, plots and report sections, torch-free.

The flow: `load` (records -> typed groups and one DataFrame) -> `compare` (the one pairing rule and
statistics; docs/statistics.md) -> `tables`, `plots`, the studies' sections (`speed_report`,
`fidelity_report`, `roofline_report`) -> `render` (md, html, csv); `report` orchestrates. Imports
bench.core only; the attention figure alone builds a model (and says so where torch is missing).
"""
