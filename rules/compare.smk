# Target compare (README, "Does the selection pay off? (compare)"): every method of
# compare.methods (fps always) re-run on the pool less a held-out slice, then scored.
# Not in the default target.

COMPARE = f"{RESULTS}/compare"
COMPARE_BASELINES = "|".join(m for m in CFG.compare.methods if m != "fps") or "none"
# the evaluation set: the user's compare.eval, else the held-out slice
COMPARE_EVAL = CFG.compare.eval or f"{COMPARE}/heldout.jsonl"


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
        compare=as_param(CFG.compare),
    script:
        "../scripts/compare_heldout.py"


rule compare_candidates:
    input:
        router=router_shards,
        heldout=f"{COMPARE}/heldout.jsonl",
        exclude=excluded_ids_file(),
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
        compare=as_param(CFG.compare),
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
        selection=as_param(CFG.selection),
    script:
        "../scripts/compare_fps.py"


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
    conda:
        "../envs/selectflow.yaml"
    resources:
        attempt=current_attempt,
    script:
        "../scripts/compare_selected.py"


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
        methods=CFG.compare.methods,
    script:
        "../scripts/compare_intrinsic.py"


rule compare_finetune:
    input:
        data=f"{COMPARE}/{{method}}/selected_data.jsonl",
        eval=COMPARE_EVAL,
        model=CFG.train.model_path or CFG.model_path,
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
        train=as_param(CFG.compare.train),
        seeds=CFG.compare.seeds,
        out_dir=lambda wc, output: os.path.dirname(output[0]),
    script:
        "../scripts/compare_finetune.py"


rule compare_downstream:
    input:
        expand(f"{COMPARE}/{{method}}/eval.tsv", method=CFG.compare.methods),
    output:
        f"{COMPARE}/downstream.tsv",
    log:
        f"{LOGS}/compare/downstream.log",
    conda:
        "../envs/selectflow.yaml"
    resources:
        attempt=current_attempt,
    params:
        methods=CFG.compare.methods,
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
    script:
        "../scripts/compare_figure.py"


rule compare:
    input:
        rules.compare_downstream.output,
        rules.compare_intrinsic.output,
        rules.compare_figure.output,
