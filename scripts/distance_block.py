"""Rule distance_block: one upper-triangle block of the candidate distance matrix."""
from selectflow.runtime.jobs import run_job
from selectflow.stages.select import compute_block

sm = snakemake  # noqa: F821 - injected by Snakemake
run_job(
    sm,
    lambda: compute_block(
        sm.input[0],
        int(sm.wildcards.i),
        int(sm.wildcards.j),
        sm.params.block_size,
        sm.output[0],
        device=sm.params.device,
        sub_chunk=sm.resources.sub_chunk,
    ),
    size_name="sub_chunk",
)
