"""Figures of a run for ``snakemake --report``: result files in, one PNG per figure out.

Inputs are files the workflow wrote: ``quality.tsv``, ``fps_curve.tsv`` and
``candidates.h5`` (:mod:`selectflow.stages.select`), router-data shards
(:mod:`selectflow.router.routerfile`), the jobs' ``log:`` files (``rule X done:
peak_host_rss_mb=… gpu_peak_allocated_mb=…`` lines, :mod:`selectflow.runtime.jobs`) and
``benchmark:`` TSVs, the training ``metrics.tsv`` and the index ``summary.tsv`` files.

=========================  ==============================================================
figure                     what it shows
=========================  ==============================================================
:func:`quality_figure`     histogram of quality scores, selected samples highlighted
:func:`fps_figure`         FPS max-min distance of each pick vs step
:func:`pca_figure`         2-D PCA of routing features, by dataset, selected vs not
:func:`heatmap_figure`     mean expert probability per layer: pool, selected, difference
:func:`resources_figure`   per rule: runtime, peak host RSS, GPU peak
:func:`training_figure`    loss (and learning rate) vs step, fine-tune and warm-up
:func:`index_figure`       per index window: build time and size on disk
=========================  ==============================================================

A stage that did not run (no training metrics, no index) still gets its figure, one that
says so, so the report always has the same entries. Figures are drawn on
:class:`matplotlib.figure.Figure` objects (Agg canvas, no pyplot state) and written
atomically. :func:`make_report_figures` is the rule-level call.
"""

from __future__ import annotations

import json
import logging
import os
import re
import zlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from selectflow.router.routerfile import read_router_shard
from selectflow.runtime.errors import SelectFlowError
from selectflow.runtime.fsutil import atomic_path

log = logging.getLogger(__name__)

FIGURES = ("quality", "fps", "pca", "heatmap", "resources", "training", "indexes")
DPI = 100
_SELECTED = "#d62728"
_POOL = "#9e9e9e"


# ----------------------------------------------------------------------------- helpers


def _save(fig: Figure, out_png: str | os.PathLike) -> None:
    with atomic_path(out_png, suffix=".png") as tmp:
        fig.savefig(tmp, format="png", dpi=DPI, bbox_inches="tight")
    log.info("wrote %s", out_png)


