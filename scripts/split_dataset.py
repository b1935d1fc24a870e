"""Checkpoint split_dataset: one dataset -> shards of shard_size normalised records."""
from selectflow.data.records import split_into_shards
from selectflow.runtime.jobs import run_job

sm = snakemake  # noqa: F821 - injected by Snakemake
run_job(sm, lambda: split_into_shards(sm.input[0], sm.wildcards.dataset, sm.output[0], sm.params.shard_size))
