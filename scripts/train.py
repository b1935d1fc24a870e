"""Rule train: fine-tune a causal LM on the selection (resumes from results/.../train/resume/)."""

from selectflow.config import TrainConfig, from_param
from selectflow.runtime.jobs import run_job
from selectflow.stages.train import train

sm = snakemake  # noqa: F821 - injected by Snakemake
size = dict(micro_batch_size=sm.resources.micro_batch_size, attempt=sm.resources.attempt)
run_job(
    sm,
    lambda: train(sm.input.model, sm.input.data, sm.params.out_dir, from_param(TrainConfig, sm.params.train), **size),
    size_name="micro_batch_size",
)
