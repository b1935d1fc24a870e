rule demo_pool:
    output:
        "resources/demo/demo_pool.jsonl",
    log:
        "logs/demo/demo_pool.log",
    conda:
        "../envs/selectflow.yaml"
    resources:
        attempt=current_attempt,
    params:
        job=CFG.job,
        demo=as_param(CFG.demo),
    script:
        "../scripts/demo_pool.py"


rule demo_model:
    input:
        pool="resources/demo/demo_pool.jsonl",
    output:
        directory("resources/demo/model"),
    log:
        "logs/demo/demo_model.log",
    conda:
        "../envs/selectflow.yaml"
    resources:
        attempt=current_attempt,
    params:
        job=CFG.job,
        demo=as_param(CFG.demo),
        proxy=as_param(CFG.proxy),
    script:
        "../scripts/demo_model.py"


rule proxy_model:
    # model.path: proxy -- a tiny MoE built on the run's own datasets (the demo model's recipe)
    input:
        pools=[CFG.datasets[name] for name in sorted(CFG.datasets)],
    output:
        directory(proxy_model_dir(CFG.run)),
    log:
        f"{LOGS}/proxy_model.log",
    benchmark:
        f"{BENCH}/proxy_model.tsv"
    conda:
        "../envs/selectflow.yaml"
    resources:
        attempt=current_attempt,
    params:
        job=CFG.job,
        proxy=as_param(CFG.proxy),
    script:
        "../scripts/proxy_model.py"


checkpoint split_dataset:
    input:
        lambda wc: CFG.datasets[wc.dataset],
    output:
        directory(f"{RESULTS}/shards/{{dataset}}"),
    log:
        f"{LOGS}/split_dataset/{{dataset}}.log",
    conda:
        "../envs/selectflow.yaml"
    resources:
        attempt=current_attempt,
    params:
        job=CFG.job,
        shard_size=CFG.shard_size,
    script:
        "../scripts/split_dataset.py"
