"""Rule index_summary: per-window build time, disk and RAM of one index -> TSV."""

from selectflow.runtime.jobs import run_job
from selectflow.stages.index import index_summary

sm = snakemake  # noqa: F821 - injected by Snakemake
run_job(sm, lambda: index_summary(sm.params.index_dir, sm.output[0]))
