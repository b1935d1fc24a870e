"""Rule decontaminate: pool samples within the threshold of any evaluation sample -> TSV."""

from selectflow.config import DecontaminateConfig, IndexConfig, from_param
from selectflow.runtime.jobs import run_job
from selectflow.stages.index import decontaminate

sm = snakemake  # noqa: F821 - injected by Snakemake
inp, index = sm.input, from_param(IndexConfig, sm.params.index)
decon = from_param(DecontaminateConfig, sm.params.decontaminate)
run_job(
    sm,
    lambda: decontaminate(
        sm.params.index_dir,
        len(inp.windows),
        inp.queries,
        inp.encoder,
        sm.output[0],
        index,
        decon,
        sm.resources.batch_size,
    ),
    size_name="batch_size",
)
