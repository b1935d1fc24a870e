checkpoint pool_manifest:
    input:
        shards=pool_shard_files,
        # the split_dataset folders the shards are in: links the two in the rule graph
        folders=[PATHS.shard_dir(ds) for ds in sorted(CFG.datasets)],
    output:
        PATHS.pool_manifest,
    log:
        PATHS.log("pool_manifest"),
    conda:
        "../envs/selectflow.yaml"
    resources:
        attempt=current_attempt,
    params:
        job=CFG.job,
    script:
        "../scripts/pool_manifest.py"


rule index_embed:
    # one job embeds index.windows_per_job item windows (the encoder is loaded once)
    input:
        manifest=PATHS.pool_manifest,
        encoder=lambda wc: index_spec(wc.name)["encoder"],
    output:
        PATHS.index_embeddings(),
    log:
        PATHS.log("indexes/{name}/embed_group_{g}"),
    benchmark:
        PATHS.benchmark("indexes/{name}/embed_group_{g}")
    wildcard_constraints:
        g=r"\d{5}",
    conda:
        "../envs/selectflow.yaml"
    resources:
        gpu=1,
        batch_size=scaled(CFG.index.batch_size),
        attempt=current_attempt,
    params:
        job=CFG.job,
        index=as_param(CFG.index),
    script:
        "../scripts/index_embed.py"


rule index_window:
    input:
        unpack(index_window_inputs),
    output:
        faiss=PATHS.index_window(),
        ids=PATHS.index_window(ext="ids.tsv"),
        meta=PATHS.index_window(ext="json"),
    log:
        PATHS.log("indexes/{name}/window_{w}"),
    benchmark:
        PATHS.benchmark("indexes/{name}/window_{w}")
    conda:
        "../envs/selectflow.yaml"
    resources:
        # FAISS builds on a GPU only for ivfpq; flat windows are CPU jobs
        gpu=lambda wc: int(index_type_of(wc.name) == "ivfpq"),
        attempt=current_attempt,
    params:
        job=CFG.job,
        spec=lambda wc: index_spec(wc.name),
        index=as_param(CFG.index),
    script:
        "../scripts/index_window.py"


rule index_summary:
    input:
        window_files,
    output:
        PATHS.index_summary(),
    log:
        PATHS.log("indexes/{name}/summary"),
    conda:
        "../envs/selectflow.yaml"
    resources:
        attempt=current_attempt,
    params:
        job=CFG.job,
        index_dir=PATHS.index_dir(),
    script:
        "../scripts/index_summary.py"


rule retrieve:
    input:
        windows=lambda wc: window_files(wc, name="pool"),
        queries=CFG.retrieve.queries or PATHS.selected_data,
        encoder=index_spec("pool")["encoder"],
    output:
        PATHS.neighbors,
    log:
        PATHS.log("retrieve"),
    conda:
        "../envs/selectflow.yaml"
    resources:
        gpu=1,
        batch_size=scaled(CFG.index.batch_size),
        attempt=current_attempt,
    params:
        job=CFG.job,
        index_dir=PATHS.index_dir("pool"),
        index=as_param(CFG.index),
        retrieve=as_param(CFG.retrieve),
    script:
        "../scripts/retrieve.py"


rule decontaminate:
    input:
        windows=lambda wc: window_files(wc, name="decontam"),
        queries=CFG.decontaminate.eval_set or [],
        encoder=index_spec("decontam")["encoder"],
    output:
        PATHS.contaminated,
    log:
        PATHS.log("decontaminate"),
    conda:
        "../envs/selectflow.yaml"
    resources:
        gpu=1,
        batch_size=scaled(CFG.index.batch_size),
        attempt=current_attempt,
    params:
        job=CFG.job,
        index_dir=PATHS.index_dir("decontam"),
        index=as_param(CFG.index),
        decontaminate=as_param(CFG.decontaminate),
    script:
        "../scripts/decontaminate.py"
