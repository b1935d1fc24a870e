"""Rule compare_pool: the kept pool the baselines choose from (features, k-means clusters, thresholds)."""

from selectflow.config import CompareConfig, SelectionConfig, from_param
from selectflow.runtime.jobs import run_job
from selectflow.stages.compare import build_pool

sm = snakemake  # noqa: F821 - injected by Snakemake
run_job(
    sm,
    lambda: build_pool(
        list(sm.input.router),
        sm.input.candidates,
        sm.input.quality,
        sm.output[0],
        from_param(CompareConfig, sm.params.compare),
        from_param(SelectionConfig, sm.params.selection),
    ),
)
