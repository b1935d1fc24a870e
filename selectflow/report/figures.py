"""Figures of a run's selection, training and index stages: result files in, one PNG per figure out.

Inputs are files the workflow wrote: ``quality.tsv``, ``fps_curve.tsv`` and
``candidates.h5`` (:mod:`selectflow.stages.select`; read with :mod:`selectflow.select.candidates`), the
training ``metrics.tsv``, the index ``summary.tsv`` files and the index jobs' ``benchmark:`` TSVs. The routing
figures are in :mod:`selectflow.report.routing`, the resources figure in :mod:`selectflow.report.resources`,
the rule-level call in :mod:`selectflow.stages.report`.

=========================  ==============================================================
figure                     what it shows
=========================  ==============================================================
:func:`quality_figure`     histogram of quality scores, selected samples highlighted
:func:`fps_figure`         FPS max-min distance of each pick vs step
:func:`training_figure`    loss (and learning rate) vs step, fine-tune and warm-up
:func:`index_figure`       per index window: build time and size on disk
=========================  ==============================================================

A stage that did not run (no training metrics, no index) still gets its figure, one that
says so, so the report always has the same entries.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from selectflow.report.canvas import POOL, SELECTED, message, placeholder_figure, save_png
from selectflow.report.resources import bench_seconds
from selectflow.runtime.tables import read_tsv
from selectflow.select.candidates import open_candidates, read_candidates


def _read_tsv(path: str | os.PathLike, what: str) -> pd.DataFrame:
    return read_tsv(path, what, nan_columns=("quality", "min_distance"))


def _flag(column: pd.Series) -> np.ndarray:
    return column.astype(str).str.lower().eq("true").to_numpy()


def candidate_attrs(candidates_h5: str | os.PathLike) -> dict:
    """Attributes of ``candidates.h5`` (stage, metric, k, n_pool, n_kept, quality_method), and ``strata``: the
    routing strata the candidates were chosen in (0: none)."""
    attrs = dict(read_candidates(candidates_h5).attrs)
    with open_candidates(candidates_h5) as f:
        attrs["strata"] = len(f["quota"]) if "quota" in f else 0
    return attrs


def selected_ids(curve_tsv: str | os.PathLike) -> set[str]:
    """Sample ids picked by the selection (every row of ``fps_curve.tsv``)."""
    return set(_read_tsv(curve_tsv, "FPS curve")["sample_id"])


# ----------------------------------------------------------------------------- selection


def quality_groups(table: pd.DataFrame, picked: np.ndarray) -> list[tuple[np.ndarray, str, str]]:
    """(mask, colour, label) of each stacked group of the quality histogram, from ``quality.tsv``'s rows:
    dropped by the quality method, duplicates, excluded, kept but not selected, selected (disjoint)."""
    kept = _flag(table["kept"])
    reason = table["reason"].astype(str) if "reason" in table else pd.Series("", index=table.index)
    duplicate = reason.str.startswith("duplicate_of:").to_numpy()
    excluded = (reason == "excluded").to_numpy()
    return [
        (~kept & ~duplicate & ~excluded, "#f4a582", "filtered out by the quality method"),
        (~kept & duplicate, "#92c5de", "duplicates (the better copy stays)"),
        (~kept & excluded, "#bababa", "excluded (decontamination)"),
        (kept & ~picked, POOL, "kept, not selected"),
        (kept & picked, SELECTED, "selected"),
    ]


def quality_figure(
    quality_tsv: str | os.PathLike, curve_tsv: str | os.PathLike, candidates_h5: str | os.PathLike, out_png
) -> None:
    """Histograms of the pool's quality scores (log counts), selected samples highlighted.

    Left: every scored sample (kept, filtered out, selected); right: the kept samples
    only, on their own bins, where the selection's spread is visible.
    """
    table = _read_tsv(quality_tsv, "quality table")
    attrs = candidate_attrs(candidates_h5)
    picked = table["sample_id"].isin(selected_ids(curve_tsv)).to_numpy()
    score = table["quality"].to_numpy(dtype=np.float64)
    kept, cand = _flag(table["kept"]), _flag(table["candidate"])
    finite = np.isfinite(score)
    fig = Figure(figsize=(11, 4.2), layout="constrained")
    ax_all, ax_kept = fig.subplots(1, 2)
    fig.suptitle(f"Quality scores ({attrs['quality_method']}): {int(picked.sum())} selected of {len(table)}")
    groups = [(finite & mask, colour, label) for mask, colour, label in quality_groups(table, picked)]
    for ax, among, title in ((ax_all, finite, "all scored samples"), (ax_kept, finite & kept, "kept samples")):
        ax.set_title(title, fontsize=10)
        if not among.any():
            message(ax, "no sample has a finite quality score" if ax is ax_all else "no sample was kept")
            continue
        bins = np.histogram_bin_edges(score[among], bins=40)
        shown = [(m & among, c, f"{t} ({int((m & among).sum())})") for m, c, t in groups if (m & among).any()]
        ax.hist(
            [score[m] for m, _, _ in shown],
            bins=bins,
            stacked=True,
            color=[c for _, c, _ in shown],
            label=[t for _, _, t in shown],
        )
        if attrs["stage"] == "two_stage" and cand.any() and not attrs.get("strata"):
            ax.axvline(
                score[cand].min(), color="k", ls="--", lw=1, label=f"stage-1 cut: the top {int(cand.sum())} go to FPS"
            )
        elif attrs["stage"] == "two_stage" and cand.any():  # per stratum: no one score separates them
            ax.plot(
                [],
                [],
                " ",
                label=f"stage 1: {int(cand.sum())} candidates, the quality top of each of "
                f"{attrs['strata']} routing strata (no single cut)",
            )
        ax.set_yscale("log")
        ax.set_xlabel("quality score (higher is better)")
        ax.legend(fontsize=8, loc="best", framealpha=0.9)
    ax_all.set_ylabel("samples (log scale)")
    if (~finite).any():
        ax_all.text(
            0.99,
            0.98,
            f"{int((~finite).sum())} samples without a score",
            transform=ax_all.transAxes,
            ha="right",
            va="top",
            fontsize=8,
        )
    save_png(fig, out_png)


def fps_title(n_picks: int, n_candidates: int, attrs: Mapping) -> str:
    """The FPS figure's title: picks, and the candidates FPS ran over (with two stages, not the kept samples)."""
    stage = attrs["stage"]
    if stage == "two_stage":
        stage = f"two stages: the top {n_candidates} of {attrs['n_kept']} kept samples by quality"
    return (
        f"Farthest-point sampling: {n_picks} picks from {n_candidates} candidates\n"
        f"({stage}; {attrs['metric']} distance)"
    )


