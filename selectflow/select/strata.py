"""Routing strata: k-means regions of the routing space and the picks each one gets.

Farthest-point sampling covers the routing space, not the pool: a region where samples
route alike (one kind of task) gets few picks however many samples it holds, and a spread
region gets many. Strata keep the pool's shares: the kept samples are clustered by their
routing features (:func:`kmeans`, seeded, deterministic), each stratum gets picks in
proportion to the pool samples it stands for (:func:`allocate`: its kept samples plus the
duplicates they stand for; the quality score does not weigh in, README "Routing strata"),
and FPS runs over all candidates with a quota per stratum
(:mod:`selectflow.select.fps`). ``selection.routing_strata: 1`` is plain Select-MoE FPS.
"""

from __future__ import annotations

import logging

import numpy as np

log = logging.getLogger(__name__)


def kmeans(features: np.ndarray, n_clusters: int, *, seed: int = 0, iterations: int = 25,
           chunk: int = 65536) -> np.ndarray:
    """Cluster labels int64 [n] of ``features`` [n, D] (squared L2, k-means++ start, ``seed``)."""
    import torch  # here, not at the top: a job that never clusters starts without torch

    x = torch.as_tensor(np.ascontiguousarray(features, dtype=np.float32))
    n = x.shape[0]
    c = min(int(n_clusters), n)
    if c <= 1:
        return np.zeros(n, dtype=np.int64)
    rng = np.random.default_rng(seed)
    sq = (x * x).sum(1)

    def nearest(centres: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        labels, dist = torch.empty(n, dtype=torch.long), torch.empty(n)
        csq = (centres * centres).sum(1)
        for lo in range(0, n, chunk):
            d = (sq[lo : lo + chunk, None] - 2 * x[lo : lo + chunk] @ centres.T + csq[None]).clamp_min(0)
            dist[lo : lo + chunk], labels[lo : lo + chunk] = d.min(1)
        return labels, dist

    centres = x[[int(rng.integers(n))]]
    for _ in range(1, c):  # k-means++: next centre drawn in proportion to the squared distance
        _, dist = nearest(centres)
        total = float(dist.sum())
        if total <= 0:
            break
        idx = int(np.searchsorted(np.cumsum(dist.double().numpy()), rng.random() * total))
        centres = torch.cat([centres, x[[min(idx, n - 1)]]])
    labels, _ = nearest(centres)
    for _ in range(iterations):
        sums = torch.zeros_like(centres).index_add_(0, labels, x)
        counts = torch.bincount(labels, minlength=len(centres)).clamp_min(1).unsqueeze(1)
        new_labels, _ = nearest(sums / counts)
        if torch.equal(new_labels, labels):
            break
        centres, labels = sums / counts, new_labels
    # renumber by first appearance, so labels do not depend on the centres' order
    _, first = np.unique(labels.numpy(), return_index=True)
    order = np.argsort(np.argsort(first))
    return order[np.searchsorted(np.unique(labels.numpy()), labels.numpy())].astype(np.int64)


def allocate(total: int, weight: np.ndarray, cap: np.ndarray) -> np.ndarray:
    """Split ``total`` into integers proportional to ``weight``, none above ``cap`` (largest remainder).

    What a capped stratum cannot take goes to the others in proportion to their weights.
    """
    weight, cap = np.asarray(weight, dtype=np.float64), np.asarray(cap, dtype=np.int64)
    total = int(min(total, cap.sum()))
    out = np.zeros(len(weight), dtype=np.int64)
    open_ = cap > 0
    while out.sum() < total and open_.any():
        rest = total - out.sum()
        share = np.where(open_, weight, 0.0)
        share = share / share.sum() * rest if share.sum() > 0 else open_ / open_.sum() * rest
        add = np.floor(share).astype(np.int64)
        frac = share - add
        for i in np.argsort(-frac, kind="stable")[: rest - add.sum()]:
            if open_[i]:
                add[i] += 1
        out = np.minimum(out + add, cap)
        open_ = out < cap
    return out


def stratify(features: np.ndarray, weight: np.ndarray, k: int, m: int, n_strata: int):
    """Routing strata of the kept samples (``features`` [n, D] in quality order) and what each gets.

    ``weight`` [n] is how many pool samples each kept one stands for (itself and the duplicates
    dropped in its favour). Returns ``take`` (bool [n]: the candidates, the quality top of each
    stratum), ``labels`` (int64 [n], stratum of each kept sample) and ``quota`` (int [S], FPS
    picks per stratum, summing to ``k``); each stratum has at least its quota of candidates and
    ``m`` candidates are shared in proportion too.
    """
    labels = kmeans(features, n_strata, seed=0)
    size = np.bincount(labels)
    # each stratum stands for its kept samples and the duplicates dropped in their favour:
    # its share of the pool that passed the quality filter. Quality does not weigh in here
    # (it already chose what is kept, and picks the candidates inside each stratum): a score
    # that runs lower in one kind of task than in another would otherwise move that task's
    # picks to the others (measured in bench/bench_selection_quality.py, README "Routing strata")
    mass = np.bincount(labels, weights=weight, minlength=len(size))
    quota = allocate(k, mass, size)
    per = np.maximum(allocate(m, mass, size), quota)
    rank_in = np.zeros(len(labels), dtype=np.int64)  # rank of each kept sample inside its stratum
    for c in range(len(size)):
        idx = np.flatnonzero(labels == c)
        rank_in[idx] = np.arange(len(idx))
    log.info("%d routing strata: sizes %s, pool shares %s, picks %s", len(size), size.tolist(),
             np.round(mass / mass.sum(), 3).tolist(), quota.tolist())
    return rank_in < per[labels], labels, quota
