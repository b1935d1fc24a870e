"""Rules train and warmup: fine-tune a causal LM (resumes from results/.../resume/).

The warm-up trains only the quality gates and routers of the converted model (selectflow.router.gate).
"""
from selectflow.router.objective import GateObjective
from selectflow.runtime.jobs import run_job
from selectflow.train import train, train_on_pool

sm = snakemake  # noqa: F821 - injected by Snakemake
attempt = sm.resources.attempt
if sm.params.subset_ratio is None:
    body = lambda: train(sm.input.model, sm.input.data, sm.params.out_dir, sm.params.train, attempt=attempt)  # noqa: E731
else:  # the warm-up: Select-MoE stage 1 on the converted model
    objective = GateObjective(sm.params.quality_loss_weight, sm.params.router_pattern)
    body = lambda: train_on_pool(  # noqa: E731
        sm.input.model, list(sm.input.pools), sm.params.out_dir, sm.params.train,
        subset_ratio=sm.params.subset_ratio, attempt=attempt, objective=objective,
    )
run_job(sm, body, size_name="micro_batch_size")
