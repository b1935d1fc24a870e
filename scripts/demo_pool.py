"""Rule demo_pool: write the deterministic demo instruction pool."""

from selectflow.config import DemoConfig, from_param
from selectflow.runtime.jobs import run_job
from selectflow.stages.data import demo_pool

sm = snakemake  # noqa: F821 - injected by Snakemake
demo = from_param(DemoConfig, sm.params.demo)
run_job(sm, lambda: demo_pool(sm.output[0], demo.n_records, demo.seed))
