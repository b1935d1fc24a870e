"""The workflow end to end: Snakemake runs, SLURM, bad inputs, the first hour of a user."""
