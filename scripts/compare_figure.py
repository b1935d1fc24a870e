"""Rule compare_figure: downstream loss with error bars and the intrinsic metrics, with its caption."""

from selectflow.report.compare import compare_figure
from selectflow.runtime.jobs import run_job

sm = snakemake  # noqa: F821 - injected by Snakemake
run_job(sm, lambda: compare_figure(sm.input.downstream, sm.input.intrinsic, sm.output.png, sm.output.caption))
