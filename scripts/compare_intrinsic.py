"""Rule compare_intrinsic: intrinsic metrics of every method's selection -> intrinsic.tsv."""

from selectflow.runtime.jobs import run_job
from selectflow.stages.compare import intrinsic

sm = snakemake  # noqa: F821 - injected by Snakemake
run_job(sm, lambda: intrinsic(dict(zip(sm.params.methods, sm.input.selected)), sm.input.pool, sm.output[0]))
