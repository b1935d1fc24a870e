checkpoint candidates:
    input:
        router=router_shards,
        router_table=PATHS.router_data_table,
        exclude=excluded_ids_file(),
    output:
        h5=PATHS.candidates_h5,
        quality=PATHS.candidates_quality,
    log:
        PATHS.candidates_log,
    benchmark:
        PATHS.benchmark("selection/candidates")
    conda:
        "../envs/selectflow.yaml"
    resources:
        attempt=current_attempt,
    params:
        job=CFG.job,
        selection=param_before_fps(CFG.selection),
    script:
        "../scripts/candidates.py"


rule distance_block:
    input:
        PATHS.candidates_h5,
    output:
        PATHS.distance_block(),
    log:
        PATHS.log("selection/distances/block_{i}_{j}"),
    benchmark:
        PATHS.benchmark("selection/distances/block_{i}_{j}")
    conda:
        "../envs/selectflow.yaml"
    resources:
        gpu=1,
        sub_chunk=scaled(CFG.selection.distance_batch_size),
        attempt=current_attempt,
    params:
        job=CFG.job,
        selection=param_before_fps(CFG.selection),
    script:
        "../scripts/distance_block.py"


rule fps:
    input:
        candidates=PATHS.candidates_h5,
        blocks=distance_blocks,
        # with selection.target: the picks go toward it instead of FPS
        target=target_router_file(),
    output:
        PATHS.fps_curve,
    log:
        PATHS.log("selection/fps"),
    benchmark:
        PATHS.benchmark("selection/fps")
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
        block_dir=PATHS.distances,
    script:
        "../scripts/fps.py"


rule selected_data:
    input:
        curve=PATHS.fps_curve,
        quality=PATHS.candidates_quality,
        router=router_shards,
        router_table=PATHS.router_data_table,
    output:
        selected=PATHS.selected_data,
        summary=PATHS.selection_summary,
        quality=PATHS.quality,
    log:
        PATHS.log("selection/selected_data"),
    conda:
        "../envs/selectflow.yaml"
    resources:
        attempt=current_attempt,
    params:
        job=CFG.job,
    script:
        "../scripts/selected_data.py"
