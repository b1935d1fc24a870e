"""Rule report_figures: selection results, router data, job records and benchmarks -> report PNGs."""

from selectflow.runtime.jobs import run_job
from selectflow.stages.report import report_figures

sm = snakemake  # noqa: F821 - injected by Snakemake
run_job(sm, lambda: report_figures(sm.input, sm.output, log_dir=sm.params.log_dir, bench_dir=sm.params.bench_dir))
