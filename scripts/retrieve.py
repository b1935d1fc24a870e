"""Rule retrieve: top-k pool neighbours of each query across all windows -> neighbors.tsv."""

from selectflow.config import IndexConfig, RetrieveConfig, from_param
from selectflow.runtime.jobs import run_job
from selectflow.stages.index import retrieve

sm = snakemake  # noqa: F821 - injected by Snakemake
inp, index, ret = sm.input, from_param(IndexConfig, sm.params.index), from_param(RetrieveConfig, sm.params.retrieve)
run_job(
    sm,
    lambda: retrieve(
        sm.params.index_dir,
        len(inp.windows),
        inp.queries,
        inp.encoder,
        sm.output[0],
        index,
        ret,
        sm.resources.batch_size,
    ),
    size_name="batch_size",
)
