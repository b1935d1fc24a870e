"""File-in / file-out functions, one module per rules/*.smk, each called by one script."""
