"""Rule demo_pool: write the deterministic demo instruction pool."""
from selectflow.runtime.jobs import run_job
from selectflow.stages.data import demo_pool

sm = snakemake  # noqa: F821 - injected by Snakemake
run_job(sm, lambda: demo_pool(sm.output[0], sm.params.n_records, sm.params.seed))
