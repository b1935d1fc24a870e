"""Checkpoint split_dataset: one dataset -> shards of shard_size normalised records."""

from selectflow.runtime.jobs import run_job
from selectflow.stages.data import split_dataset

sm = snakemake  # noqa: F821 - injected by Snakemake
run_job(sm, lambda: split_dataset(sm.input[0], sm.wildcards.dataset, sm.output[0], sm.params.shard_size))
