"""Outputs of a run: atomic file writes, the INT8 model file, the report (JSON, Markdown) and its plots."""
