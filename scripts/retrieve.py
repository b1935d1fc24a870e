"""Rule retrieve: top-k pool neighbours of each query across all windows -> neighbors.tsv."""
from selectflow.runtime.jobs import run_job
from selectflow.stages.index import retrieve_neighbors

sm = snakemake  # noqa: F821 - injected by Snakemake
idx = sm.params.index
run_job(
    sm,
    lambda: retrieve_neighbors(
        sm.params.index_dir, len(sm.input.windows), sm.input.queries, sm.input.encoder, sm.params.k, sm.output[0],
        max_open=idx["max_open"], batch_size=sm.resources.batch_size, max_length=idx["max_length"],
        device=idx["device"],
    ),
    size_name="batch_size",
)
