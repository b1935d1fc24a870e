"""Rule router_dump: routing probabilities and response NLLs of one shard -> HDF5."""
from selectflow.jobs import run_job
from selectflow.router import DumpSettings, dump_shard_file

sm = snakemake  # noqa: F821 - injected by Snakemake
settings = DumpSettings(**{**sm.params.settings, "batch_size": sm.resources.batch_size})
run_job(
    sm,
    lambda: dump_shard_file(sm.input.model, sm.input.shard, sm.output[0], settings),
    size_name="batch_size",
    gpu=True,
)
