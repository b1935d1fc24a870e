"""Rules target_router, compare_target_router: target records routed by the pool's model -> one HDF5 file."""

from selectflow.config import RouterDumpConfig, from_param
from selectflow.runtime.jobs import run_job
from selectflow.stages.router import dump_target

sm = snakemake  # noqa: F821 - injected by Snakemake
cfg = from_param(RouterDumpConfig, sm.params.router_dump)
run_job(
    sm,
    lambda: dump_target(sm.input.model, sm.input.target, sm.output[0], cfg, sm.resources.batch_size),
    size_name="batch_size",
)
