"""The router stage: capture per family, the dump, its HDF5 layout, Select-MoE's quality gate."""
