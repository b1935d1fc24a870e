"""Rule compare_random_draws: a random baseline's further draws, one per fine-tuning seed after the first."""

from selectflow.config import CompareConfig, from_param
from selectflow.runtime.jobs import run_job
from selectflow.stages.compare import random_draws

sm = snakemake  # noqa: F821 - injected by Snakemake
run_job(
    sm,
    lambda: random_draws(
        sm.input.pool,
        sm.input.quality,
        list(sm.input.router),
        list(sm.output),
        from_param(CompareConfig, sm.params.compare),
        method=sm.wildcards.method,
        reference_tsv=sm.input.get("reference"),
        draw_references=list(sm.input.draw_references) if "draw_references" in sm.input.keys() else None,
    ),
)
