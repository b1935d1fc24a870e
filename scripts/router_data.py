"""Checkpoint router_data: every stored shard linked to router_data/{dataset}/{shard}.h5, and their listing."""

from selectflow.runtime.jobs import run_job
from selectflow.stages.router import link_router_data

sm = snakemake  # noqa: F821 - injected by Snakemake
run_job(sm, lambda: link_router_data(list(sm.input), sm.output[0]))
