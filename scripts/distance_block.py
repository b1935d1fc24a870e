"""Rule distance_block: one upper-triangle block of the candidate distance matrix."""

from selectflow.config import SelectionConfig, from_param
from selectflow.runtime.jobs import run_job
from selectflow.stages.select import compute_block

sm = snakemake  # noqa: F821 - injected by Snakemake
i, j, sel = int(sm.wildcards.i), int(sm.wildcards.j), from_param(SelectionConfig, sm.params.selection)
run_job(sm, lambda: compute_block(sm.input[0], i, j, sm.output[0], sel, sm.resources.sub_chunk), size_name="sub_chunk")
