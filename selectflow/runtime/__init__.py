"""What every job needs: job wrapper, OOM handling, devices and GPUs, locks, atomic files, errors."""
