"""Rule distance_block: one upper-triangle block of the candidate distance matrix."""
from selectflow.runtime.jobs import run_job
from selectflow.stages.select import compute_block

sm = snakemake  # noqa: F821 - injected by Snakemake
i, j, sel = int(sm.wildcards.i), int(sm.wildcards.j), sm.params.selection  # a SelectionConfig (CFG.selection)
run_job(sm, lambda: compute_block(sm.input[0], i, j, sm.output[0], sel, sm.resources.sub_chunk), size_name="sub_chunk")
