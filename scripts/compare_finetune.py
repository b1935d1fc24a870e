"""Rule compare_finetune: fine-tune the student on one method's selection once per seed, then evaluate each."""

from selectflow.config import TrainConfig, from_param
from selectflow.runtime.jobs import run_job
from selectflow.stages.compare import finetune_and_eval

sm = snakemake  # noqa: F821 - injected by Snakemake
size = dict(micro_batch_size=sm.resources.micro_batch_size, attempt=sm.resources.attempt)
run_job(
    sm,
    lambda: finetune_and_eval(
        sm.input.model,
        list(sm.input.data),
        sm.input.test,
        sm.params.out_dir,
        sm.output[0],
        from_param(TrainConfig, sm.params.train),
        seeds=sm.params.seeds,
        **size,
    ),
    size_name="micro_batch_size",
)
