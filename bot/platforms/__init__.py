"""The chat platforms: one sub-package each, split by job (events in, delivery out, text rules)."""
