"""Rule decontaminate: pool samples within the threshold of any evaluation sample -> TSV."""
from selectflow.runtime.jobs import run_job
from selectflow.stages.index import find_contaminated

sm = snakemake  # noqa: F821 - injected by Snakemake
idx = sm.params.index
run_job(
    sm,
    lambda: find_contaminated(
        sm.params.index_dir, len(sm.input.windows), sm.input.queries, sm.input.encoder, sm.params.threshold,
        sm.output[0], max_open=idx["max_open"], batch_size=sm.resources.batch_size, max_length=idx["max_length"],
        device=idx["device"],
    ),
    size_name="batch_size",
)
