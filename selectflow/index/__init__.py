"""Per-window FAISS indexes: windows, embeddings, the files of a window (layout), build, store, summary, retrieval."""
