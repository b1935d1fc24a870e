"""Rule demo_model: build the tiny MoE model and tokenizer from the demo pool, pre-trained on it."""
from selectflow.data.demo import build_demo_model
from selectflow.runtime.jobs import run_job

sm = snakemake  # noqa: F821 - injected by Snakemake
run_job(
    sm,
    lambda: build_demo_model(
        sm.output[0], sm.input.pool, seed=sm.params.seed, pretrain_epochs=sm.params.pretrain_epochs
    ),
)
