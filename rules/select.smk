checkpoint candidates:
    input:
        router=router_shards,
        exclude=excluded_ids_file(),
    output:
        h5=f"{RESULTS}/selection/candidates.h5",
        quality=f"{RESULTS}/selection/candidates_quality.tsv",
    log:
        f"{LOGS}/selection/candidates.log",
    benchmark:
        f"{BENCH}/selection/candidates.tsv"
    conda:
        "../envs/selectflow.yaml"
    resources:
        attempt=current_attempt,
    params:
        job=CFG.job,
        selection=as_param(CFG.selection),
    script:
        "../scripts/candidates.py"


rule distance_block:
    input:
        f"{RESULTS}/selection/candidates.h5",
    output:
        f"{RESULTS}/selection/distances/block_{{i}}_{{j}}.h5",
    log:
        f"{LOGS}/selection/distances/block_{{i}}_{{j}}.log",
    benchmark:
        f"{BENCH}/selection/distances/block_{{i}}_{{j}}.tsv"
    conda:
        "../envs/selectflow.yaml"
    resources:
        gpu=1,
        sub_chunk=scaled(CFG.selection.distance_batch_size),
        attempt=current_attempt,
    params:
        job=CFG.job,
        selection=as_param(CFG.selection),
    script:
        "../scripts/distance_block.py"


rule fps:
    input:
        candidates=f"{RESULTS}/selection/candidates.h5",
        blocks=distance_blocks,
        # with selection.target: the picks go toward it instead of FPS
        target=target_router_file(),
    output:
        f"{RESULTS}/selection/fps_curve.tsv",
    log:
        f"{LOGS}/selection/fps.log",
    benchmark:
        f"{BENCH}/selection/fps.tsv"
    conda:
        "../envs/selectflow.yaml"
    # one CPU per rank to drive its GPU (under SLURM: --cpus-per-task)
    threads: CFG.selection.fps_gpus
    resources:
        gpu=CFG.selection.fps_gpus,
        chunk=scaled(CFG.selection.distance_batch_size),
        attempt=current_attempt,
    params:
        job=CFG.job,
        selection=as_param(CFG.selection),
        block_dir=f"{RESULTS}/selection/distances",
    script:
        "../scripts/fps.py"


rule selected_data:
    input:
        curve=f"{RESULTS}/selection/fps_curve.tsv",
        quality=f"{RESULTS}/selection/candidates_quality.tsv",
        router=router_shards,
    output:
        selected=f"{RESULTS}/selection/selected_data.jsonl",
        summary=f"{RESULTS}/selection/selection_summary.tsv",
        quality=f"{RESULTS}/selection/quality.tsv",
    log:
        f"{LOGS}/selection/selected_data.log",
    conda:
        "../envs/selectflow.yaml"
    resources:
        attempt=current_attempt,
    params:
        job=CFG.job,
    script:
        "../scripts/selected_data.py"
