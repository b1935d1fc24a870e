from selectflow.stages.report import stage_inputs


rule report_figures:
    # Figures for `snakemake --report report.html`; resources come from the records and
    # benchmarks of the jobs that finished before this one.
    input:
        # training metrics and index summaries only when this run's `rule all` asks for them
        unpack(lambda wc: stage_inputs(final_targets(wc), RESULTS, CFG.warmup.enabled)),
        quality=f"{RESULTS}/selection/quality.tsv",
        curve=f"{RESULTS}/selection/fps_curve.tsv",
        candidates=f"{RESULTS}/selection/candidates.h5",
        # not read: the figures wait for the whole selection, whose jobs they report on
        selected=f"{RESULTS}/selection/selected_data.jsonl",
        router=router_shards,
    output:
        quality=report(
            f"{RESULTS}/report/quality_histogram.png",
            caption="../report/quality_histogram.rst",
            category="1. Selection",
            labels={"figure": "quality scores"},
        ),
        fps=report(
            f"{RESULTS}/report/fps_curve.png",
            caption="../report/fps_curve.rst",
            category="1. Selection",
            labels={"figure": "FPS curve"},
        ),
        examples=report(
            f"{RESULTS}/report/examples.png",
            caption="../report/examples.rst",
            category="1. Selection",
            labels={"figure": "example records"},
        ),
        pca=report(
            f"{RESULTS}/report/routing_pca.png",
            caption="../report/routing_pca.rst",
            category="2. Routing",
            labels={"figure": "routing PCA"},
        ),
        heatmap=report(
            f"{RESULTS}/report/routing_heatmap.png",
            caption="../report/routing_heatmap.rst",
            category="2. Routing",
            labels={"figure": "routing heat-map"},
        ),
        training=report(
            f"{RESULTS}/report/training_loss.png",
            caption="../report/training_loss.rst",
            category="3. Training",
            labels={"figure": "training loss"},
        ),
        indexes=report(
            f"{RESULTS}/report/index_build.png",
            caption="../report/index_build.rst",
            category="4. Index",
            labels={"figure": "index build"},
        ),
        resources=report(
            f"{RESULTS}/report/resources.png",
            caption="../report/resources.rst",
            category="5. Resources",
            labels={"figure": "runtime and memory"},
        ),
    log:
        f"{LOGS}/report/report_figures.log",
    conda:
        "../envs/selectflow.yaml"
    resources:
        attempt=current_attempt,
    params:
        job=CFG.job,
        log_dir=LOGS,
        bench_dir=BENCH,
    script:
        "../scripts/report_figures.py"
