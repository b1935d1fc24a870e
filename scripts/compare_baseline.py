"""Rule compare_baseline: one baseline selector's picks on the comparison's pool."""

from selectflow.config import CompareConfig, from_param
from selectflow.runtime.jobs import run_job
from selectflow.stages.compare import pick_baseline

sm = snakemake  # noqa: F821 - injected by Snakemake
run_job(
    sm,
    lambda: pick_baseline(
        sm.wildcards.method,
        sm.input.pool,
        sm.output[0],
        from_param(CompareConfig, sm.params.compare),
        sm.params.device,
        reference_tsv=sm.input.get("reference"),
    ),
)
