"""Routing strata: k-means regions of the routing space and the picks each one gets.

Farthest-point sampling covers the routing space, not the pool: a region where samples
route alike (one kind of task) gets few picks however many samples it holds, and a spread
region gets many. Strata keep the pool's shares: the kept samples are clustered by their
routing features (:func:`strata_labels`: seeded, deterministic k-means, trained on a
sample of the pool when it is large and assigned shard by shard), each stratum gets picks in
proportion to the pool samples it stands for (:func:`allocate`: its kept samples plus the
duplicates they stand for, or its kept samples alone with ``selection.strata_weight: kept``;
the quality score does not weigh in, README "Routing strata"),
and FPS runs over all candidates with a quota per stratum
(:mod:`selectflow.select.fps`). ``selection.routing_strata: 1`` is plain Select-MoE FPS.
"""

from __future__ import annotations

import logging

import numpy as np

log = logging.getLogger(__name__)


# k-means trains on at most this many samples a stratum (FAISS's max_points_per_centroid
# default); a larger pool is clustered on a seeded sample and assigned a shard at a time
POINTS_PER_CENTROID = 256


def fit(
    features: np.ndarray, n_clusters: int, *, seed: int = 0, iterations: int = 25, chunk: int = 65536
) -> np.ndarray:
    """Centres float32 [c, D] (c <= ``n_clusters``) of ``features`` [n, D]: squared L2, k-means++ start, ``seed``."""
    import torch  # here, not at the top: a job that never clusters starts without torch

    x = torch.as_tensor(np.ascontiguousarray(features, dtype=np.float32))
    n = x.shape[0]
    c = min(int(n_clusters), n)
    rng = np.random.default_rng(seed)
    centres = x[[int(rng.integers(n))]]
    if c <= 1:
        return centres.numpy()
    sq = (x * x).sum(1)
    for _ in range(1, c):  # k-means++: next centre drawn in proportion to the squared distance
        _, dist = _nearest(x, sq, centres, chunk)
        total = float(dist.sum())
        if total <= 0:
            break
        idx = int(np.searchsorted(np.cumsum(dist.double().numpy()), rng.random() * total))
        centres = torch.cat([centres, x[[min(idx, n - 1)]]])
    labels, _ = _nearest(x, sq, centres, chunk)
    for _ in range(iterations):
        sums = torch.zeros_like(centres).index_add_(0, labels, x)
        counts = torch.bincount(labels, minlength=len(centres)).clamp_min(1).unsqueeze(1)
        new_labels, _ = _nearest(x, sq, sums / counts, chunk)
        if torch.equal(new_labels, labels):
            break
        centres, labels = sums / counts, new_labels
    return centres.numpy()


def _nearest(x, sq, centres, chunk: int):
    """(labels, squared distances) [n] of the rows of torch ``x`` to their nearest centre."""
    import torch

    n = x.shape[0]
    labels, dist = torch.empty(n, dtype=torch.long), torch.empty(n)
    csq = (centres * centres).sum(1)
    for lo in range(0, n, chunk):
        d = (sq[lo : lo + chunk, None] - 2 * x[lo : lo + chunk] @ centres.T + csq[None]).clamp_min(0)
        dist[lo : lo + chunk], labels[lo : lo + chunk] = d.min(1)
    return labels, dist


def nearest(features: np.ndarray, centres: np.ndarray, chunk: int = 65536) -> np.ndarray:
    """Index int64 [n] of the centre nearest to each row of ``features`` [n, D] (squared L2, ties to the lower)."""
    import torch

    x = torch.as_tensor(np.ascontiguousarray(features, dtype=np.float32))
    return _nearest(x, (x * x).sum(1), torch.as_tensor(centres), chunk)[0].numpy()


def renumber(labels: np.ndarray) -> np.ndarray:
    """``labels`` renumbered 0, 1, ... by first appearance, so they do not depend on the centres' order."""
    uniq, first = np.unique(labels, return_index=True)
    order = np.argsort(np.argsort(first))
    return order[np.searchsorted(uniq, labels)].astype(np.int64)


def kmeans(
    features: np.ndarray, n_clusters: int, *, seed: int = 0, iterations: int = 25, chunk: int = 65536
) -> np.ndarray:
    """Cluster labels int64 [n] of ``features`` [n, D] (squared L2, k-means++ start, ``seed``), all rows in memory."""
    if min(int(n_clusters), len(features)) <= 1:
        return np.zeros(len(features), dtype=np.int64)
    centres = fit(features, n_clusters, seed=seed, iterations=iterations, chunk=chunk)
    return renumber(nearest(features, centres, chunk))


def strata_labels(n: int, n_strata: int, features_of, labels_of, *, seed: int = 0) -> np.ndarray:
    """Stratum int64 [n] of each of ``n`` kept samples, holding at most a sample of their features.

    ``features_of(positions)`` returns float32 [len(positions), D] features of those kept
    samples; ``labels_of(label)`` applies ``label`` (features [r, D] -> labels [r]) to every
    kept sample a shard at a time and returns the labels [n] in kept order. Pools of at most
    ``n_strata`` × :data:`POINTS_PER_CENTROID` samples are clustered whole (:func:`kmeans`);
    larger ones train the centres on a seeded sample of that size (sorted positions) and
    assign every sample by streaming. Peak memory: the sample's features plus one shard.
    """
    size = min(n, int(n_strata) * POINTS_PER_CENTROID)
    if size == n:
        return kmeans(features_of(np.arange(n)), n_strata, seed=seed)
    sample = np.sort(np.random.default_rng(seed).choice(n, size, replace=False))
    centres = fit(features_of(sample), n_strata, seed=seed)
    log.info("routing strata: k-means trained on %d of %d kept samples, then every sample assigned", size, n)
    return renumber(labels_of(lambda feats: nearest(feats, centres)))


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


def stratify(labels: np.ndarray, weight: np.ndarray, k: int, m: int):
    """What each routing stratum of the kept samples gets (``labels`` [n]: :func:`strata_labels`, quality order).

    ``weight`` [n] is what each kept sample weighs: the pool samples it stands for (itself and the
    duplicates dropped in its favour; ``selection.strata_weight: pool``) or 1 (``kept``). Returns ``take`` (bool [n]:
    the candidates, the quality top of each
    stratum), ``labels`` (int64 [n], stratum of each kept sample) and ``quota`` (int [S], FPS
    picks per stratum, summing to ``k``); each stratum has at least its quota of candidates and
    ``m`` candidates are shared in proportion too.
    """
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
    log.info(
        "%d routing strata: sizes %s, pool shares %s, picks %s",
        len(size),
        size.tolist(),
        np.round(mass / mass.sum(), 3).tolist(),
        quota.tolist(),
    )
    return rank_in < per[labels], labels, quota
