"""selectflow.report and stages.report: figures, per-job records, the Snakemake report."""
