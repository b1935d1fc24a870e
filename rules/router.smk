rule router_dump:
    input:
        shard=f"{RESULTS}/shards/{{dataset}}/{{shard}}.jsonl",
        # checks sample ids are unique across datasets before any inference
        manifest=f"{RESULTS}/pool_manifest.tsv",
        model=router_model(),
    output:
        f"{RESULTS}/router_data/{{dataset}}/{{shard}}.h5",
    log:
        f"{LOGS}/router_dump/{{dataset}}/{{shard}}.log",
    benchmark:
        f"{BENCH}/router_dump/{{dataset}}/{{shard}}.tsv"
    conda:
        "../envs/selectflow.yaml"
    resources:
        gpu=1,
        batch_size=scaled(config["router_dump"]["batch_size"]),
        attempt=current_attempt,
    params:
        settings=config["router_dump"],
    script:
        "../scripts/router_dump.py"


rule router_data:
    # Target to stop after inference: snakemake router_data
    input:
        router_shards,
