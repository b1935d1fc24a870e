"""Rule compare_student: the seeded scratch student every selection is fine-tuned from."""

from selectflow.config import CompareConfig, from_param
from selectflow.runtime.jobs import run_job
from selectflow.stages.compare import build_student

sm = snakemake  # noqa: F821 - injected by Snakemake
cmp = from_param(CompareConfig, sm.params.compare)
run_job(sm, lambda: build_student(sm.output[0], cmp, cmp.train.max_length))
