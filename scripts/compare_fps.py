"""Rule compare_fps: the main method (FPS) on the comparison's candidates."""

from selectflow.config import SelectionConfig, from_param
from selectflow.runtime.jobs import run_job
from selectflow.stages.compare import pick_fps

sm = snakemake  # noqa: F821 - injected by Snakemake
run_job(
    sm,
    lambda: pick_fps(
        sm.input[0], sm.output[0], from_param(SelectionConfig, sm.params.selection), chunk=sm.resources.chunk
    ),
    size_name="chunk",
)
