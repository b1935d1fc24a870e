# Target compare (README, "Does the selection pay off? (compare)"): every method of
# compare.methods (fps always) and the full pools, each fine-tuned into the same student
# (one that has seen no text) and scored on a test set no method can select from.
# Not in the default target.

COMPARE_BASELINES = (
    "|".join(m for m in CFG.compare.methods if m not in ("fps", "target")) or "none"
)
# the test set: generated (demo), held out of the pool (heldout), or the user's file
COMPARE_TEST = {
    "demo": PATHS.compare_test,
    "heldout": PATHS.compare_heldout,
}.get(CFG.compare.eval, CFG.compare.eval)
COMPARE_STUDENT = (
    PATHS.compare_student if CFG.compare.student == "scratch" else CFG.compare.student
)
# what is fine-tuned: the k-sized selections, then the full pools
COMPARE_FINETUNED = [*CFG.compare.methods, *CFG.compare.full_pools]
# methods that draw anew for every seed: random, and those matched to the lengths of fps's picks
COMPARE_DRAWN = ("random", *LENGTH_MATCHED)
# the compare section as its rules' param (fps_draws, an input of fps's fine-tunes, left out)
COMPARE_PARAM = param_of_compare(CFG.compare)


rule compare_testset:
    input:
        list(CFG.datasets.values()),
    output:
        PATHS.compare_test,
    log:
        PATHS.log("compare/testset"),
    conda:
        "../envs/selectflow.yaml"
    resources:
        attempt=current_attempt,
    params:
        job=CFG.job,
        datasets=CFG.datasets,
        compare=COMPARE_PARAM,
    script:
        "../scripts/compare_testset.py"


rule compare_student:
    output:
        directory(PATHS.compare_student),
    log:
        PATHS.log("compare/student"),
    conda:
        "../envs/selectflow.yaml"
    resources:
        attempt=current_attempt,
    params:
        job=CFG.job,
        compare=COMPARE_PARAM,
    script:
        "../scripts/compare_student.py"


rule compare_heldout:
    input:
        quality=PATHS.candidates_quality,
        router=router_shards,
        router_table=PATHS.router_data_table,
    output:
        PATHS.compare_heldout,
    log:
        PATHS.log("compare/heldout"),
    conda:
        "../envs/selectflow.yaml"
    resources:
        attempt=current_attempt,
    params:
        job=CFG.job,
        compare=COMPARE_PARAM,
    script:
        "../scripts/compare_heldout.py"


rule compare_candidates:
    input:
        unpack(compare_candidates_inputs),
    output:
        h5=PATHS.compare_candidates_h5,
        quality=PATHS.compare_candidates_quality,
    log:
        PATHS.log("compare/candidates"),
    conda:
        "../envs/selectflow.yaml"
    resources:
        attempt=current_attempt,
    params:
        job=CFG.job,
        selection=param_before_fps(CFG.selection),
    script:
        "../scripts/compare_candidates.py"


rule compare_pool:
    input:
        router=router_shards,
        router_table=PATHS.router_data_table,
        candidates=PATHS.compare_candidates_h5,
        quality=PATHS.compare_candidates_quality,
    output:
        PATHS.compare_pool,
    log:
        PATHS.log("compare/pool"),
    conda:
        "../envs/selectflow.yaml"
    resources:
        attempt=current_attempt,
    params:
        job=CFG.job,
        compare=COMPARE_PARAM,
        selection=param_before_fps(CFG.selection),
    script:
        "../scripts/compare_pool.py"


rule compare_fps:
    input:
        PATHS.compare_candidates_h5,
    output:
        PATHS.compare_picks("fps"),
    log:
        PATHS.log("compare/fps"),
    conda:
        "../envs/selectflow.yaml"
    resources:
        gpu=1,
        chunk=scaled(CFG.selection.distance_batch_size),
        attempt=current_attempt,
    params:
        job=CFG.job,
        selection=as_param(CFG.selection),
    script:
        "../scripts/compare_fps.py"


rule compare_fps_draw:
    # compare.fps_draws: fps's selection for fine-tuning seed {draw} > 0, strata (or, where they need the pool,
    # candidates) and picks re-built with selection.strata_seed + {draw} (draw 0 is compare_fps's)
    input:
        unpack(compare_candidates_inputs),
        candidates=PATHS.compare_candidates_h5,
        quality=PATHS.compare_candidates_quality,
    output:
        PATHS.compare_random_draw("{draw}", "fps"),
    log:
        PATHS.log("compare/fps_draw_{draw}"),
    wildcard_constraints:
        draw=r"[1-9]\d*",
    conda:
        "../envs/selectflow.yaml"
    resources:
        gpu=1,
        chunk=scaled(CFG.selection.distance_batch_size),
        attempt=current_attempt,
    params:
        job=CFG.job,
        selection=as_param(CFG.selection),
    script:
        "../scripts/compare_fps_draw.py"


rule compare_target_set:
    # method target: a target set that shares no record with the test set
    input:
        unpack(compare_target_set_inputs),
    output:
        PATHS.compare_target_set,
    log:
        PATHS.log("compare/target_set"),
    conda:
        "../envs/selectflow.yaml"
    resources:
        attempt=current_attempt,
    params:
        job=CFG.job,
        datasets=CFG.datasets,
        compare=COMPARE_PARAM,
    script:
        "../scripts/compare_target_set.py"


