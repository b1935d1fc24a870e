rule warmup:
    # Select-MoE stages 0-1 in one job (one model load, one start of torch): the base model
    # plus a quality gate at every MoE block (converted/), then train only the gates and
    # routers on a random share of the pool (LM loss + gate loss), so gates and routing
    # carry signal for the dump
    input:
        pools=list(CFG.datasets.values()),
        model=CFG.model_path,
    output:
        converted=directory(PATHS.warmup_converted),
        checkpoint=directory(PATHS.warmup_checkpoint),
        metrics=PATHS.warmup_metrics,
        memory=PATHS.warmup_memory,
    log:
        PATHS.log("warmup"),
    benchmark:
        PATHS.benchmark("warmup")
    conda:
        "../envs/selectflow.yaml"
    resources:
        gpu=1,
        micro_batch_size=scaled(CFG.warmup.train.micro_batch_size),
        attempt=current_attempt,
    params:
        job=CFG.job,
        warmup=as_param(CFG.warmup),
        router_pattern=CFG.router_dump.router_pattern,
        out_dir=lambda wc, output: os.path.dirname(output.metrics),
    script:
        "../scripts/warmup.py"


rule train:
    input:
        data=PATHS.selected_data,
        model=CFG.train.model_path or CFG.model_path,
    output:
        checkpoint=directory(PATHS.train_checkpoint),
        metrics=PATHS.train_metrics,
        memory=PATHS.train_memory,
    log:
        PATHS.log("train"),
    benchmark:
        PATHS.benchmark("train")
    conda:
        "../envs/selectflow.yaml"
    resources:
        gpu=1,
        micro_batch_size=scaled(CFG.train.settings.micro_batch_size),
        attempt=current_attempt,
    params:
        job=CFG.job,
        train=as_param(CFG.train.settings),
        out_dir=lambda wc, output: os.path.dirname(output.metrics),
    script:
        "../scripts/train.py"
