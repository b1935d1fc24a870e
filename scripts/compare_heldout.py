"""Rule compare_heldout: the held-out evaluation slice of the pool, drawn before any selection."""

from selectflow.config import CompareConfig, from_param
from selectflow.runtime.jobs import run_job
from selectflow.stages.compare import draw_heldout

sm = snakemake  # noqa: F821 - injected by Snakemake
run_job(
    sm,
    lambda: draw_heldout(
        sm.input.quality, list(sm.input.router), sm.output[0], from_param(CompareConfig, sm.params.compare)
    ),
)
