"""Rule compare_testset: the demo's fresh test set, none of its records in the pool."""

from selectflow.config import CompareConfig, from_param
from selectflow.runtime.jobs import run_job
from selectflow.stages.compare import write_testset

sm = snakemake  # noqa: F821 - injected by Snakemake
run_job(sm, lambda: write_testset(sm.params.datasets, sm.output[0], from_param(CompareConfig, sm.params.compare)))
