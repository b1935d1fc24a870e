"""Rule compare_target_set: method target's target set, sharing no record with the test set."""

from selectflow.config import CompareConfig, from_param
from selectflow.runtime.jobs import run_job
from selectflow.stages.compare import write_target_set

sm = snakemake  # noqa: F821 - injected by Snakemake
given = dict(sm.input.items())
run_job(
    sm,
    lambda: write_target_set(
        sm.output[0],
        sm.input.test,
        from_param(CompareConfig, sm.params.compare),
        datasets=sm.params.datasets,
        quality_tsv=given.get("quality"),
        router_paths=list(given.get("router", [])),
    ),
)
