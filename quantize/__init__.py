"""The conversion pipeline: rewrites, export, INT8 and the accuracy check (torch side)."""
