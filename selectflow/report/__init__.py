"""The run's report: figures, example records, the console summary."""
