"""Rule compare_target: method target, the comparison's candidates nearest to its target set."""

from selectflow.config import SelectionConfig, from_param
from selectflow.runtime.jobs import run_job
from selectflow.stages.select import pick_toward_target

sm = snakemake  # noqa: F821 - injected by Snakemake
run_job(
    sm,
    lambda: pick_toward_target(
        sm.input.candidates,
        sm.input.target,
        sm.output[0],
        from_param(SelectionConfig, sm.params.selection),
        chunk=sm.resources.chunk,
    ),
    size_name="chunk",
)
