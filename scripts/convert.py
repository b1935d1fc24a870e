"""Rule convert: Select-MoE stage 0, the base model plus a quality gate at every MoE block."""
from selectflow.router.gate import convert_model
from selectflow.runtime.jobs import run_job

sm = snakemake  # noqa: F821 - injected by Snakemake
run_job(
    sm,
    lambda: convert_model(
        sm.input.model, sm.output[0], trash=sm.params.trash, init_std=sm.params.init_std,
        seed=sm.params.seed, router_pattern=sm.params.router_pattern,
    ),
)
