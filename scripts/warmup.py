"""Rule warmup: Select-MoE stage 0 (convert: a quality gate at every MoE block), then stage 1
(only the quality gates and routers of the converted model train), in one job."""
from selectflow.config import TrainConfig, from_param
from selectflow.runtime.jobs import run_job
from selectflow.stages.train import convert, warmup

sm = snakemake  # noqa: F821 - injected by Snakemake
size = dict(micro_batch_size=sm.resources.micro_batch_size, attempt=sm.resources.attempt)


def stages_0_1():
    convert(sm.input.model, sm.output.converted, **sm.params.convert)
    warmup(sm.output.converted, sm.input.pools, sm.params.out_dir, from_param(TrainConfig, sm.params.train),
           subset_ratio=sm.params.subset_ratio, quality_loss_weight=sm.params.quality_loss_weight,
           gate_objective=sm.params.gate_objective, router_pattern=sm.params.router_pattern, **size)


run_job(sm, stages_0_1, size_name="micro_batch_size")
