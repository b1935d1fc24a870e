# Target compare (README, "Does the selection pay off? (compare)"): every method of
# compare.methods (fps always) and the full pools, each fine-tuned into the same student
# (one that has seen no text) and scored on a test set no method can select from.
# Not in the default target.

COMPARE = f"{RESULTS}/compare"
COMPARE_BASELINES = (
    "|".join(m for m in CFG.compare.methods if m not in ("fps", "target")) or "none"
)
# the test set: generated (demo), held out of the pool (heldout), or the user's file
COMPARE_TEST = {
    "demo": f"{COMPARE}/test.jsonl",
    "heldout": f"{COMPARE}/heldout.jsonl",
}.get(CFG.compare.eval, CFG.compare.eval)
COMPARE_STUDENT = (
    f"{COMPARE}/student" if CFG.compare.student == "scratch" else CFG.compare.student
)
# what is fine-tuned: the k-sized selections, then the full pools
COMPARE_FINETUNED = [*CFG.compare.methods, *CFG.compare.full_pools]
COMPARE_RANDOM_DRAWS = [
    f"{COMPARE}/random/draw_{i}.jsonl" for i in range(1, CFG.compare.seeds)
]


rule compare_testset:
    input:
        list(CFG.datasets.values()),
    output:
        f"{COMPARE}/test.jsonl",
    log:
        f"{LOGS}/compare/testset.log",
    conda:
        "../envs/selectflow.yaml"
    resources:
        attempt=current_attempt,
    params:
        job=CFG.job,
        datasets=CFG.datasets,
        compare=as_param(CFG.compare),
    script:
        "../scripts/compare_testset.py"


rule compare_student:
    output:
        directory(f"{COMPARE}/student"),
    log:
        f"{LOGS}/compare/student.log",
    conda:
        "../envs/selectflow.yaml"
    resources:
        attempt=current_attempt,
    params:
        job=CFG.job,
        compare=as_param(CFG.compare),
    script:
        "../scripts/compare_student.py"


rule compare_heldout:
    input:
        quality=f"{RESULTS}/selection/candidates_quality.tsv",
        router=router_shards,
    output:
        f"{COMPARE}/heldout.jsonl",
    log:
        f"{LOGS}/compare/heldout.log",
    conda:
        "../envs/selectflow.yaml"
    resources:
        attempt=current_attempt,
    params:
        job=CFG.job,
        compare=as_param(CFG.compare),
    script:
        "../scripts/compare_heldout.py"


rule compare_candidates:
    input:
        router=router_shards,
        heldout=f"{COMPARE}/heldout.jsonl",
        exclude=excluded_ids_file(),
        # method target with eval heldout: its target slice, kept from every method too
        target=compare_target_slice(),
    output:
        h5=f"{COMPARE}/candidates.h5",
        quality=f"{COMPARE}/candidates_quality.tsv",
    log:
        f"{LOGS}/compare/candidates.log",
    conda:
        "../envs/selectflow.yaml"
    resources:
        attempt=current_attempt,
    params:
        job=CFG.job,
        selection=as_param(CFG.selection),
    script:
        "../scripts/compare_candidates.py"


rule compare_pool:
    input:
        router=router_shards,
        candidates=f"{COMPARE}/candidates.h5",
        quality=f"{COMPARE}/candidates_quality.tsv",
    output:
        f"{COMPARE}/pool.h5",
    log:
        f"{LOGS}/compare/pool.log",
    conda:
        "../envs/selectflow.yaml"
    resources:
        attempt=current_attempt,
    params:
        job=CFG.job,
        compare=as_param(CFG.compare),
        selection=as_param(CFG.selection),
    script:
        "../scripts/compare_pool.py"


rule compare_fps:
    input:
        f"{COMPARE}/candidates.h5",
    output:
        f"{COMPARE}/fps/picks.tsv",
    log:
        f"{LOGS}/compare/fps.log",
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


