"""Rule retrieve: top-k pool neighbours of each query across all windows -> neighbors.tsv."""
from selectflow.config import build_config
from selectflow.runtime.jobs import run_job
from selectflow.stages.index import retrieve

sm = snakemake  # noqa: F821 - injected by Snakemake
cfg, inp = build_config(sm.config), sm.input
run_job(sm, lambda: retrieve(sm.params.index_dir, len(inp.windows), inp.queries, inp.encoder, sm.output[0], cfg.index,
                             cfg.retrieve, sm.resources.batch_size), size_name="batch_size")
