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
        n_records=config["demo"]["n_records"],
        seed=config["demo"]["seed"],
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
        demo=config["demo"],
    script:
        "../scripts/demo_model.py"


checkpoint split_dataset:
    input:
        lambda wc: config["datasets"][wc.dataset],
    output:
        directory(f"{RESULTS}/shards/{{dataset}}"),
    log:
        f"{LOGS}/split_dataset/{{dataset}}.log",
    conda:
        "../envs/selectflow.yaml"
    resources:
        attempt=current_attempt,
    params:
        shard_size=config["shard_size"],
    script:
        "../scripts/split_dataset.py"
