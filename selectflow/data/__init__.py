"""Instruction records: formats, ids, checks; the demo pool and model."""
