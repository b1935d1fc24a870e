"""Rule compare_downstream: mean and spread of the eval loss over seeds, per method -> downstream.tsv."""

from selectflow.runtime.jobs import run_job
from selectflow.stages.compare import downstream

sm = snakemake  # noqa: F821 - injected by Snakemake
run_job(sm, lambda: downstream(dict(zip(sm.params.methods, sm.input)), sm.output[0]))
