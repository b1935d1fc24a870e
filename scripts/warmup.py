"""Rule warmup: Select-MoE stage 0 (convert: a quality gate at every MoE block), then stage 1
(only the quality gates and routers of the converted model train), in one job."""

from selectflow.config import WarmupConfig, from_param
from selectflow.runtime.jobs import run_job
from selectflow.stages.train import convert, warmup

sm = snakemake  # noqa: F821 - injected by Snakemake
cfg, pattern = from_param(WarmupConfig, sm.params.warmup), sm.params.router_pattern
size = dict(micro_batch_size=sm.resources.micro_batch_size, attempt=sm.resources.attempt)


def stages_0_1():
    convert(
        sm.input.model,
        sm.output.converted,
        trash=cfg.trash_expert,
        init_std=cfg.gate_init_std,
        seed=cfg.train.seed,
        router_pattern=pattern,
    )
    warmup(
        sm.output.converted,
        sm.input.pools,
        sm.params.out_dir,
        cfg.train,
        subset_ratio=cfg.subset_ratio,
        quality_loss_weight=cfg.quality_loss_weight,
        gate_objective=cfg.gate_objective,
        router_pattern=pattern,
        **size,
    )


run_job(sm, stages_0_1, size_name="micro_batch_size")
