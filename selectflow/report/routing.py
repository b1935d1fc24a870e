"""Routing figures: the pool's routing, streamed from the router-data shards, in two pictures.

:func:`routing_sample` reads the shards one at a time into a :class:`RoutingSample`
(per-layer expert CDFs of a deterministic sample of rows, mean expert probabilities);
:func:`pca_figure` scatters the sample's first two principal components (:func:`pca_2d`),
:func:`heatmap_figure` shows the mean expert probability per layer, pool vs selected.
"""

from __future__ import annotations

import json
import os
import zlib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from selectflow.report.canvas import save_png
from selectflow.router.routerfile import read_router_shard
from selectflow.runtime.errors import SelectFlowError


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


def routing_sample(
    router_paths: list[str | os.PathLike], selected: set[str], *, max_points: int = 3000
) -> RoutingSample:
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
    ax.set_title(
        f"Routing features (per-layer expert CDFs), PCA: {sample.n_selected} selected of "
        f"{sample.n_pool}" + (f", {shown} shown" if shown < sample.n_pool else "")
    )
    for i, name in enumerate(sorted(set(sample.dataset))):
        colour = f"C{i % 10}"
        mine = sample.dataset == name
        rest, sel = mine & ~sample.selected, mine & sample.selected
        ax.scatter(
            coords[rest, 0],
            coords[rest, 1],
            s=8,
            alpha=0.35,
            color=colour,
            linewidths=0,
            label=f"{name or 'pool'}: not selected",
        )
        ax.scatter(
            coords[sel, 0],
            coords[sel, 1],
            s=36,
            color=colour,
            edgecolors="k",
            linewidths=0.8,
            label=f"{name or 'pool'}: selected",
        )
    ax.set_xlabel(f"PC1 ({explained[0]:.0%} of variance)")
    ax.set_ylabel(f"PC2 ({explained[1]:.0%} of variance)")
    ax.legend(fontsize=8, markerscale=1.2)
    ax.grid(alpha=0.3)
    save_png(fig, out_png)


def heatmap_figure(sample: RoutingSample, out_png) -> None:
    """Mean expert probability per layer: pool, selected, and selected minus pool."""
    pool, sel = sample.mean_pool, sample.mean_selected
    n_layers, n_experts = pool.shape
    fig = Figure(figsize=(min(18.0, 5 + 0.3 * n_experts * 3), min(14.0, 2.2 + 0.28 * n_layers)), layout="constrained")
    axes = fig.subplots(1, 3, sharey=True)
    fig.suptitle("Mean expert probability per MoE layer")
    vmax = float(max(pool.max(), sel.max()))
    for ax, data, title in (
        (axes[0], pool, f"pool ({sample.n_pool})"),
        (axes[1], sel, f"selected ({sample.n_selected})"),
    ):
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
    save_png(fig, out_png)
