"""Rule fps: farthest-point sampling over the candidates -> the FPS curve TSV (selection.fps_gpus ranks);
with selection.target, the candidates nearest to the target records instead."""

from selectflow.config import SelectionConfig, from_param
from selectflow.runtime.jobs import run_job
from selectflow.stages.select import run_fps

sm = snakemake  # noqa: F821 - injected by Snakemake
sel = from_param(SelectionConfig, sm.params.selection)
target = list(sm.input.target)
run_job(
    sm,
    lambda: run_fps(
        sm.input.candidates,
        sm.output[0],
        sel,
        block_dir=sm.params.block_dir,
        chunk=sm.resources.chunk,
        target_h5=target[0] if target else None,
    ),
    size_name="chunk",
)
