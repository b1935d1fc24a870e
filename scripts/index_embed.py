"""Rule index_embed: a group of item windows -> encoder embeddings, one HDF5 file (encoder loaded once)."""
from selectflow.config import build_config
from selectflow.runtime.jobs import run_job
from selectflow.stages.index import index_embed

sm = snakemake  # noqa: F821 - injected by Snakemake
index, g = build_config(sm.config).index, int(sm.wildcards.g)
run_job(sm, lambda: index_embed(sm.input.manifest, g, sm.input.encoder, sm.output[0], index, sm.resources.batch_size),
        size_name="batch_size")
