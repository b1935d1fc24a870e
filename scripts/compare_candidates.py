"""Rule compare_candidates: the selection's candidates, re-built on the pool less the held-out slice(s)."""

from selectflow.config import SelectionConfig, from_param
from selectflow.runtime.jobs import run_job
from selectflow.stages.compare import excluded_ids
from selectflow.stages.select import build_candidates

sm = snakemake  # noqa: F821 - injected by Snakemake
run_job(
    sm,
    lambda: build_candidates(
        list(sm.input.router),
        sm.output.h5,
        sm.output.quality,
        from_param(SelectionConfig, sm.params.selection),
        excluded_ids(sm.input.heldout, list(sm.input.target), list(sm.input.exclude)),
    ),
)
