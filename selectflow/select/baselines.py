"""Baseline selectors the comparison stage runs beside FPS: pure, seeded, deterministic.

Every selector takes the pool's routing features ``feats`` [n, D] (grid features,
:func:`selectflow.select.distance.features`), its quality scores and sample ids, and returns
``k`` row indices in pick order. None holds an n×n matrix: distances are computed one row
(or one chunk of rows) against the pool at a time. k-means runs through FAISS on CPU; distances run on the device
given (CPU or CUDA, the same picks).

Ties in quality are broken by ``sample_id`` everywhere (:func:`quality_order`), so a result
depends on the data and the seed only, not on the order of the rows.

* ``random``: k rows drawn without replacement by ``numpy.random.default_rng(seed)``.
* ``quality``: the top k by quality, no diversity.
* ``kmeans`` (Select-MoE's later method): k-means on the routing features, then
  round-robin over the clusters (:func:`round_robin`).
* ``score_first`` (DEITA-style): walk the pool in quality order and keep a sample when its
  distance to every kept one exceeds a threshold τ (:func:`score_first_walk`, which reads a block of
  the quality order at a time and holds the kept rows' features, not the pool's); τ is the
  largest value a bisection finds for which the walk still fills k (:func:`score_first`; its
  walks, k·n distances each at most, are capped for large pools by :func:`bisection_steps`).
* ``semdedup``: k-means, drop near-duplicates within each cluster (a member within ``eps``
  of a better member kept in the same cluster), then the top k by quality
  (:func:`semdedup`).
* ``longest``: the k samples with the most response tokens, no quality and no diversity: the
  trivial selector a method has to beat when the comparison matches records, not tokens
  ("Long Is More for Alignment", Zhao et al. 2024). Ties by ``sample_id``.
* ``random_length``: ``random`` matched to a reference selection's lengths (compare's ``fps``):
  the pool's response-token counts are cut into :data:`LENGTH_BINS` quantile bins, and each bin
  gets as many rows drawn at random as the reference has there (:func:`length_matched_pick`).
  Same k, about the same tokens, so the difference to the reference is what it adds beyond
  the length of what it picks.
* ``random_matched``: ``random`` matched to a reference selection pick by pick: for each
  reference row, one row drawn at random among the :data:`LENGTH_NEIGHBOURS` undrawn rows
  nearest to it in response tokens (:func:`nearest_length_pick`). A finer match than
  ``random_length``'s bins where lengths are sparse (the long tail, where a bin spans hundreds
  of tokens).
"""

from __future__ import annotations

import logging

import numpy as np

from selectflow.runtime.errors import SelectFlowError
from selectflow.runtime.fsutil import h5_rows
from selectflow.schema import schema_enum
from selectflow.select import distance
from selectflow.select.strata import POINTS_PER_CENTROID

log = logging.getLogger(__name__)

BASELINES = tuple(
    m for m in schema_enum("compare", "methods") if m not in ("fps", "target")
)  # fps, target: not baselines
# the baselines that compare the pool's features: they read them by rows (score_first a block of its walk,
# semdedup a cluster at a time); the others read its quality, clusters or lengths only
READS_FEATURE_ROWS = frozenset({"score_first", "semdedup"})
BISECTION_STEPS = 30
# score_first's bisection: a walk computes up to k·n distances; above this many for all walks
# together the bisection takes fewer steps, never fewer than MIN_BISECTION_STEPS
# (τ then within 2^-10 of its first bracket, 2 × the largest distance from the best row)
WALK_DISTANCES = 10**10
MIN_BISECTION_STEPS = 10
# random_length: quantile bins of the pool's response tokens (ties share a bin, so fewer where lengths repeat)
LENGTH_BINS = 10
# random_matched: each reference row's draw is among this many undrawn rows nearest to it in
# response tokens (and every row as near as the farthest of them)
LENGTH_NEIGHBOURS = 10


