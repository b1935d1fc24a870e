rule report_figures:
    # Figures for `snakemake --report report.html`; resources come from the records and
    # benchmarks of the jobs that finished before this one.
    input:
        # training metrics and index summaries: only of the stages this run's config turns on
        **STAGE_OUTPUTS,
        quality=PATHS.quality,
        curve=PATHS.fps_curve,
        candidates=PATHS.candidates_h5,
        # not read: the figures wait for the whole selection, whose jobs they report on
        selected=PATHS.selected_data,
        router=router_shards,
        router_table=PATHS.router_data_table,
    output:
        quality=report(
            PATHS.report_figure("quality_histogram"),
            caption="../report/quality_histogram.rst",
            category="1. Selection",
            labels={"figure": "quality scores"},
        ),
        fps=report(
            PATHS.report_figure("fps_curve"),
            caption="../report/fps_curve.rst",
            category="1. Selection",
            labels={"figure": "FPS curve"},
        ),
        examples=report(
            PATHS.report_figure("examples"),
            caption="../report/examples.rst",
            category="1. Selection",
            labels={"figure": "example records"},
        ),
        pca=report(
            PATHS.report_figure("routing_pca"),
            caption="../report/routing_pca.rst",
            category="2. Routing",
            labels={"figure": "routing PCA"},
        ),
        heatmap=report(
            PATHS.report_figure("routing_heatmap"),
            caption="../report/routing_heatmap.rst",
            category="2. Routing",
            labels={"figure": "routing heat-map"},
        ),
        training=report(
            PATHS.report_figure("training_loss"),
            caption="../report/training_loss.rst",
            category="3. Training",
            labels={"figure": "training loss"},
        ),
        indexes=report(
            PATHS.report_figure("index_build"),
            caption="../report/index_build.rst",
            category="4. Index",
            labels={"figure": "index build"},
        ),
        resources=report(
            PATHS.report_figure("resources"),
            caption="../report/resources.rst",
            category="5. Resources",
            labels={"figure": "runtime and memory"},
        ),
    log:
        PATHS.log("report/report_figures"),
    conda:
        "../envs/selectflow.yaml"
    resources:
        attempt=current_attempt,
    params:
        job=CFG.job,
        log_dir=PATHS.logs,
        bench_dir=PATHS.benchmarks,
    script:
        "../scripts/report_figures.py"
