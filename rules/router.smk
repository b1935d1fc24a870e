rule router_dump:
    # one job dumps router_dump.shards_per_job shards (one model load), named by its first;
    # each finished shard goes to router_store at once, so a rerun keeps it
    input:
        shards=group_shard_files,
        # checks sample ids are unique across datasets before any inference
        manifest=PATHS.pool_manifest,
        model=router_model(),
    output:
        # kept (not temp): snakemake -R router_data links the shards again without a dump
        PATHS.store_group(),
    log:
        PATHS.log("router_dump/{dataset}/{shard}"),
    benchmark:
        PATHS.benchmark("router_dump/{dataset}/{shard}")
    conda:
        "../envs/selectflow.yaml"
    resources:
        gpu=1,
        batch_size=scaled(CFG.router_dump.batch_size),
        attempt=current_attempt,
    params:
        job=CFG.job,
        router_dump=as_param(CFG.router_dump),
        store=group_store_files,
    script:
        "../scripts/router_dump.py"


checkpoint router_data:
    # every stored shard hard-linked into router_data/ by one job (not a job a shard: a dry run
    # over 20,000 shards took 96 s with one); also the target to stop after inference
    input:
        group_manifests,
    output:
        PATHS.router_data_table,
    log:
        PATHS.log("router_data"),
    localrule: True
    conda:
        "../envs/selectflow.yaml"
    params:
        job=CFG.job,
    script:
        "../scripts/router_data.py"


rule target_router:
    # selection.target's records, routed by the pool's model with the pool's settings; never
    # part of the pool
    input:
        target=lambda wc: CFG.selection.target,
        model=router_model(),
    output:
        PATHS.target_router,
    log:
        PATHS.log("target_router"),
    benchmark:
        PATHS.benchmark("target_router")
    conda:
        "../envs/selectflow.yaml"
    resources:
        gpu=1,
        batch_size=scaled(CFG.router_dump.batch_size),
        attempt=current_attempt,
    params:
        job=CFG.job,
        router_dump=as_param(CFG.router_dump),
    script:
        "../scripts/target_router.py"
