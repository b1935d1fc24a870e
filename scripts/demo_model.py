"""Rule demo_model: build the tiny MoE model and tokenizer from the demo pool, pre-trained on it."""
from selectflow.config import DemoConfig, section
from selectflow.runtime.jobs import run_job
from selectflow.stages.data import demo_model

sm = snakemake  # noqa: F821 - injected by Snakemake
run_job(sm, lambda: demo_model(sm.input.pool, sm.output[0], section(DemoConfig, sm.params.demo)))
