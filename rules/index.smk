checkpoint pool_manifest:
    input:
        shards=pool_shard_files,
        # the split_dataset folders the shards are in: links the two in the rule graph
        folders=[f"{RESULTS}/shards/{ds}" for ds in sorted(CFG.datasets)],
    output:
        f"{RESULTS}/pool_manifest.tsv",
    log:
        f"{LOGS}/pool_manifest.log",
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
        manifest=f"{RESULTS}/pool_manifest.tsv",
        encoder=lambda wc: index_spec(wc.name)["encoder"],
    output:
        f"{RESULTS}/indexes/{{name}}/embeddings/group_{{g}}.h5",
    log:
        f"{LOGS}/indexes/{{name}}/embed_group_{{g}}.log",
    benchmark:
        f"{BENCH}/indexes/{{name}}/embed_group_{{g}}.tsv"
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
        faiss=f"{RESULTS}/indexes/{{name}}/window_{{w}}.faiss",
        ids=f"{RESULTS}/indexes/{{name}}/window_{{w}}.ids.tsv",
        meta=f"{RESULTS}/indexes/{{name}}/window_{{w}}.json",
    log:
        f"{LOGS}/indexes/{{name}}/window_{{w}}.log",
    benchmark:
        f"{BENCH}/indexes/{{name}}/window_{{w}}.tsv"
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
        f"{RESULTS}/indexes/{{name}}/summary.tsv",
    log:
        f"{LOGS}/indexes/{{name}}/summary.log",
    conda:
        "../envs/selectflow.yaml"
    resources:
        attempt=current_attempt,
    params:
        job=CFG.job,
        index_dir=f"{RESULTS}/indexes/{{name}}",
    script:
        "../scripts/index_summary.py"


rule retrieve:
    input:
        windows=lambda wc: window_files(wc, name="pool"),
        queries=CFG.retrieve.queries or f"{RESULTS}/selection/selected_data.jsonl",
        encoder=index_spec("pool")["encoder"],
    output:
        f"{RESULTS}/retrieve/neighbors.tsv",
    log:
        f"{LOGS}/retrieve.log",
    conda:
        "../envs/selectflow.yaml"
    resources:
        gpu=1,
        batch_size=scaled(CFG.index.batch_size),
        attempt=current_attempt,
    params:
        job=CFG.job,
        index_dir=f"{RESULTS}/indexes/pool",
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
        f"{RESULTS}/decontaminate/contaminated.tsv",
    log:
        f"{LOGS}/decontaminate.log",
    conda:
        "../envs/selectflow.yaml"
    resources:
        gpu=1,
        batch_size=scaled(CFG.index.batch_size),
        attempt=current_attempt,
    params:
        job=CFG.job,
        index_dir=f"{RESULTS}/indexes/decontam",
        index=as_param(CFG.index),
        decontaminate=as_param(CFG.decontaminate),
    script:
        "../scripts/decontaminate.py"
