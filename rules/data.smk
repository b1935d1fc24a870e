rule demo_pool:
    output:
        "resources/demo/demo_pool.jsonl",
    log:
        demo_log("demo_pool"),
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
        demo_log("demo_model"),
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
        directory(PATHS.proxy_model),
    log:
        PATHS.log("proxy_model"),
    benchmark:
        PATHS.benchmark("proxy_model")
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
        directory(PATHS.shard_dir()),
    log:
        PATHS.log("split_dataset/{dataset}"),
    conda:
        "../envs/selectflow.yaml"
    resources:
        attempt=current_attempt,
    params:
        job=CFG.job,
        shard_size=CFG.shard_size,
    script:
        "../scripts/split_dataset.py"
