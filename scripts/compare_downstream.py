"""Rule compare_downstream: mean and spread of the eval loss over seeds, per method -> downstream.tsv."""
from selectflow.runtime.jobs import run_job
from selectflow.stages.compare import downstream

sm = snakemake  # noqa: F821 - injected by Snakemake
n = sm.params.seeds
files = list(sm.input)
run_job(sm, lambda: downstream({m: files[j * n : (j + 1) * n] for j, m in enumerate(sm.params.methods)},
                               sm.output[0]))
