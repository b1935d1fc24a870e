"""Rule router_dump: routing probabilities and response NLLs of a group of shards -> one HDF5 each."""
from selectflow.router.dump import DumpSettings, dump_shard_group
from selectflow.runtime.jobs import run_job

sm = snakemake  # noqa: F821 - injected by Snakemake
settings = DumpSettings(**{**sm.params.settings, "batch_size": sm.resources.batch_size})
run_job(
    sm,
    lambda: dump_shard_group(sm.input.model, list(sm.input.shards), list(sm.params.store), sm.output[0], settings),
    size_name="batch_size",
)
