"""Rule convert: Select-MoE stage 0, the base model plus a quality gate at every MoE block."""
from selectflow.runtime.jobs import run_job
from selectflow.stages.train import convert

sm = snakemake  # noqa: F821 - injected by Snakemake
p = sm.params
run_job(sm, lambda: convert(sm.input.model, sm.output[0], trash=p.trash, init_std=p.init_std, seed=p.seed,
                            router_pattern=p.router_pattern))
