"""Rule compare_candidates: the selection's candidates, re-built on the pool less the held-out slice(s)."""

from selectflow.config import SelectionConfig, from_param
from selectflow.runtime.jobs import run_job
from selectflow.runtime.tables import read_tsv
from selectflow.stages.compare import heldout_ids
from selectflow.stages.select import build_candidates

sm = snakemake  # noqa: F821 - injected by Snakemake
exclude = (
    heldout_ids(sm.input.heldout)
    | {sid for path in sm.input.target for sid in heldout_ids(path)}
    | {sid for path in sm.input.exclude for sid in read_tsv(path, "excluded ids")["sample_id"]}
)
run_job(
    sm,
    lambda: build_candidates(
        list(sm.input.router),
        sm.output.h5,
        sm.output.quality,
        from_param(SelectionConfig, sm.params.selection),
        exclude,
    ),
)
