"""Rule compare_full_pools: the comparison's whole pools (kept samples; every sample) as training data."""

from selectflow.runtime.jobs import run_job
from selectflow.stages.compare import write_full_pools

sm = snakemake  # noqa: F821 - injected by Snakemake
run_job(
    sm,
    lambda: write_full_pools(
        sm.input.quality, list(sm.input.router), {"full_kept": sm.output.full_kept, "full_raw": sm.output.full_raw}
    ),
)
