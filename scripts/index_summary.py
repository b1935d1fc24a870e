"""Rule index_summary: per-window build time, disk and RAM of one index -> TSV."""
from selectflow.index.store import summarize_windows
from selectflow.runtime.jobs import run_job

sm = snakemake  # noqa: F821 - injected by Snakemake
run_job(sm, lambda: summarize_windows(sm.params.index_dir, sm.output[0]))
