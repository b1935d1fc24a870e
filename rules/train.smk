rule warmup:
    # Select-MoE stage 1: a short fine-tune on a random share of the pool, so routing
    # carries signal before the router dump.
    input:
        pools=list(config["datasets"].values()),
        model=config["model"]["path"],
    output:
        checkpoint=directory(f"{RESULTS}/warmup/checkpoint"),
        metrics=f"{RESULTS}/warmup/metrics.tsv",
        memory=f"{RESULTS}/warmup/memory.tsv",
    log:
        f"{LOGS}/warmup.log",
    benchmark:
        f"{BENCH}/warmup.tsv"
    conda:
        "../envs/selectflow.yaml"
    resources:
        gpu=1,
        micro_batch_size=scaled(warmup_train_config().get("micro_batch_size") or 1),
        attempt=current_attempt,
    params:
        train=warmup_train_config(),
        subset_ratio=config["warmup"]["subset_ratio"],
        out_dir=lambda wc, output: os.path.dirname(output.metrics),
    script:
        "../scripts/train.py"


rule train:
    input:
        data=f"{RESULTS}/selection/selected_data.jsonl",
        model=config["train"].get("model_path") or config["model"]["path"],
    output:
        checkpoint=directory(f"{RESULTS}/train/checkpoint"),
        metrics=f"{RESULTS}/train/metrics.tsv",
        memory=f"{RESULTS}/train/memory.tsv",
    log:
        f"{LOGS}/train.log",
    benchmark:
        f"{BENCH}/train.tsv"
    conda:
        "../envs/selectflow.yaml"
    resources:
        gpu=1,
        micro_batch_size=scaled(train_config().get("micro_batch_size") or 1),
        attempt=current_attempt,
    params:
        train=train_config(),
        subset_ratio=None,
        out_dir=lambda wc, output: os.path.dirname(output.metrics),
    script:
        "../scripts/train.py"
