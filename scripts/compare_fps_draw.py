"""Rule compare_fps_draw: fps's selection for one fine-tuning seed after the first (compare.fps_draws)."""

from selectflow.config import SelectionConfig, from_param
from selectflow.runtime.jobs import run_job
from selectflow.stages.compare import excluded_ids, fps_draw

sm = snakemake  # noqa: F821 - injected by Snakemake
run_job(
    sm,
    lambda: fps_draw(
        list(sm.input.router),
        excluded_ids(sm.input.heldout, list(sm.input.target), list(sm.input.exclude)),
        sm.output[0],
        from_param(SelectionConfig, sm.params.selection),
        int(sm.wildcards.draw),
        chunk=sm.resources.chunk,
        candidates=(sm.input.candidates, sm.input.quality),
    ),
    size_name="chunk",
)
