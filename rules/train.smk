rule convert:
    # Select-MoE stage 0: the base model's files plus a quality gate at every MoE block.
    input:
        model=config["model"]["path"],
    output:
        directory(f"{RESULTS}/warmup/converted"),
    log:
        f"{LOGS}/convert.log",
    conda:
        "../envs/selectflow.yaml"
    resources:
        attempt=current_attempt,
    params:
        trash=config["warmup"]["trash_expert"],
        init_std=config["warmup"]["gate_init_std"],
        seed=warmup_train_config()["seed"],
        router_pattern=config["router_dump"]["router_pattern"],
    script:
        "../scripts/convert.py"


rule warmup:
    # Select-MoE stage 1: train only the quality gates and routers on a random share of
    # the pool (LM loss + gate loss), so gates and routing carry signal for the dump.
    input:
        pools=list(config["datasets"].values()),
        model=rules.convert.output[0],
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
        quality_loss_weight=config["warmup"]["quality_loss_weight"],
        router_pattern=config["router_dump"]["router_pattern"],
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
