"""Rule router_dump: routing probabilities and response NLLs of a group of shards -> one HDF5 each."""

from selectflow.config import RouterDumpConfig, from_param
from selectflow.runtime.jobs import run_job
from selectflow.stages.router import router_dump

sm = snakemake  # noqa: F821 - injected by Snakemake
cfg = from_param(RouterDumpConfig, sm.params.router_dump)
run_job(
    sm,
    lambda: router_dump(
        sm.input.model, list(sm.input.shards), list(sm.params.store), sm.output[0], cfg, sm.resources.batch_size
    ),
    size_name="batch_size",
)