rule compare_target_router:
    # the target set routed by the model that routed the pool (rule target_router's function)
    input:
        target=PATHS.compare_target_set,
        model=router_model(),
    output:
        PATHS.compare_target_router,
    log:
        PATHS.log("compare/target_router"),
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


rule compare_target:
    input:
        candidates=PATHS.compare_candidates_h5,
        target=PATHS.compare_target_router,
    output:
        PATHS.compare_picks("target"),
    log:
        PATHS.log("compare/target"),
    conda:
        "../envs/selectflow.yaml"
    resources:
        gpu=1,
        chunk=scaled(CFG.selection.distance_batch_size),
        attempt=current_attempt,
    params:
        job=CFG.job,
        selection=param_before_fps(CFG.selection),
    script:
        "../scripts/compare_target.py"


rule compare_baseline:
    input:
        unpack(compare_length_reference),
        pool=PATHS.compare_pool,
    output:
        PATHS.compare_picks(),
    log:
        PATHS.log("compare/{method}"),
    wildcard_constraints:
        method=COMPARE_BASELINES,
    conda:
        "../envs/selectflow.yaml"
    resources:
        gpu=1,
        attempt=current_attempt,
    params:
        job=CFG.job,
        compare=COMPARE_PARAM,
        device=CFG.selection.device,
    script:
        "../scripts/compare_baseline.py"


rule compare_selected:
    input:
        picks=PATHS.compare_picks(),
        quality=PATHS.compare_candidates_quality,
        router=router_shards,
        router_table=PATHS.router_data_table,
    output:
        selected=PATHS.compare_selected(),
        summary=PATHS.compare_selection_summary(),
    log:
        PATHS.log("compare/{method}_selected"),
    wildcard_constraints:
        method="|".join(CFG.compare.methods),
    conda:
        "../envs/selectflow.yaml"
    resources:
        attempt=current_attempt,
    params:
        job=CFG.job,
    script:
        "../scripts/compare_selected.py"


rule compare_full_pools:
    input:
        quality=PATHS.compare_candidates_quality,
        router=router_shards,
        router_table=PATHS.router_data_table,
    output:
        full_kept=PATHS.compare_selected("full_kept"),
        full_raw=PATHS.compare_selected("full_raw"),
    log:
        PATHS.log("compare/full_pools"),
    conda:
        "../envs/selectflow.yaml"
    resources:
        attempt=current_attempt,
    params:
        job=CFG.job,
    script:
        "../scripts/compare_full_pools.py"


rule compare_random_draws:
    input:
        unpack(compare_draw_references),
        pool=PATHS.compare_pool,
        quality=PATHS.compare_candidates_quality,
        router=router_shards,
        router_table=PATHS.router_data_table,
    output:
        compare_draws("{method}"),
    log:
        PATHS.log("compare/{method}_draws"),
    wildcard_constraints:
        method="|".join(COMPARE_DRAWN),
    conda:
        "../envs/selectflow.yaml"
    resources:
        attempt=current_attempt,
    params:
        job=CFG.job,
        compare=COMPARE_PARAM,
    script:
        "../scripts/compare_random_draws.py"


rule compare_intrinsic:
    input:
        selected=expand(PATHS.compare_selected(), method=CFG.compare.methods),
        pool=PATHS.compare_pool,
    output:
        PATHS.compare_intrinsic,
    log:
        PATHS.log("compare/intrinsic"),
    conda:
        "../envs/selectflow.yaml"
    resources:
        attempt=current_attempt,
    params:
        job=CFG.job,
        methods=CFG.compare.methods,
    script:
        "../scripts/compare_intrinsic.py"


rule compare_finetune:
    input:
        data=compare_training_data,
        test=COMPARE_TEST,
        model=COMPARE_STUDENT,
    output:
        PATHS.compare_eval(),
    log:
        PATHS.log("compare/{method}_finetune"),
    benchmark:
        PATHS.benchmark("compare/{method}_finetune")
    conda:
        "../envs/selectflow.yaml"
    resources:
        gpu=1,
        micro_batch_size=scaled(CFG.compare.train.micro_batch_size),
        attempt=current_attempt,
    params:
        job=CFG.job,
        train=as_param(CFG.compare.train),
        seeds=compare_seeds,
        out_dir=lambda wc, output: os.path.dirname(output[0]),
    script:
        "../scripts/compare_finetune.py"


rule compare_downstream:
    input:
        expand(PATHS.compare_eval(), method=COMPARE_FINETUNED),
    output:
        PATHS.compare_downstream,
    log:
        PATHS.log("compare/downstream"),
    conda:
        "../envs/selectflow.yaml"
    resources:
        attempt=current_attempt,
    params:
        job=CFG.job,
        methods=COMPARE_FINETUNED,
    script:
        "../scripts/compare_downstream.py"


rule compare_figure:
    input:
        downstream=PATHS.compare_downstream,
        intrinsic=PATHS.compare_intrinsic,
    output:
        png=report(PATHS.compare_figure, category="Compare"),
        caption=PATHS.compare_caption,
    log:
        PATHS.log("compare/figure"),
    conda:
        "../envs/selectflow.yaml"
    resources:
        attempt=current_attempt,
    params:
        job=CFG.job,
    script:
        "../scripts/compare_figure.py"


rule compare:
    input:
        rules.compare_downstream.output,
        rules.compare_intrinsic.output,
        rules.compare_figure.output,
