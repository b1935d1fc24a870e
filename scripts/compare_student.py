"""Rule compare_student: the seeded scratch student every selection is fine-tuned from."""
from selectflow.config import CompareConfig, from_param
from selectflow.runtime.jobs import run_job
from selectflow.stages.compare import build_student

sm = snakemake  # noqa: F821 - injected by Snakemake
run_job(sm, lambda: build_student(sm.output[0], from_param(CompareConfig, sm.params.compare), sm.params.max_length))
