rule warmup:
    # Select-MoE stages 0-1 in one job (one model load, one start of torch): the base model
    # plus a quality gate at every MoE block (converted/), then train only the gates and
    # routers on a random share of the pool (LM loss + gate loss), so gates and routing
    # carry signal for the dump
    input:
        pools=list(CFG.datasets.values()),
        model=CFG.model_path,
    output:
        converted=directory(f"{RESULTS}/warmup/converted"),
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
        data=f"{RESULTS}/selection/selected_data.jsonl",
        model=CFG.train.model_path or CFG.model_path,
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
        micro_batch_size=scaled(CFG.train.settings.micro_batch_size),
        attempt=current_attempt,
    params:
        job=CFG.job,
        train=as_param(CFG.train.settings),
        out_dir=lambda wc, output: os.path.dirname(output.metrics),
    script:
        "../scripts/train.py"
