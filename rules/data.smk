rule demo_pool:
    output:
        "resources/demo/demo_pool.jsonl",
    params:
        n_records=config["demo"]["n_records"],
        seed=config["demo"]["seed"],
    log:
        "logs/demo/demo_pool.log",
    conda:
        "../envs/selectflow.yaml"
    script:
        "../scripts/demo_pool.py"


rule demo_model:
    input:
        pool="resources/demo/demo_pool.jsonl",
    output:
        directory("resources/demo/model"),
    params:
        seed=config["demo"]["seed"],
    log:
        "logs/demo/demo_model.log",
    conda:
        "../envs/selectflow.yaml"
    script:
        "../scripts/demo_model.py"


checkpoint split_dataset:
    input:
        lambda wc: config["datasets"][wc.dataset],
    output:
        directory(f"{RESULTS}/shards/{{dataset}}"),
    params:
        shard_size=config["shard_size"],
    log:
        f"{LOGS}/split_dataset/{{dataset}}.log",
    conda:
        "../envs/selectflow.yaml"
    script:
        "../scripts/split_dataset.py"
