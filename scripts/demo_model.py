"""Rule demo_model: the proxy model of the demo pool (tokenizer, tiny MoE, pre-trained on it)."""

from selectflow.config import DemoConfig, ProxyConfig, from_param
from selectflow.runtime.jobs import run_job
from selectflow.stages.data import demo_model

sm = snakemake  # noqa: F821 - injected by Snakemake
run_job(
    sm,
    lambda: demo_model(
        sm.input.pool, sm.output[0], from_param(DemoConfig, sm.params.demo), from_param(ProxyConfig, sm.params.proxy)
    ),
)
