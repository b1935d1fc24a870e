"""Per-window FAISS indexes: windows, embeddings, the on-disk store, retrieval."""
