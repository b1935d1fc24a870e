"""Rule proxy_model: the proxy scorer of the run's datasets (model.path: proxy)."""

from selectflow.config import ProxyConfig, from_param
from selectflow.runtime.jobs import run_job
from selectflow.stages.data import proxy_model

sm = snakemake  # noqa: F821 - injected by Snakemake
run_job(sm, lambda: proxy_model(list(sm.input.pools), sm.output[0], from_param(ProxyConfig, sm.params.proxy)))
