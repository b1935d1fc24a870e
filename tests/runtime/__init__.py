"""selectflow.runtime: GPUs, units, OOM under a real memory limit."""
