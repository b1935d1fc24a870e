"""Rule report_figures: selection results, router data, logs and benchmarks -> report PNGs."""
from selectflow.report.figures import FIGURES, make_report_figures
from selectflow.runtime.jobs import run_job

sm = snakemake  # noqa: F821 - injected by Snakemake
run_job(
    sm,
    lambda: make_report_figures(
        {name: sm.output[name] for name in FIGURES},
        quality_tsv=sm.input.quality,
        curve_tsv=sm.input.curve,
        candidates_h5=sm.input.candidates,
        router_paths=list(sm.input.router),
        log_dir=sm.params.log_dir,
        bench_dir=sm.params.bench_dir,
        train_metrics={label: path for label, paths in (("fine-tune", sm.input.train), ("warm-up", sm.input.warmup))
                       for path in paths},
        index_summaries=list(sm.input.indexes),
        examples_png=sm.output.examples,
    ),
)
