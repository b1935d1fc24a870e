"""Rule index_embed: a group of item windows -> encoder embeddings, one HDF5 file (encoder loaded once)."""

from selectflow.config import IndexConfig, from_param
from selectflow.runtime.jobs import run_job
from selectflow.stages.index import index_embed

sm = snakemake  # noqa: F821 - injected by Snakemake
index, g = from_param(IndexConfig, sm.params.index), int(sm.wildcards.g)
run_job(
    sm,
    lambda: index_embed(sm.input.manifest, g, sm.input.encoder, sm.output[0], index, sm.resources.batch_size),
    size_name="batch_size",
)
