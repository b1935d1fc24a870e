"""Checkpoint candidates: quality scores, stage-1 filter and FPS features -> candidates.h5."""
import pandas as pd

from selectflow.runtime.jobs import run_job
from selectflow.stages.select import build_candidates

sm = snakemake  # noqa: F821 - injected by Snakemake
sel = sm.params.selection
exclude = set()
for path in sm.input.exclude:  # pool samples too close to the evaluation set (rule decontaminate)
    exclude |= set(pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False)["sample_id"])
run_job(
    sm,
    lambda: build_candidates(
        list(sm.input.router),
        sm.output.h5,
        sm.output.quality,
        method=sel["quality_method"],
        field=sel["quality_field"],
        selection_percentage=sel["selection_percentage"],
        importance_selection_percentage=sel["importance_selection_percentage"],
        disable_diversity=sel["disable_diversity"],
        metric=sel["metric"],
        exclude_ids=exclude,
        routing_strata=sel["routing_strata"],
    ),
)
