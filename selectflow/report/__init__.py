"""The run's report: resources (job records + benchmarks), routing figures, the other figures
(quality, FPS, training, index), example records, the console summary; canvas holds what they share."""
