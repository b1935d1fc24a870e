"""Checkpoint candidates: quality scores, stage-1 filter and FPS features -> candidates.h5."""

from selectflow.config import SelectionConfig, from_param
from selectflow.runtime.jobs import run_job
from selectflow.runtime.tables import read_tsv
from selectflow.stages.select import build_candidates

sm = snakemake  # noqa: F821 - injected by Snakemake
# pool samples too close to the evaluation set (rule decontaminate)
exclude = {sid for path in sm.input.exclude for sid in read_tsv(path, "excluded ids")["sample_id"]}
sel = from_param(SelectionConfig, sm.params.selection)
run_job(sm, lambda: build_candidates(list(sm.input.router), sm.output.h5, sm.output.quality, sel, exclude))
