"""selectflow.select: pool, quality, dedup, distances, diversity, FPS, strata, target."""
