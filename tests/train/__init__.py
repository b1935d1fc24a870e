"""selectflow.train: memory estimate, loader, OOM retry, trainer."""
