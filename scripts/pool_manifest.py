"""Checkpoint pool_manifest: every pool sample ordered by sample_id (item windows cut it)."""

from selectflow.runtime.jobs import run_job
from selectflow.stages.index import write_pool_manifest

sm = snakemake  # noqa: F821 - injected by Snakemake
run_job(sm, lambda: write_pool_manifest(list(sm.input.shards), sm.output[0]))
