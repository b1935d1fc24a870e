"""selectflow.index: windows, store, retrieval."""
