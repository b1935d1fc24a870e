"""Stage report: the rule ``report_figures`` (``rules/report.smk``) as one call.

:func:`report_figures` maps the rule's named inputs and outputs onto
:func:`make_report_figures`, which writes every figure of :data:`FIGURES` (and the table of
example records) for ``snakemake --report``. Which later-stage files (training metrics,
index summaries) the rule gets is :meth:`selectflow.layout.Layout.stage_outputs`.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping

from selectflow.report.examples import examples_figure
from selectflow.report.figures import fps_figure, index_figure, quality_figure, selected_ids, training_figure
from selectflow.report.resources import job_resources, resources_figure
from selectflow.report.routing import heatmap_figure, pca_figure, routing_sample
from selectflow.runtime.errors import SelectFlowError

FIGURES = ("quality", "fps", "pca", "heatmap", "resources", "training", "indexes")
TRAIN_RUNS = (("fine-tune", "train"), ("warm-up", "warmup"))  # figure label, rule input name


def make_report_figures(
    out: Mapping[str, str | os.PathLike],
    *,
    quality_tsv: str | os.PathLike,
    curve_tsv: str | os.PathLike,
    candidates_h5: str | os.PathLike,
    router_paths: list[str | os.PathLike],
    log_dir: str | os.PathLike,
    bench_dir: str | os.PathLike,
    train_metrics: Mapping[str, str | os.PathLike] | None = None,
    index_summaries: Iterable[str | os.PathLike] = (),
    max_points: int = 3000,
    examples_png: str | os.PathLike | None = None,
) -> None:
    """Write every figure of :data:`FIGURES`; ``out`` maps each name to its PNG path.

    ``examples_png``: also draw the table of example selected and dropped records there
    (:mod:`selectflow.report.examples`).
    """
    missing = [name for name in FIGURES if name not in out]
    if missing:
        raise SelectFlowError(f"no output path for figures {missing}")
    quality_figure(quality_tsv, curve_tsv, candidates_h5, out["quality"])
    fps_figure(curve_tsv, candidates_h5, out["fps"])
    sample = routing_sample(list(router_paths), selected_ids(curve_tsv), max_points=max_points)
    pca_figure(sample, out["pca"])
    heatmap_figure(sample, out["heatmap"])
    resources_figure(job_resources(log_dir, bench_dir), out["resources"])
    training_figure(train_metrics or {}, out["training"])
    index_figure(index_summaries, out["indexes"], bench_dir)
    if examples_png is not None:
        examples_figure(quality_tsv, curve_tsv, list(router_paths), examples_png)


def report_figures(inputs, outputs, *, log_dir: str | os.PathLike, bench_dir: str | os.PathLike) -> None:
    """The rule's call: ``inputs`` / ``outputs`` are its named files (``snakemake.input`` / ``output``)."""
    make_report_figures(
        {name: outputs[name] for name in FIGURES},
        quality_tsv=inputs["quality"],
        curve_tsv=inputs["curve"],
        candidates_h5=inputs["candidates"],
        router_paths=list(inputs["router"]),
        log_dir=log_dir,
        bench_dir=bench_dir,
        train_metrics={label: path for label, name in TRAIN_RUNS for path in inputs[name]},
        index_summaries=list(inputs["indexes"]),
        examples_png=outputs["examples"],
    )