def fps_figure(curve_tsv: str | os.PathLike, candidates_h5: str | os.PathLike, out_png) -> None:
    """Max-min distance of each FPS pick (its distance to the nearest earlier pick) vs step."""
    curve = _read_tsv(curve_tsv, "FPS curve")
    attrs = candidate_attrs(candidates_h5)
    dist = curve["min_distance"].to_numpy(dtype=np.float64)
    shown = np.isfinite(dist)  # step 0 is inf (nothing picked before it)
    fig = Figure(figsize=(8, 4))
    ax = fig.subplots()
    ax.set_title(fps_title(len(curve), len(read_candidates(candidates_h5).sample_id), attrs), fontsize=10)
    if attrs["stage"] == "quality":
        message(ax, "diversity disabled (selection.disable_diversity): the picks are the top-k by quality, no FPS")
    elif not shown.any():
        message(ax, "only one pick: no distance to plot")
    else:
        ax.plot(curve["step"].to_numpy()[shown], dist[shown], color="C0", lw=1.5)
        ax.set_xlabel("FPS step (pick number)")
        ax.set_ylabel(f"max-min {attrs['metric']} distance")
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
    save_png(fig, out_png)


# ----------------------------------------------------------------------------- later stages


def training_figure(metrics: Mapping[str, str | os.PathLike], out_png) -> None:
    """Loss and learning rate vs optimizer step, one line per run in ``metrics`` (label -> metrics.tsv)."""
    present = {label: Path(p) for label, p in metrics.items() if p and Path(p).is_file()}
    if not present:
        placeholder_figure(
            out_png,
            "Training loss",
            "training stage not run in this workflow "
            "(no train/metrics.tsv): set train.enabled to fine-tune on the selection",
        )
        return
    fig = Figure(figsize=(8, 5.5))
    ax_loss, ax_lr = fig.subplots(2, 1, sharex=True, height_ratios=[3, 1])
    for i, (label, path) in enumerate(present.items()):
        table = pd.read_csv(path, sep="\t")
        if table.empty:
            ax_loss.plot([], [], color=f"C{i}", label=f"{label}: no step finished")
            continue
        ax_loss.plot(
            table["step"],
            table["loss"],
            color=f"C{i}",
            marker="o",
            ms=3,
            label=f"{label}: {len(table)} steps, last loss {table['loss'].iloc[-1]:.3f}",
        )
        ax_lr.plot(table["step"], table["lr"], color=f"C{i}")
    ax_loss.set_title("Training loss (response tokens)")
    ax_loss.set_ylabel("loss")
    ax_loss.legend(fontsize=8)
    ax_loss.grid(alpha=0.3)
    ax_lr.set_ylabel("learning rate")
    ax_lr.set_xlabel("optimizer step")
    ax_lr.grid(alpha=0.3)
    save_png(fig, out_png)


