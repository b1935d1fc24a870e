rule router_dump:
    # one job dumps router_dump.shards_per_job shards (one model load), named by its first;
    # each finished shard goes to router_store at once, so a rerun keeps it
    input:
        shards=group_shard_files,
        # checks sample ids are unique across datasets before any inference
        manifest=f"{RESULTS}/pool_manifest.tsv",
        model=router_model(),
    output:
        temp(f"{RESULTS}/router_store/{{dataset}}/{{shard}}.group.tsv"),
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
        router_dump=config["router_dump"],
        store=group_store_files,
    script:
        "../scripts/router_dump.py"


rule router_shard:
    # the shard's file from its group's store: a hard link, no copy (a shell job: no Python start)
    input:
        ancient(shard_group_manifest),
    output:
        f"{RESULTS}/router_data/{{dataset}}/{{shard}}.h5",
    log:
        f"{LOGS}/router_shard/{{dataset}}/{{shard}}.log",
    localrule: True
    conda:
        "../envs/selectflow.yaml"
    params:
        store=f"{RESULTS}/router_store/{{dataset}}/{{shard}}.h5",
    shell:
        # a hard link; a copy (temp + rename) where the file system has none
        "(ln -f {params.store} {output} || (cp {params.store} {output}.tmp"
        " && mv {output}.tmp {output})) 2> {log}"


rule router_data:
    # Target to stop after inference: snakemake router_data
    input:
        router_shards,