def _message(ax, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", wrap=True, fontsize=11, transform=ax.transAxes)
    ax.set_axis_off()


def placeholder_figure(out_png: str | os.PathLike, title: str, text: str) -> None:
    """A figure holding only ``title`` and ``text`` (a stage that did not run)."""
    fig = Figure(figsize=(7, 2.2))
    ax = fig.subplots()
    ax.set_title(title)
    _message(ax, text)
    _save(fig, out_png)


def _read_tsv(path: str | os.PathLike, what: str) -> pd.DataFrame:
    if not Path(path).is_file():
        raise SelectFlowError(f"{what} {path} is missing; rerun snakemake to rebuild it")
    # ids and dataset names stay strings ("NA", "007" included)
    return pd.read_csv(path, sep="\t", dtype={"sample_id": str, "dataset": str}, keep_default_na=False,
                       na_values={"quality": ["nan"], "min_distance": ["nan"]})


def _flag(column: pd.Series) -> np.ndarray:
    return column.astype(str).str.lower().eq("true").to_numpy()


def candidate_attrs(candidates_h5: str | os.PathLike) -> dict:
    """Attributes of ``candidates.h5`` (stage, metric, k, n_pool, n_kept, quality_method)."""
    # imported here: selectflow.stages.select pulls in torch, and the Snakefile imports this module
    from selectflow.stages.select import read_candidates

    return read_candidates(candidates_h5).attrs


def selected_ids(curve_tsv: str | os.PathLike) -> set[str]:
    """Sample ids picked by the selection (every row of ``fps_curve.tsv``)."""
    return set(_read_tsv(curve_tsv, "FPS curve")["sample_id"])


# ----------------------------------------------------------------------------- selection


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
    groups = [
        (finite & ~kept, "#f4a582", "filtered out by the quality method"),
        (finite & kept & ~picked, _POOL, "kept, not selected"),
        (finite & picked, _SELECTED, "selected"),
    ]
    for ax, among, title in ((ax_all, finite, "all scored samples"), (ax_kept, finite & kept, "kept samples")):
        ax.set_title(title, fontsize=10)
        if not among.any():
            _message(ax, "no sample has a finite quality score" if ax is ax_all else "no sample was kept")
            continue
        bins = np.histogram_bin_edges(score[among], bins=40)
        shown = [(m & among, c, f"{t} ({int((m & among).sum())})") for m, c, t in groups if (m & among).any()]
        ax.hist([score[m] for m, _, _ in shown], bins=bins, stacked=True, color=[c for _, c, _ in shown],
                label=[t for _, _, t in shown])
        if attrs["stage"] == "two_stage" and cand.any():
            ax.axvline(score[cand].min(), color="k", ls="--", lw=1,
                       label=f"stage-1 cut: the top {int(cand.sum())} go to FPS")
        ax.set_yscale("log")
        ax.set_xlabel("quality score (higher is better)")
        ax.legend(fontsize=8, loc="best", framealpha=0.9)
    ax_all.set_ylabel("samples (log scale)")
    if (~finite).any():
        ax_all.text(0.99, 0.98, f"{int((~finite).sum())} samples without a score", transform=ax_all.transAxes,
                    ha="right", va="top", fontsize=8)
    _save(fig, out_png)


def fps_title(n_picks: int, n_candidates: int, attrs: Mapping) -> str:
    """The FPS figure's title: picks, and the candidates FPS ran over (with two stages, not the kept samples)."""
    stage = attrs["stage"]
    if stage == "two_stage":
        stage = f"two stages: the top {n_candidates} of {attrs['n_kept']} kept samples by quality"
    return (f"Farthest-point sampling: {n_picks} picks from {n_candidates} candidates\n"
            f"({stage}; {attrs['metric']} distance)")


def fps_figure(curve_tsv: str | os.PathLike, candidates_h5: str | os.PathLike, out_png) -> None:
    """Max-min distance of each FPS pick (its distance to the nearest earlier pick) vs step."""
    curve = _read_tsv(curve_tsv, "FPS curve")
    attrs = candidate_attrs(candidates_h5)
    dist = curve["min_distance"].to_numpy(dtype=np.float64)
    shown = np.isfinite(dist)  # step 0 is inf (nothing picked before it)
    from selectflow.stages.select import read_candidates

    fig = Figure(figsize=(8, 4))
    ax = fig.subplots()
    ax.set_title(fps_title(len(curve), len(read_candidates(candidates_h5).sample_id), attrs), fontsize=10)
    if attrs["stage"] == "quality":
        _message(ax, "diversity disabled (selection.disable_diversity): the picks are the top-k by quality, no FPS")
    elif not shown.any():
        _message(ax, "only one pick: no distance to plot")
    else:
        ax.plot(curve["step"].to_numpy()[shown], dist[shown], color="C0", lw=1.5)
        ax.set_xlabel("FPS step (pick number)")
        ax.set_ylabel(f"max-min {attrs['metric']} distance")
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
    _save(fig, out_png)


# ----------------------------------------------------------------------------- routing


@dataclass
class RoutingSample:
    """Routing of the pool, streamed shard by shard.

    ``features`` float32 [m, L·E]: per-layer CDFs of ``moe_probs`` of a deterministic
    sample of at most ``max_points`` rows (every selected row first); ``dataset`` [m] str
    and ``selected`` [m] bool for those rows. ``mean_pool`` / ``mean_selected`` float64
    [L, E]: mean expert probability over every pool row / every selected row.
    """

    features: np.ndarray
    dataset: np.ndarray
    selected: np.ndarray
    mean_pool: np.ndarray
    mean_selected: np.ndarray
    n_pool: int
    n_selected: int


def cdf_features(moe_probs: np.ndarray) -> np.ndarray:
    """Float32 [n, L·E]: per layer, the cumulative expert distribution of ``moe_probs`` [n, L, E].

    The L1 distance between two rows is the summed per-layer Wasserstein-1 distance, the
    routing distance of selection (there also snapped to a grid, which a picture does not need).
    """
    probs = np.asarray(moe_probs, dtype=np.float32)
    return np.cumsum(probs, axis=2).reshape(len(probs), probs.shape[1] * probs.shape[2])  # n may be 0


def _unit_hash(ids: Iterable[str]) -> np.ndarray:
    """A uniform value in [0, 1) per id, stable across runs and shard orders."""
    return np.array([zlib.crc32(s.encode()) / 2**32 for s in ids], dtype=np.float64)


class _Smallest:
    """The ``size`` rows with the smallest (hash, sample id) offered so far."""

    def __init__(self, size: int):
        self.size = size
        self.hash, self.ids, self.dataset = np.empty(0), np.empty(0, dtype=object), np.empty(0, dtype=object)
        self.features: np.ndarray | None = None

    def offer(self, hashes: np.ndarray, ids: np.ndarray, features: np.ndarray, datasets: np.ndarray) -> None:
        h, ids = np.concatenate([self.hash, hashes]), np.concatenate([self.ids, ids])
        feats = features if self.features is None else np.concatenate([self.features, features])
        best = np.lexsort((ids.astype(str), h))[: self.size]
        self.hash, self.ids, self.features = h[best], ids[best], feats[best]
        self.dataset = np.concatenate([self.dataset, datasets])[best]


def routing_sample(router_paths: list[str | os.PathLike], selected: set[str], *, max_points: int = 3000) -> RoutingSample:
    """Read the shards one at a time; return the :class:`RoutingSample` of the pool.

    The scatter sample holds at most ``max_points`` rows: up to half of them selected
    rows (all of them when they fit), the rest other rows. Within each group the rows
    with the smallest id hashes are kept, so the sample does not depend on shard order.
    """
    if not router_paths:
        raise SelectFlowError("no router-data shards given for the routing figures; run the router_dump rule first")
    n_sel = min(len(selected), max_points // 2)
    groups = {True: _Smallest(n_sel), False: _Smallest(max_points - n_sel)}
    sums = sums_sel = None
    n_pool = n_picked = 0
    for path in router_paths:
        shard = read_router_shard(path)
        probs = shard.moe_probs.astype(np.float64)
        picked = np.array([sid in selected for sid in shard.sample_id], dtype=bool)
        if sums is None:
            sums, sums_sel = np.zeros(probs.shape[1:]), np.zeros(probs.shape[1:])
        sums += probs.sum(axis=0)
        sums_sel += probs[picked].sum(axis=0)
        n_pool += len(shard)
        n_picked += int(picked.sum())
        hashes = _unit_hash(shard.sample_id)
        for flag, group in groups.items():
            rows = np.flatnonzero(picked == flag)
            # only this shard's best rows can enter the group: features and datasets for those alone
            rows = rows[np.lexsort((shard.sample_id[rows].astype(str), hashes[rows]))][: group.size]
            if shard.record is not None:
                names = np.array([json.loads(r).get("dataset", "") for r in shard.record[rows]], dtype=object)
            else:
                names = np.full(len(rows), Path(path).parent.name, dtype=object)
            group.offer(hashes[rows], shard.sample_id[rows], cdf_features(shard.moe_probs[rows]), names)
    sel, rest = groups[True], groups[False]
    return RoutingSample(
        features=np.concatenate([sel.features, rest.features]),
        dataset=np.concatenate([sel.dataset, rest.dataset]),
        selected=np.repeat([True, False], [len(sel.hash), len(rest.hash)]),
        mean_pool=sums / max(1, n_pool),
        mean_selected=sums_sel / max(1, n_picked),
        n_pool=n_pool,
        n_selected=n_picked,
    )


def pca_2d(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Project ``x`` [m, D] onto its first two principal components.

    Returns ``(coords float64 [m, 2], explained float64 [2])``: the share of the total
    variance each component explains. Signs are fixed (largest loading positive) so the
    picture does not flip between runs.
    """
    x = np.asarray(x, dtype=np.float64)
    centred = x - x.mean(axis=0)
    total = float((centred**2).sum())
    if len(x) < 2 or total == 0.0:
        return np.zeros((len(x), 2)), np.zeros(2)
    # economy SVD on the smaller side: m x m Gram matrix when there are fewer rows than features
    if len(x) < x.shape[1]:
        vals, vecs = np.linalg.eigh(centred @ centred.T)
        order = np.argsort(vals)[::-1][:2]
        axes = centred.T @ vecs[:, order]
        axes /= np.maximum(np.linalg.norm(axes, axis=0), 1e-300)
    else:
        vals, vecs = np.linalg.eigh(centred.T @ centred)
        axes = vecs[:, np.argsort(vals)[::-1][:2]]
    if axes.shape[1] < 2:
        axes = np.pad(axes, ((0, 0), (0, 2 - axes.shape[1])))
    signs = np.sign(axes[np.abs(axes).argmax(axis=0), np.arange(2)])
    axes *= np.where(signs == 0, 1.0, signs)
    coords = centred @ axes
    return coords, (coords**2).sum(axis=0) / total


def pca_figure(sample: RoutingSample, out_png) -> None:
    """Scatter of the routing features' first two principal components."""
    coords, explained = pca_2d(sample.features)
    fig = Figure(figsize=(7.5, 6))
    ax = fig.subplots()
    shown = len(sample.features)
    ax.set_title(f"Routing features (per-layer expert CDFs), PCA: {sample.n_selected} selected of "
                 f"{sample.n_pool}" + (f", {shown} shown" if shown < sample.n_pool else ""))
    for i, name in enumerate(sorted(set(sample.dataset))):
        colour = f"C{i % 10}"
        mine = sample.dataset == name
        rest, sel = mine & ~sample.selected, mine & sample.selected
        ax.scatter(coords[rest, 0], coords[rest, 1], s=8, alpha=0.35, color=colour, linewidths=0,
                   label=f"{name or 'pool'}: not selected")
        ax.scatter(coords[sel, 0], coords[sel, 1], s=36, color=colour, edgecolors="k", linewidths=0.8,
                   label=f"{name or 'pool'}: selected")
    ax.set_xlabel(f"PC1 ({explained[0]:.0%} of variance)")
    ax.set_ylabel(f"PC2 ({explained[1]:.0%} of variance)")
    ax.legend(fontsize=8, markerscale=1.2)
    ax.grid(alpha=0.3)
    _save(fig, out_png)


def heatmap_figure(sample: RoutingSample, out_png) -> None:
    """Mean expert probability per layer: pool, selected, and selected minus pool."""
    pool, sel = sample.mean_pool, sample.mean_selected
    n_layers, n_experts = pool.shape
    fig = Figure(figsize=(min(18.0, 5 + 0.3 * n_experts * 3), min(14.0, 2.2 + 0.28 * n_layers)), layout="constrained")
    axes = fig.subplots(1, 3, sharey=True)
    fig.suptitle("Mean expert probability per MoE layer")
    vmax = float(max(pool.max(), sel.max()))
    for ax, data, title in ((axes[0], pool, f"pool ({sample.n_pool})"), (axes[1], sel, f"selected ({sample.n_selected})")):
        im = ax.imshow(data, aspect="auto", cmap="viridis", vmin=0, vmax=vmax, interpolation="nearest")
        ax.set_title(title, fontsize=10)
    fig.colorbar(im, ax=axes[:2], shrink=0.9, label="probability")
    diff = sel - pool
    lim = float(np.abs(diff).max()) or 1e-9
    im = axes[2].imshow(diff, aspect="auto", cmap="RdBu_r", vmin=-lim, vmax=lim, interpolation="nearest")
    axes[2].set_title("selected − pool", fontsize=10)
    fig.colorbar(im, ax=axes[2], shrink=0.9, label="difference")
    for ax in axes:
        ax.set_xlabel("expert")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    axes[0].set_ylabel("MoE layer")
    _save(fig, out_png)


# ----------------------------------------------------------------------------- resources

_STAMP = r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) INFO selectflow\.job: rule (\S+)"
_START = re.compile(_STAMP + r", attempt (\d+)", re.M)
_DONE = re.compile(_STAMP + r" done: (.*)$", re.M)
_PAIR = re.compile(r"(\w+)=([0-9.eE+-]+)")


def _stamp(text: str) -> pd.Timestamp:
    return pd.to_datetime(text, format="%Y-%m-%d %H:%M:%S,%f")


def job_resources(log_dir: str | os.PathLike, bench_dir: str | os.PathLike) -> pd.DataFrame:
    """One row per finished job: ``rule, job, attempts, seconds, max_rss_mb, gpu_peak_mb``.

    A job is a ``log:`` file under ``log_dir`` with a "rule X done" line
    (:func:`selectflow.runtime.jobs.run_job`) and/or a ``benchmark:`` TSV under ``bench_dir`` at
    the same relative path (the workflow's layout). ``seconds``: the benchmark's wall
    time, else the time from the last attempt's start line to the done line (the job
    body, without interpreter start-up). ``max_rss_mb``: the benchmark's ``max_rss``
    (the job's process tree), else the log's ``peak_host_rss_mb``. ``gpu_peak_mb``:
    ``gpu_peak_allocated_mb`` from the log, NaN for CPU jobs.
    """
    log_dir, bench_dir = Path(log_dir), Path(bench_dir)
    jobs: dict[str, dict] = {}
    for path in sorted(log_dir.rglob("*.log")) if log_dir.is_dir() else []:
        text = path.read_text(encoding="utf-8", errors="replace")
        done = _DONE.findall(text)
        if not done:
            continue
        end, rule, pairs = done[-1]
        starts = [(stamp, int(attempt)) for stamp, _, attempt in _START.findall(text) if stamp <= end]
        values = {k: float(v) for k, v in _PAIR.findall(pairs)}
        jobs[path.relative_to(log_dir).with_suffix("").as_posix()] = {
            "rule": rule,
            "attempts": starts[-1][1] if starts else 1,
            "seconds": (_stamp(end) - _stamp(starts[-1][0])).total_seconds() if starts else np.nan,
            "max_rss_mb": values.get("peak_host_rss_mb", np.nan),
            "gpu_peak_mb": values.get("gpu_peak_allocated_mb", np.nan),
        }
    for path in sorted(bench_dir.rglob("*.tsv")) if bench_dir.is_dir() else []:
        bench = pd.read_csv(path, sep="\t")
        if bench.empty or "s" not in bench:
            continue
        job = path.relative_to(bench_dir).with_suffix("").as_posix()
        row = jobs.setdefault(job, {"rule": job.split("/")[0], "attempts": 1, "gpu_peak_mb": np.nan})
        row["seconds"] = float(bench["s"].mean())
        rss = pd.to_numeric(bench.get("max_rss"), errors="coerce").max()
        if np.isfinite(rss):
            row["max_rss_mb"] = float(rss)
    columns = ["rule", "job", "attempts", "seconds", "max_rss_mb", "gpu_peak_mb"]
    return pd.DataFrame([{"job": job, **row} for job, row in sorted(jobs.items())], columns=columns)


def resources_figure(table: pd.DataFrame, out_png) -> None:
    """Per rule: total runtime (job count), largest peak host RSS, largest GPU peak."""
    fig = Figure(figsize=(12, 1.8 + 0.35 * max(3, table["rule"].nunique())), layout="constrained")
    axes = fig.subplots(1, 3, sharey=True)
    if table.empty:
        fig.suptitle("Resources per rule")
        for ax in axes:
            ax.set_axis_off()
        _message(axes[1], "no finished job logs or benchmark files found")
        _save(fig, out_png)
        return
    per_rule = table.groupby("rule", sort=True).agg(
        jobs=("job", "size"), seconds=("seconds", lambda s: s.sum(min_count=1)), rss=("max_rss_mb", "max"),
        gpu=("gpu_peak_mb", "max"), retried=("attempts", lambda a: int((a > 1).sum())),
    )
    y = np.arange(len(per_rule))
    labels = [f"{rule} ({jobs} job{'s' if jobs > 1 else ''})" for rule, jobs in zip(per_rule.index, per_rule["jobs"])]
    panels = [
        (axes[0], per_rule["seconds"], "C0", "total runtime (s)"),
        (axes[1], per_rule["rss"], "C1", "peak host RSS of one job (MB)"),
        (axes[2], per_rule["gpu"], "C2", "peak GPU memory allocated (MB)"),
    ]
    for ax, values, colour, title in panels:
        ax.set_title(title, fontsize=10)
        if values.isna().all():
            ax.set_xticks([])
            ax.text(0.5, 0.5, "no GPU job in this run\n(all jobs ran on CPU)" if ax is axes[2] else "not recorded",
                    transform=ax.transAxes, ha="center", va="center", fontsize=10)
            continue
        ax.barh(y, values.fillna(0).to_numpy(), color=colour)
        for yi, v in zip(y, values):
            ax.text(0, yi, " n/a" if np.isnan(v) else f" {v:,.1f}", va="center", fontsize=8)
        ax.grid(axis="x", alpha=0.3)
    axes[0].set_yticks(y, labels)
    axes[0].invert_yaxis()
    retried = int(per_rule["retried"].sum())
    fig.suptitle(f"Resources per rule: {len(table)} finished jobs" + (f", {retried} after a retry" if retried else ""))
    _save(fig, out_png)


# ----------------------------------------------------------------------------- later stages


def training_figure(metrics: Mapping[str, str | os.PathLike], out_png) -> None:
    """Loss and learning rate vs optimizer step, one line per run in ``metrics`` (label -> metrics.tsv)."""
    present = {label: Path(p) for label, p in metrics.items() if p and Path(p).is_file()}
    if not present:
        placeholder_figure(out_png, "Training loss", "training stage not run in this workflow "
                           "(no train/metrics.tsv): set train.enabled to fine-tune on the selection")
        return
    fig = Figure(figsize=(8, 5.5))
    ax_loss, ax_lr = fig.subplots(2, 1, sharex=True, height_ratios=[3, 1])
    for i, (label, path) in enumerate(present.items()):
        table = pd.read_csv(path, sep="\t")
        if table.empty:
            ax_loss.plot([], [], color=f"C{i}", label=f"{label}: no step finished")
            continue
        ax_loss.plot(table["step"], table["loss"], color=f"C{i}", marker="o", ms=3,
                     label=f"{label}: {len(table)} steps, last loss {table['loss'].iloc[-1]:.3f}")
        ax_lr.plot(table["step"], table["lr"], color=f"C{i}")
    ax_loss.set_title("Training loss (response tokens)")
    ax_loss.set_ylabel("loss")
    ax_loss.legend(fontsize=8)
    ax_loss.grid(alpha=0.3)
    ax_lr.set_ylabel("learning rate")
    ax_lr.set_xlabel("optimizer step")
    ax_lr.grid(alpha=0.3)
    _save(fig, out_png)


def _bench_seconds(path: Path) -> float:
    try:
        bench = pd.read_csv(path, sep="\t")
        return float(bench["s"].mean())
    except (OSError, ValueError, KeyError):
        return float("nan")


def index_job_seconds(bench_dir: str | os.PathLike | None, name: str) -> tuple[dict[int, float], float, int]:
    """``({window: index_window job seconds}, index_embed job seconds in all, index_embed jobs)`` from benchmarks."""
    folder = Path(bench_dir) / "indexes" / name if bench_dir is not None else None
    if folder is None or not folder.is_dir():
        return {}, float("nan"), 0
    windows = {int(m.group(1)): _bench_seconds(p) for p in folder.glob("window_*.tsv")
               if (m := re.fullmatch(r"window_(\d+)\.tsv", p.name))}
    embeds = [_bench_seconds(p) for p in folder.glob("embed_group_*.tsv")]
    return windows, float(np.nansum(embeds)) if embeds else float("nan"), len(embeds)


def index_figure(summaries: Iterable[str | os.PathLike], out_png, bench_dir: str | os.PathLike | None = None) -> None:
    """Per window of each index: embedding time, FAISS build time, job time; size on disk.

    Build and embedding times come from each index's ``summary.tsv``
    (:func:`selectflow.index.store.summarize_windows`), job wall times from the
    ``benchmark:`` files of rules ``index_window`` and ``index_embed`` under ``bench_dir``.
    """
    present = [Path(p) for p in summaries if Path(p).is_file()]
    if not present:
        placeholder_figure(out_png, "FAISS index build", "index stage not run in this workflow "
                           "(no indexes/*/summary.tsv): set index.enabled to build the per-window indexes")
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
        for values, marker, ls, what in ((job_s, "o", "-", "index_window job"), (embed_s, "s", "--", "embedding"),
                                         (table["build_seconds"], "^", ":", "FAISS build")):
            if values.notna().any():
                ax_time.plot(table["window"], values, color=f"C{i}", marker=marker, ms=4, ls=ls,
                             label=f"{name}: {what}")
        ax_disk.plot(table["window"], table["disk_bytes"] / 2**20, color=f"C{i}", marker="o", ms=4, label=name)
        parts = [f"{name}: {len(table)} windows, {int(table['n'].sum())} rows, {table['disk_bytes'].sum() / 2**20:.1f} MB"]
        if job_s.notna().any():
            parts.append(f"window jobs {job_s.sum():.1f} s")
        if n_embed_jobs:
            parts.append(f"{n_embed_jobs} embedding job{'s' if n_embed_jobs > 1 else ''} {embed_jobs_s:.1f} s")
        if embed_s.notna().any():
            parts.append(f"embedding {embed_s.sum():.2f} s")
        parts.append(f"FAISS builds {table['build_seconds'].sum():.4f} s "
                     f"({', '.join(sorted(set(table['index_type'])))} on {', '.join(sorted(set(table['built_on'])))})")
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
    _save(fig, out_png)


# ----------------------------------------------------------------------------- rule-level


def stage_inputs(targets: Iterable[str], results: str, warmup: bool) -> dict[str, list[str]]:
    """Later-stage files among a run's final ``targets`` (paths under ``results``).

    Returns ``{"train": [metrics.tsv] or [], "warmup": [...], "indexes": [summary.tsv...]}``:
    a stage the config leaves off is absent, so the report shows "stage not run" for it
    instead of forcing it to run.
    """
    targets = list(targets)
    return {
        "train": [t for t in targets if t == f"{results}/train/metrics.tsv"],
        "warmup": [f"{results}/warmup/metrics.tsv"] if warmup else [],
        "indexes": [t for t in targets if re.fullmatch(rf"{re.escape(results)}/indexes/[^/]+/summary\.tsv", t)],
    }



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
        from selectflow.report.examples import examples_figure

        examples_figure(quality_tsv, curve_tsv, list(router_paths), examples_png)
