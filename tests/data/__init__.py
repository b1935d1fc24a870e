"""selectflow.data: records, junk kinds, the real-text pool."""
