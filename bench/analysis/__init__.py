"""Room 4: records turned into comparisons, tables, plots and report sections, torch-free.

The flow: `load` (records -> typed groups and one DataFrame) -> `compare` (the one pairing rule and
statistics; docs/statistics.md) -> `tables`, `plots`, the studies' sections (`speed_report`,
`fidelity_report`, `roofline_report`) -> `render` (md, html, csv); `report` orchestrates. Imports
bench.core, and `bench.pipeline.status` for the states of cells without a record (torch-free); the
attention figure alone builds a model, with bench.measure's data and checkpoint readers (and says so
where torch is missing).
"""
