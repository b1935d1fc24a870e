"""Rule decontaminate: pool samples within the threshold of any evaluation sample -> TSV."""
from selectflow.config import build_config
from selectflow.runtime.jobs import run_job
from selectflow.stages.index import decontaminate

sm = snakemake  # noqa: F821 - injected by Snakemake
cfg, inp = build_config(sm.config), sm.input
run_job(sm, lambda: decontaminate(sm.params.index_dir, len(inp.windows), inp.queries, inp.encoder, sm.output[0],
                                  cfg.index, cfg.decontaminate, sm.resources.batch_size), size_name="batch_size")