def quality_order(quality: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """Row indices by quality descending, ties by ``sample_id`` ascending."""
    return np.lexsort((np.asarray(ids).astype(str), -np.asarray(quality, dtype=np.float64)))


def _check_k(k: int, n: int) -> int:
    if not 1 <= k <= n:
        raise SelectFlowError(f"cannot select {k} of a pool of {n}: k must be in [1, {n}]")
    return int(k)


def random_pick(n: int, k: int, seed: int) -> np.ndarray:
    """k distinct rows of n, drawn by ``default_rng(seed)`` (draw order)."""
    return np.random.default_rng(seed).choice(n, _check_k(k, n), replace=False).astype(np.int64)


def length_bins(response_tokens: np.ndarray, bins: int = LENGTH_BINS) -> np.ndarray:
    """Bin [n] of each row: its response tokens among the pool's ``bins`` quantiles (equal counts share a bin)."""
    lengths = np.asarray(response_tokens, dtype=np.float64)
    edges = np.unique(np.quantile(lengths, np.linspace(0, 1, bins + 1)[1:-1]))
    return np.searchsorted(edges, lengths, side="right")


def _needs_tokens(method: str, response_tokens: np.ndarray | None) -> np.ndarray:
    if response_tokens is None:
        raise SelectFlowError(f"compare method {method} needs the pool's response tokens: rerun rule compare_pool")
    return np.asarray(response_tokens)


def _reference_rows(method: str, reference: np.ndarray | None, n: int) -> np.ndarray:
    """``reference`` checked: distinct rows of a pool of ``n``, at most ``n`` of them."""
    if reference is None:
        raise SelectFlowError(f"compare method {method} needs the picks of the selection it matches (fps)")
    reference = np.asarray(reference, dtype=np.int64)
    if len(np.unique(reference)) != len(reference) or not ((reference >= 0) & (reference < n)).all():
        raise SelectFlowError(f"{method} needs distinct rows of the pool of {n} to match")
    _check_k(len(reference), n)
    return reference


def length_matched_pick(response_tokens: np.ndarray | None, reference: np.ndarray | None, seed: int) -> np.ndarray:
    """As many rows drawn at random in each length bin (:func:`length_bins`) as ``reference`` holds there.

    ``reference``: distinct row indices of a selection (the draw has its size and length profile).
    Drawn by ``default_rng(seed)`` bin by bin, then shuffled; never more than a bin holds, since
    the reference's rows are in it.
    """
    response_tokens = _needs_tokens("random_length", response_tokens)
    reference = _reference_rows("random_length", reference, len(response_tokens))
    bin_of = length_bins(response_tokens)
    need = np.bincount(bin_of[reference], minlength=int(bin_of.max()) + 1)
    rng = np.random.default_rng(seed)
    drawn = [rng.choice(np.flatnonzero(bin_of == b), c, replace=False) for b, c in enumerate(need) if c]
    return rng.permutation(np.concatenate(drawn)).astype(np.int64)


def nearest_length_pick(
    response_tokens: np.ndarray | None, reference: np.ndarray | None, seed: int, neighbours: int = LENGTH_NEIGHBOURS
) -> np.ndarray:
    """One row drawn for each ``reference`` row among the undrawn rows nearest to it in response tokens.

    ``rng = default_rng(seed)``; the reference rows are taken in the order ``rng.permutation(reference)``.
    For reference row r, with d the ``neighbours``-th smallest ``|tokens - tokens[r]|`` over the rows
    not drawn yet (all of them when fewer), the eligible rows are the undrawn rows within d of r
    (so rows tied at d all count), in ascending row order, and the draw is
    ``eligible[rng.integers(len(eligible))]``. r itself is eligible while undrawn. Returns the
    rows in draw order. Works over the distinct token counts, not the rows: a draw touches the
    rows of the counts within d only.
    """
    tokens = np.asarray(_needs_tokens("random_matched", response_tokens), dtype=np.int64)
    n = len(tokens)
    reference = _reference_rows("random_matched", reference, n)
    if neighbours < 1:
        raise SelectFlowError(f"random_matched needs at least 1 neighbour, got {neighbours}")
    values, value_of = np.unique(tokens, return_inverse=True)
    by_value = np.argsort(value_of, kind="stable")  # rows grouped by token count, ascending rows in a group
    starts = np.concatenate([[0], np.cumsum(np.bincount(value_of, minlength=len(values)))])
    left = np.diff(starts)  # undrawn rows per token count
    drawn = np.zeros(n, dtype=bool)
    rng = np.random.default_rng(seed)
    out = np.empty(len(reference), dtype=np.int64)
    for j, r in enumerate(rng.permutation(reference)):
        at = int(value_of[r])
        lo = hi = at
        total = int(left[at])
        while total < neighbours and (lo > 0 or hi < len(values) - 1):
            d_lo = values[at] - values[lo - 1] if lo > 0 else np.inf
            d_hi = values[hi + 1] - values[at] if hi < len(values) - 1 else np.inf
            d = min(d_lo, d_hi)
            if d_lo == d:
                lo -= 1
                total += int(left[lo])
            if d_hi == d:
                hi += 1
                total += int(left[hi])
        rows = by_value[starts[lo] : starts[hi + 1]]
        eligible = np.sort(rows[~drawn[rows]])
        pick = int(eligible[rng.integers(len(eligible))])
        drawn[pick] = True
        left[value_of[pick]] -= 1
        out[j] = pick
    return out


def quality_pick(quality: np.ndarray, ids: np.ndarray, k: int) -> np.ndarray:
    """The top k rows by quality."""
    return quality_order(quality, ids)[: _check_k(k, len(quality))]


def kmeans_labels(feats, n_clusters: int, seed: int, niter: int = 20, chunk: int = 65536) -> np.ndarray:
    """Cluster label [n] int64 of each row: FAISS k-means (L2, CPU, seeded).

    The centres train on at most ``n_clusters`` × :data:`~selectflow.select.strata.POINTS_PER_CENTROID`
    rows: FAISS's own seeded sample (the first of ``faiss.rand_perm`` with ``seed``, as its ``Clustering``
    draws it; a smaller pool trains on every row), then every row is assigned ``chunk`` rows at a time.
    ``feats``: [n, D], or an HDF5 dataset of them (``pool.h5``'s): only the sample and one chunk are read,
    so memory holds them and not the rows.
    """
    import faiss

    n = len(feats)
    n_clusters = max(1, min(int(n_clusters), n))
    if n_clusters == 1:
        return np.zeros(n, dtype=np.int64)
    km = faiss.Kmeans(
        feats.shape[1],
        n_clusters,
        niter=niter,
        seed=int(seed),
        verbose=False,
        max_points_per_centroid=POINTS_PER_CENTROID,
        min_points_per_centroid=1,
    )
    size = n_clusters * POINTS_PER_CENTROID
    if n > size:  # the sample FAISS would draw from every row, read alone: the same centres
        perm = np.empty(n, dtype=np.int32)
        faiss.rand_perm(faiss.swig_ptr(perm), n, int(seed))
        km.train(_float32(_rows(feats, perm[:size])))
    else:
        km.train(_float32(feats[:]))
    return np.concatenate(
        [km.index.search(_float32(feats[lo : lo + chunk]), 1)[1][:, 0] for lo in range(0, n, chunk)]
    ).astype(np.int64)


def _float32(x) -> np.ndarray:
    return np.ascontiguousarray(x, dtype=np.float32)


def _rows(feats, rows: np.ndarray) -> np.ndarray:
    """Rows ``rows`` (any order) of ``feats``: an array, or an HDF5 dataset read at those rows only."""
    return feats[rows] if isinstance(feats, np.ndarray) else h5_rows(feats, rows)


def round_robin(labels: np.ndarray, quality: np.ndarray, ids: np.ndarray, k: int) -> np.ndarray:
    """k rows taken round-robin over the clusters, each cluster's best remaining one per round.

    Within a cluster, members go by :func:`quality_order`; the clusters take turns in the
    order of their best member (so round 0 is every cluster's best, best cluster first). A
    cluster that runs out drops out of later rounds.
    """
    _check_k(k, len(labels))
    order = quality_order(quality, ids)
    members: dict[int, list[int]] = {}
    for i in order:  # clusters first seen in quality order: the order of their best member
        members.setdefault(int(labels[i]), []).append(int(i))
    lists = list(members.values())
    rounds = np.concatenate([np.arange(len(m)) for m in lists])
    turn = np.concatenate([np.full(len(m), c) for c, m in enumerate(lists)])
    flat = np.concatenate([np.asarray(m, dtype=np.int64) for m in lists])
    return flat[np.lexsort((turn, rounds))][:k]


def _torch(feats: np.ndarray, device="cpu"):
    import torch

    return torch.from_numpy(_float32(feats)).to(device)


def score_first_walk(
    feats: np.ndarray, order: np.ndarray, k: int, tau: float, metric: str, device="cpu", block: int = 4096
) -> np.ndarray:
    """Walk ``order``; keep a row when its distance to every kept row exceeds ``tau``; stop at k kept.

    Returns the kept rows (fewer than k when the walk ends first). ``feats``: [n, D], or whatever gives
    rows as ``feats[rows]`` (``pool.h5``'s features on disk): ``block`` rows of ``order`` are read at a time,
    measured against the rows kept before them in one call, then walked in turn, each row kept measured
    against the rest of its block. At most k·n distances; memory: the kept rows' features and one block.
    """
    import torch

    kept: list[int] = []
    if k < 1:
        return np.asarray(kept, dtype=np.int64)
    kept_x = None  # [k, D] the kept rows' features, filled as they are kept
    for lo in range(0, len(order), block):
        rows = np.asarray(order[lo : lo + block], dtype=np.int64)
        x = _torch(feats[rows], device)
        if kept_x is None:
            kept_x = torch.empty((k, x.shape[1]), dtype=x.dtype, device=x.device)
        min_dist = np.full(len(rows), np.inf, dtype=np.float64)
        if kept:
            min_dist = distance.pairwise(x, kept_x[: len(kept)], metric).min(dim=1).values.cpu().numpy()
            min_dist = min_dist.astype(np.float64)
        for i in range(len(rows)):
            if not min_dist[i] > tau:  # as the whole walk did: a NaN distance keeps nothing
                continue
            kept_x[len(kept)] = x[i]
            kept.append(int(rows[i]))
            if len(kept) == k:
                return np.asarray(kept, dtype=np.int64)
            if i + 1 < len(rows):
                d = distance.pairwise(x[i : i + 1], x[i + 1 :], metric)[0].cpu().numpy()
                min_dist[i + 1 :] = np.minimum(min_dist[i + 1 :], d)
    return np.asarray(kept, dtype=np.int64)


def _farthest_from(feats: np.ndarray, row: int, n: int, metric: str, device="cpu", block: int = 4096) -> float:
    """The largest distance from row ``row`` of ``feats`` to any of its ``n`` rows, ``block`` rows read at a time."""
    x = _torch(feats[np.array([row])], device)
    return max(
        float(distance.pairwise(x, _torch(feats[np.arange(lo, min(n, lo + block))], device), metric).max())
        for lo in range(0, n, block)
    )


def bisection_steps(k: int, n: int, budget: int = WALK_DISTANCES) -> int:
    """Halvings of score_first's τ bisection for k of n: :data:`BISECTION_STEPS`, fewer when the walks
    (up to k·n distances each) would compute more than ``budget`` distances, at least :data:`MIN_BISECTION_STEPS`."""
    return int(max(MIN_BISECTION_STEPS, min(BISECTION_STEPS, budget // max(1, k * n) - 1)))


def score_first(
    feats: np.ndarray,
    quality: np.ndarray,
    ids: np.ndarray,
    k: int,
    metric: str,
    device="cpu",
    budget: int = WALK_DISTANCES,
) -> tuple[np.ndarray, float]:
    """DEITA-style score-first selection of exactly k rows; return the picks and the threshold τ.

    τ is found by bisection: τ = -1 always fills k (every distance exceeds it, so the walk
    is the quality top k); τ = 2·max distance from the best row (at least the pool's
    diameter) keeps one row only. :func:`bisection_steps` halvings (30; fewer for pools where
    the walks would compute more than ``budget`` distances) keep the feasible end; its walk
    is the selection, exactly k rows whatever the number of halvings. The walk's count need not be monotone in τ, so
    τ is the
    largest feasible value the bisection meets, not necessarily the largest overall.
    """
    n = len(quality)
    _check_k(k, n)
    order = quality_order(quality, ids)
    lo = -1.0
    hi = 2.0 * _farthest_from(feats, int(order[0]), n, metric, device)
    if k > 1 and hi > 0:
        for _ in range(bisection_steps(k, n, budget)):
            mid = (lo + hi) / 2
            if len(score_first_walk(feats, order, k, mid, metric, device)) >= k:
                lo = mid
            else:
                hi = mid
    picks = score_first_walk(feats, order, k, lo, metric, device)
    log.info("score_first: threshold %.6g keeps %d", lo, len(picks))
    return picks, lo


def semdedup(
    feats: np.ndarray,
    quality: np.ndarray,
    ids: np.ndarray,
    labels: np.ndarray,
    k: int,
    eps: float,
    metric: str,
    device="cpu",
    block_values: int = 1 << 25,
) -> tuple[np.ndarray, int]:
    """Drop near-duplicates within each cluster, then take the top k by quality; return picks and drops.

    In each cluster the members are walked in quality order; a member within ``eps``
    (distance <= eps) of a member already kept in the same cluster is dropped. The top k
    survivors by quality are the selection; when fewer than k survive, the best dropped rows
    fill the rest (the selection always has k rows). ``feats``: [n, D], or whatever gives rows
    as ``feats[rows]`` (``pool.h5``'s features on disk): one cluster's features are held at a time,
    and its distances a block of rows at a time (:func:`_near_in_order`, at most ``block_values``).
    """
    n = len(quality)
    _check_k(k, n)
    order = quality_order(quality, ids)
    dropped = np.zeros(n, dtype=bool)
    for c in np.unique(labels):
        members = order[labels[order] == c]  # quality order within the cluster
        near = _near_in_order(_torch(feats[members], device), eps, metric, block_values)
        dropped[members[near]] = True
    ranked = np.concatenate([order[~dropped[order]], order[dropped[order]]])
    return ranked[:k].astype(np.int64), int(dropped.sum())


# rows of semdedup's walk measured in one call: few enough that rows an earlier block made near are skipped
BLOCK_ROWS = 256


def _near_in_order(x, eps: float, metric: str, block_values: int) -> np.ndarray:
    """near [c]: row j of ``x`` (a torch tensor [c, D]) lies within ``eps`` of an earlier row that is not near.

    The walk of :func:`semdedup`. The distances from a block of rows to the rows from the block's first on
    (at most ``block_values`` of them, at least one row's) are computed in one call; only the rows not yet
    near at the block's start are measured, as a near row never drops another.
    """
    import torch

    c = len(x)
    near = np.zeros(c, dtype=bool)
    rows = max(1, min(BLOCK_ROWS, block_values // max(c, 1)))
    for lo in range(0, c, rows):
        hi = min(c, lo + rows)
        walk = lo + np.flatnonzero(~near[lo:hi])
        if len(walk) == 0:
            continue
        d = distance.pairwise(x[torch.from_numpy(walk).to(x.device)], x[lo:], metric).cpu().numpy() <= eps
        for i, j in enumerate(walk):
            if not near[j]:  # rows of this block before j may have made it near
                near[j + 1 :] |= d[i, j + 1 - lo :]
    return near


def pair_threshold(
    feats: np.ndarray, quantile: float, seed: int, metric: str, n_pairs: int = 10000, device="cpu"
) -> float:
    """The ``quantile`` of the distances of ``n_pairs`` random pairs of distinct rows (seeded).

    The scale-free near-duplicate threshold: ``quantile`` 0.01 calls two samples near
    duplicates when they are closer than 99 % of random pairs of the pool.
    """
    n = len(feats)
    if n < 2:
        return 0.0
    rng = np.random.default_rng(seed)
    a = rng.integers(0, n, n_pairs)
    b = (a + rng.integers(1, n, n_pairs)) % n  # never a itself

    def rows(at):  # feats an array, or pool.h5's dataset: the pairs' rows read 1,000 pairs at a time
        return _torch(_rows(feats, at), device)

    d = np.concatenate(
        [
            distance.pairwise(rows(a[s : s + 1000]), rows(b[s : s + 1000]), metric).cpu().numpy().diagonal()
            for s in range(0, n_pairs, 1000)
        ]
    )
    return float(np.quantile(d, quantile))


def near_duplicate_pairs(feats: np.ndarray, eps: float, metric: str, chunk: int = 1024, device="cpu") -> int:
    """Pairs i < j of rows within ``eps`` (distance <= eps), counted ``chunk`` rows at a time."""
    x = _torch(feats, device)
    n, total = len(x), 0
    for s in range(0, n, chunk):
        d = distance.pairwise(x[s : s + chunk], x, metric).cpu().numpy()
        rows = np.arange(s, min(s + chunk, n))[:, None]
        total += int(((d <= eps) & (np.arange(n)[None, :] > rows)).sum())
    return total


def select(
    method: str,
    feats: np.ndarray,
    quality: np.ndarray,
    ids: np.ndarray,
    k: int,
    *,
    seed: int,
    labels: np.ndarray | None,
    eps: float,
    metric: str,
    device="cpu",
    response_tokens: np.ndarray | None = None,
    reference: np.ndarray | None = None,
) -> np.ndarray:
    """Rows picked by baseline ``method`` (one of :data:`BASELINES`); ``labels`` are the pool's k-means clusters,
    ``response_tokens`` [n] each row's response tokens (``longest``, ``random_length``, ``random_matched``),
    ``reference`` the rows of the selection ``random_length`` and ``random_matched`` match (its k is theirs).

    ``device`` (a torch device) is where the distances of ``score_first`` and ``semdedup`` run;
    distances on the feature grid are exact, so CPU and GPU pick the same rows.
    """
    if method == "random":
        return random_pick(len(quality), k, seed)
    if method == "quality":
        return quality_pick(quality, ids, k)
    if method == "kmeans":
        return round_robin(labels, quality, ids, k)
    if method == "score_first":
        return score_first(feats, quality, ids, k, metric, device)[0]
    if method == "semdedup":
        return semdedup(feats, quality, ids, labels, k, eps, metric, device)[0]
    if method == "longest":
        return quality_pick(_needs_tokens(method, response_tokens), ids, k)
    if method == "random_length":
        return length_matched_pick(response_tokens, reference, seed)
    if method == "random_matched":
        return nearest_length_pick(response_tokens, reference, seed)
    raise SelectFlowError(f"unknown compare method {method!r}; compare.methods takes {', '.join(BASELINES)} and fps")
