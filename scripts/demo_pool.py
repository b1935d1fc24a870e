"""Rule demo_pool: write the deterministic demo instruction pool."""
from selectflow.data.demo import write_demo_pool
from selectflow.runtime.jobs import run_job

sm = snakemake  # noqa: F821 - injected by Snakemake
run_job(sm, lambda: write_demo_pool(sm.output[0], sm.params.n_records, sm.params.seed))
