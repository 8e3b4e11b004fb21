"""Room 1, the lowest: shared types, persistence and helpers (errors, util, tables, modelref,
modelfacts, contracts, records). Imports no other room of bench/ (docs/architecture.md)."""
