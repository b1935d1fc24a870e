"""Rule selected_data: join picks with the original records -> selected_data.jsonl, summary, final quality.tsv."""

from selectflow.runtime.jobs import run_job
from selectflow.stages.select import write_selection

sm = snakemake  # noqa: F821 - injected by Snakemake
out = sm.output
run_job(
    sm,
    lambda: write_selection(
        sm.input.curve, sm.input.quality, list(sm.input.router), out.selected, out.summary, out.quality
    ),
)
