"""Rule fps: farthest-point sampling over the candidates -> the FPS curve TSV."""
from selectflow.runtime.jobs import run_job
from selectflow.stages.select import run_fps

sm = snakemake  # noqa: F821 - injected by Snakemake
sel = sm.params.selection
run_job(
    sm,
    lambda: run_fps(
        sm.input.candidates,
        sm.output[0],
        mode=sel["distance_mode"],
        block_dir=sm.params.block_dir,
        block_size=sel["distance_batch_size"],
        device=sel["device"],
        log_interval=sel["fps_log_interval"],
        chunk=sm.resources.chunk,
    ),
    size_name="chunk",
)