rule compare_target_set:
    # method target: a target set that shares no record with the test set
    input:
        unpack(compare_target_set_inputs),
    output:
        f"{COMPARE}/target_set/dev.jsonl",
    log:
        f"{LOGS}/compare/target_set.log",
    conda:
        "../envs/selectflow.yaml"
    resources:
        attempt=current_attempt,
    params:
        job=CFG.job,
        datasets=CFG.datasets,
        compare=as_param(CFG.compare),
    script:
        "../scripts/compare_target_set.py"


rule compare_target_router:
    # the target set routed by the model that routed the pool (rule target_router's function)
    input:
        target=f"{COMPARE}/target_set/dev.jsonl",
        model=router_model(),
    output:
        f"{COMPARE}/target_set/router.h5",
    log:
        f"{LOGS}/compare/target_router.log",
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
        candidates=f"{COMPARE}/candidates.h5",
        target=f"{COMPARE}/target_set/router.h5",
    output:
        f"{COMPARE}/target/picks.tsv",
    log:
        f"{LOGS}/compare/target.log",
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
        "../scripts/compare_target.py"


rule compare_baseline:
    input:
        f"{COMPARE}/pool.h5",
    output:
        f"{COMPARE}/{{method}}/picks.tsv",
    log:
        f"{LOGS}/compare/{{method}}.log",
    wildcard_constraints:
        method=COMPARE_BASELINES,
    conda:
        "../envs/selectflow.yaml"
    resources:
        gpu=1,
        attempt=current_attempt,
    params:
        job=CFG.job,
        compare=as_param(CFG.compare),
        device=CFG.selection.device,
    script:
        "../scripts/compare_baseline.py"


rule compare_selected:
    input:
        picks=f"{COMPARE}/{{method}}/picks.tsv",
        quality=f"{COMPARE}/candidates_quality.tsv",
        router=router_shards,
    output:
        selected=f"{COMPARE}/{{method}}/selected_data.jsonl",
        summary=f"{COMPARE}/{{method}}/selection_summary.tsv",
    log:
        f"{LOGS}/compare/{{method}}_selected.log",
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
        quality=f"{COMPARE}/candidates_quality.tsv",
        router=router_shards,
    output:
        full_kept=f"{COMPARE}/full_kept/selected_data.jsonl",
        full_raw=f"{COMPARE}/full_raw/selected_data.jsonl",
    log:
        f"{LOGS}/compare/full_pools.log",
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
        pool=f"{COMPARE}/pool.h5",
        quality=f"{COMPARE}/candidates_quality.tsv",
        router=router_shards,
    output:
        COMPARE_RANDOM_DRAWS,
    log:
        f"{LOGS}/compare/random_draws.log",
    conda:
        "../envs/selectflow.yaml"
    resources:
        attempt=current_attempt,
    params:
        job=CFG.job,
        compare=as_param(CFG.compare),
    script:
        "../scripts/compare_random_draws.py"


rule compare_intrinsic:
    input:
        selected=expand(
            f"{COMPARE}/{{method}}/selected_data.jsonl", method=CFG.compare.methods
        ),
        pool=f"{COMPARE}/pool.h5",
    output:
        f"{COMPARE}/intrinsic.tsv",
    log:
        f"{LOGS}/compare/intrinsic.log",
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
        f"{COMPARE}/{{method}}/eval.tsv",
    log:
        f"{LOGS}/compare/{{method}}_finetune.log",
    benchmark:
        f"{BENCH}/compare/{{method}}_finetune.tsv"
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
        expand(f"{COMPARE}/{{method}}/eval.tsv", method=COMPARE_FINETUNED),
    output:
        f"{COMPARE}/downstream.tsv",
    log:
        f"{LOGS}/compare/downstream.log",
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
        downstream=f"{COMPARE}/downstream.tsv",
        intrinsic=f"{COMPARE}/intrinsic.tsv",
    output:
        png=report(f"{COMPARE}/compare.png", category="Compare"),
        caption=f"{COMPARE}/caption.txt",
    log:
        f"{LOGS}/compare/figure.log",
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