def index_job_seconds(bench_dir: str | os.PathLike | None, name: str) -> tuple[dict[int, float], float, int]:
    """``({window: index_window job seconds}, index_embed job seconds in all, index_embed jobs)`` from benchmarks."""
    folder = Path(bench_dir) / "indexes" / name if bench_dir is not None else None
    if folder is None or not folder.is_dir():
        return {}, float("nan"), 0
    windows = {
        int(m.group(1)): bench_seconds(p)
        for p in folder.glob("window_*.tsv")
        if (m := re.fullmatch(r"window_(\d+)\.tsv", p.name))
    }
    embeds = [bench_seconds(p) for p in folder.glob("embed_group_*.tsv")]
    return windows, float(np.nansum(embeds)) if embeds else float("nan"), len(embeds)


def index_figure(summaries: Iterable[str | os.PathLike], out_png, bench_dir: str | os.PathLike | None = None) -> None:
    """Per window of each index: embedding time, FAISS build time, job time; size on disk.

    Build and embedding times come from each index's ``summary.tsv``
    (:func:`selectflow.index.store.summarize_windows`), job wall times from the
    ``benchmark:`` files of rules ``index_window`` and ``index_embed`` under ``bench_dir``.
    """
    present = [Path(p) for p in summaries if Path(p).is_file()]
    if not present:
        placeholder_figure(
            out_png,
            "FAISS index build",
            "index stage not run in this workflow "
            "(no indexes/*/summary.tsv): set index.enabled to build the per-window indexes",
        )
        return
    fig = Figure(figsize=(10, 4))
    ax_time, ax_disk = fig.subplots(1, 2)
    totals = []
    for i, path in enumerate(present):
        table = pd.read_csv(path, sep="\t")
        name = path.parent.name
        jobs, embed_jobs_s, n_embed_jobs = index_job_seconds(bench_dir, name)
        job_s = table["window"].map(jobs).astype(float)
        embed_s = pd.to_numeric(table.get("embed_seconds", pd.Series(np.nan, index=table.index)), errors="coerce")
        for values, marker, ls, what in (
            (job_s, "o", "-", "index_window job"),
            (embed_s, "s", "--", "embedding"),
            (table["build_seconds"], "^", ":", "FAISS build"),
        ):
            if values.notna().any():
                ax_time.plot(
                    table["window"], values, color=f"C{i}", marker=marker, ms=4, ls=ls, label=f"{name}: {what}"
                )
        ax_disk.plot(table["window"], table["disk_bytes"] / 2**20, color=f"C{i}", marker="o", ms=4, label=name)
        parts = [
            f"{name}: {len(table)} windows, {int(table['n'].sum())} rows, {table['disk_bytes'].sum() / 2**20:.1f} MB"
        ]
        if job_s.notna().any():
            parts.append(f"window jobs {job_s.sum():.1f} s")
        if n_embed_jobs:
            parts.append(f"{n_embed_jobs} embedding job{'s' if n_embed_jobs > 1 else ''} {embed_jobs_s:.1f} s")
        if embed_s.notna().any():
            parts.append(f"embedding {embed_s.sum():.2f} s")
        parts.append(
            f"FAISS builds {table['build_seconds'].sum():.4f} s "
            f"({', '.join(sorted(set(table['index_type'])))} on {', '.join(sorted(set(table['built_on'])))})"
        )
        totals.append(", ".join(parts))
    ax_time.set_title("time per window", fontsize=10)
    ax_time.set_ylabel("seconds")
    ax_disk.set_title("index size on disk per window", fontsize=10)
    ax_disk.set_ylabel("MB")
    # job seconds and FAISS build microseconds on one axis: a log scale shows both
    ax_time.set_yscale("log")
    ax_disk.set_ylim(bottom=0)
    for ax in (ax_time, ax_disk):
        ax.set_xlabel("window")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle("\n".join(totals), fontsize=9)
    save_png(fig, out_png)
