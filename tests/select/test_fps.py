"""FPS against a brute-force reference: both modes, chunk/block sizes, planted ties, k >= N."""

import logging

import numpy as np
import pytest
import torch

from selectflow.runtime.errors import SelectFlowError
from selectflow.select.distance import (
    BlockMatrix,
    block_count,
    block_path,
    compute_block,
    features,
)
from selectflow.select.diversity import knn_graph, mean_spread
from selectflow.select.fps import Snap, fps_matrix, fps_streaming


def probs(n, layers=2, experts=6, seed=0):
    rng = np.random.default_rng(seed)
    return rng.dirichlet(np.full(experts, 0.7), size=(n, layers)).astype(np.float32)


def naive_matrix(f, metric):
    a = f.astype(np.float64)
    diff = a[:, None, :] - a[None, :, :]
    if metric == "wasserstein":
        return np.abs(diff).sum(-1).astype(np.float32)
    if metric == "l2":
        return np.sqrt((diff**2).sum(-1)).astype(np.float32)
    return np.maximum(0.0, 1.0 - a @ a.T).astype(np.float32)


def brute_fps(dist, k, start, strata=None, quota=None, weight=None):
    """Textbook max-min: scan every unpicked candidate; strict '>' keeps the lowest index on ties.

    With ``strata`` and ``quota``: only candidates whose stratum still has picks left compete.
    With ``weight``: the score is float32(weight) × float32(min distance), the distance recorded.
    """
    n = len(dist)
    left = None if strata is None else np.array(quota).copy()
    picks, at = [start], [np.inf]
    if left is not None:
        left[strata[start]] -= 1
    while len(picks) < min(k, n):
        best, best_c, best_m = -1.0, None, None
        for c in range(n):
            if c in picks or (left is not None and left[strata[c]] == 0):
                continue
            m = min(float(dist[c, s]) for s in picks)
            score = m if weight is None else float(np.float32(weight[c]) * np.float32(m))
            if score > best:
                best, best_c, best_m = score, c, m
        picks.append(best_c)
        at.append(best_m)
        if left is not None:
            left[strata[best_c]] -= 1
    return np.array(picks), np.array(at)


def with_ties(n, seed, metric):
    """Features with planted exact ties: duplicate rows and points on an integer lattice."""
    f = features(probs(n, seed=seed), metric)
    rng = np.random.default_rng(seed + 100)
    dup = rng.choice(n, size=n // 4, replace=False)
    f[dup] = f[rng.choice(n, size=len(dup))]
    return f


def blocks(tmp_path, f, block_size, metric):
    n = len(f)
    nb = block_count(n, block_size)
    for i in range(nb):
        for j in range(i, nb):
            compute_block(f, i, j, block_size, block_path(tmp_path, i, j), metric=metric, device="cpu", sub_chunk=3)
    return BlockMatrix(tmp_path, n, block_size, metric)


@pytest.mark.parametrize("metric", ["wasserstein", "cosine", "l2"])
@pytest.mark.parametrize("n, k, seed, start", [(40, 12, 0, 0), (57, 57, 1, 5), (31, 100, 2, 30), (50, 20, 3, 17)])
def test_both_modes_equal_brute_force(tmp_path, metric, n, k, seed, start):
    f = with_ties(n, seed, metric)
    ref_picks, ref_at = brute_fps(naive_matrix(f, metric), k, start)
    for chunk in (1, 7, 10_000):
        got = fps_streaming(f, k, metric=metric, start=start, device="cpu", chunk=chunk, log_interval=100)
        np.testing.assert_array_equal(got.picks, ref_picks)
        np.testing.assert_array_equal(got.min_distance, ref_at)
    for block_size in (8, n):
        got = fps_matrix(blocks(tmp_path / f"b{block_size}", f, block_size, metric), k, start=start, log_interval=10)
        np.testing.assert_array_equal(got.picks, ref_picks)
        np.testing.assert_array_equal(got.min_distance, ref_at)


def rank_weights(n, seed):
    """Quality weights 1 - rank/n of a random quality order, a few of them tied on purpose."""
    rank = np.random.default_rng(seed).permutation(n)
    rank[: n // 5] = rank[n // 5 : 2 * (n // 5)]
    return 1.0 - rank / n


@pytest.mark.parametrize("metric", ["wasserstein", "cosine", "l2"])
@pytest.mark.parametrize("n, k, seed, start", [(40, 12, 0, 0), (31, 100, 2, 30), (50, 20, 3, 17)])
def test_weighted_fps_equals_brute_force(tmp_path, metric, n, k, seed, start):
    f, w = with_ties(n, seed, metric), rank_weights(n, seed)
    ref_picks, ref_at = brute_fps(naive_matrix(f, metric), k, start, weight=w)
    for chunk in (1, 7, 10_000):
        got = fps_streaming(f, k, metric=metric, start=start, device="cpu", chunk=chunk, log_interval=100, weight=w)
        np.testing.assert_array_equal(got.picks, ref_picks)
        np.testing.assert_array_equal(got.min_distance, ref_at)
    got = fps_matrix(blocks(tmp_path, f, 8, metric), k, start=start, log_interval=10, weight=w)
    np.testing.assert_array_equal(got.picks, ref_picks)
    np.testing.assert_array_equal(got.min_distance, ref_at)
    # the weights change the picks here (else this test would not test them)
    assert not np.array_equal(ref_picks, brute_fps(naive_matrix(f, metric), k, start)[0])


def fps_in_strata(f, k, strata, quota, **kw):
    """fps_streaming over Wasserstein features ``f`` with ``strata``/``quota``, from the first candidate
    of a stratum with picks, in chunks of 4."""
    start = int(np.flatnonzero(quota[strata] > 0)[0])
    return start, fps_streaming(
        f,
        k,
        metric="wasserstein",
        start=start,
        device="cpu",
        chunk=4,
        log_interval=100,
        strata=strata,
        quota=quota,
        **kw,
    )


def test_weighted_fps_with_strata_equals_brute_force():
    f, w = with_ties(50, 5, "wasserstein"), rank_weights(50, 5)
    strata = np.random.default_rng(5).integers(0, 3, size=50)
    quota = np.minimum(np.bincount(strata, minlength=3), [4, 0, 5])
    start, got = fps_in_strata(f, 9, strata, quota, weight=w)
    ref_picks, ref_at = brute_fps(naive_matrix(f, "wasserstein"), 9, start, strata, quota, weight=w)
    np.testing.assert_array_equal(got.picks, ref_picks)
    np.testing.assert_array_equal(got.min_distance, ref_at)


def test_equal_weights_are_plain_fps_and_a_far_low_quality_point_waits():
    f = with_ties(40, 6, "wasserstein")
    plain = fps_streaming(f, 15, metric="wasserstein", device="cpu", log_interval=100)
    same = fps_streaming(f, 15, metric="wasserstein", device="cpu", log_interval=100, weight=np.full(40, 0.3))
    np.testing.assert_array_equal(same.picks, plain.picks)
    # a point far from all others, with the worst quality, is plain FPS's second pick; weighted, it
    # needs 1/weight times the distance of the good points, so the good points around go first
    far = np.vstack([f, f[:1] + 0.5 * (f.max(0) - f.min(0) + 1)]).astype(np.float32)
    w = np.append(np.ones(40), 1 / 41)
    assert fps_streaming(far, 2, metric="l2", device="cpu", log_interval=100).picks.tolist() == [0, 40]
    weighted = fps_streaming(far, 15, metric="l2", device="cpu", log_interval=100, weight=w)
    assert 40 not in weighted.picks.tolist()


@pytest.mark.parametrize("weight", [np.zeros(5), -np.ones(5), np.ones(4), np.array([1, 1, np.nan, 1, 1])])
def test_bad_weights_rejected(weight):
    with pytest.raises(SelectFlowError, match="FPS weights must be 5 positive finite numbers"):
        fps_streaming(
            features(probs(5), "wasserstein"), 2, metric="wasserstein", device="cpu", log_interval=100, weight=weight
        )


def test_lattice_ties_go_to_lowest_index(tmp_path):
    # one layer, one-hot routing: the Wasserstein distance of experts e1, e2 is |e1 - e2|
    experts = [4, 8, 0, 6, 2, 8, 0]
    p = np.zeros((len(experts), 1, 9), dtype=np.float32)
    p[np.arange(len(experts)), 0, experts] = 1.0
    f = features(p, "wasserstein")
    # from expert 4: experts 8 (indices 1, 5) and 0 (2, 6) tie at 4 -> index 1; then 0 (still at
    # 4) -> index 2; then 6 and 2 tie at 2 -> index 3, then 4; then the duplicates at 0 -> 5, 6
    want = [0, 1, 2, 3, 4, 5, 6]
    want_at = [np.inf, 4, 4, 2, 2, 0, 0]
    streaming = fps_streaming(f, 10, start=0, device="cpu", chunk=2, metric="wasserstein", log_interval=100)
    matrix = fps_matrix(blocks(tmp_path, f, 3, "wasserstein"), 10, start=0, log_interval=10)
    for got in (streaming, matrix):
        assert got.picks.tolist() == want
        assert got.min_distance.tolist() == want_at
    # reversed, expert 0 holds the lowest tied index: the index decides, not the value
    rev = fps_streaming(f[::-1].copy(), 3, start=len(experts) - 1, device="cpu", metric="wasserstein", log_interval=100)
    assert rev.picks.tolist() == [6, 0, 1]


def test_k_at_least_n_returns_each_candidate_once():
    f = with_ties(25, 4, "wasserstein")
    got = fps_streaming(f, 1000, device="cpu", start=3, metric="wasserstein", log_interval=100)
    assert len(got.picks) == 25 and sorted(got.picks.tolist()) == list(range(25))
    assert got.picks[0] == 3
    curve = got.curve()
    assert curve.columns.tolist() == ["step", "candidate_index", "min_distance"] and len(curve) == 25
    # max-min distances never increase along the curve
    assert np.all(np.diff(got.min_distance[1:]) <= 0)


def test_logs_max_min_distance_every_interval(caplog):
    f = features(probs(30, seed=5), "wasserstein")
    with caplog.at_level(logging.INFO, logger="selectflow.select.fps"):
        got = fps_streaming(f, 25, device="cpu", log_interval=10, metric="wasserstein")
    steps = [r for r in caplog.messages if r.startswith("pick ")]
    assert [m.split("pick ")[1].split("/")[0] for m in steps] == ["0", "10", "20"]
    assert steps[1].startswith(f"pick 10/25: candidate {got.picks[10]}, max-min distance {got.min_distance[10]:.6g}")


def test_bad_arguments_rejected():
    f = features(probs(5), "wasserstein")
    with pytest.raises(SelectFlowError, match="k >= 1"):
        fps_streaming(f, 0, device="cpu", metric="wasserstein", log_interval=100)
    with pytest.raises(SelectFlowError, match="start index 9"):
        fps_streaming(f, 2, start=9, device="cpu", metric="wasserstein", log_interval=100)
    with pytest.raises(SelectFlowError, match="unknown distance metric"):
        fps_streaming(f, 2, metric="manhattan", device="cpu", log_interval=100)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("metric", ["wasserstein", "cosine", "l2"])
def test_cuda_picks_identical_to_cpu(metric):
    f = with_ties(3000, 6, metric)
    cpu = fps_streaming(f, 300, metric=metric, device="cpu", log_interval=100)
    gpu = fps_streaming(f, 300, metric=metric, device="cuda", chunk=777, log_interval=100)
    np.testing.assert_array_equal(cpu.picks, gpu.picks)
    np.testing.assert_array_equal(cpu.min_distance, gpu.min_distance)


def brute_snapped_fps(dist, k, start, n_neighbors, strata=None, quota=None, weight=None, score=None):
    """Snapped FPS by the book (selection.fps_snap: density), from the whole distance matrix; with ``score``
    (fps_snap: quality, the quality ranks) the pick is the smallest score instead of the smallest spread.

    Each step scans every candidate still in the race for the nominee (largest weighted min distance,
    lowest index on ties), then picks the candidate with the smallest spread (mean distance to its
    ``n_neighbors`` nearest others: columns 1.. of its row sorted by (distance, index)) among the
    nominee and those ``n_neighbors + 1`` nearest, still in the race, lowest index on ties. A nominee
    that is not picked leaves the race if its stratum keeps enough candidates for its quota.
    """
    n = len(dist)
    k = min(k, n)
    kk = min(n_neighbors + 1, n)
    order = [sorted(range(n), key=lambda c, r=r: (float(dist[r, c]), c))[:kk] for r in range(n)]
    spread = [float(np.mean([np.float64(dist[r, c]) for c in order[r][1:]])) if kk > 1 else 0.0 for r in range(n)]
    spread = spread if score is None else [float(v) for v in score]
    group = [0] * n if strata is None else [int(s) for s in strata]
    left = [k] if strata is None else [int(q) for q in quota]
    gone = set()  # picked or retired

    def open_(c):
        return c not in gone and left[group[c]] > 0

    picks, at = [start], [np.inf]
    gone.add(start)
    left[group[start]] -= 1
    while len(picks) < k:
        best, nominee = -1.0, None
        for c in range(n):
            if open_(c):
                m = min(float(dist[c, s]) for s in picks)
                score = m if weight is None else float(np.float32(weight[c]) * np.float32(m))
                if score > best:
                    best, nominee = score, c
        near = [c for c in order[nominee] if open_(c)] + [nominee]
        p = min(near, key=lambda c: (spread[c], c))
        if p != nominee and sum(open_(c) and group[c] == group[nominee] for c in range(n)) - 1 >= left[group[nominee]]:
            gone.add(nominee)
        picks.append(p)
        at.append(min(float(dist[p, s]) for s in picks[:-1]))
        gone.add(p)
        left[group[p]] -= 1
    return np.array(picks), np.array(at)


def snap_of(f, metric, n_neighbors):
    nbr, dist = knn_graph(f, n_neighbors, metric)
    return Snap(nbr, mean_spread(dist))


@pytest.mark.parametrize("metric", ["wasserstein", "cosine", "l2"])
@pytest.mark.parametrize("n, k, seed, start, n_neighbors", [(40, 12, 0, 0, 4), (31, 100, 2, 30, 3), (50, 20, 3, 17, 6)])
def test_snapped_fps_equals_brute_force(tmp_path, metric, n, k, seed, start, n_neighbors):
    f = with_ties(n, seed, metric)
    dist = naive_matrix(f, metric)
    snap = snap_of(f, metric, n_neighbors)
    for w in (None, rank_weights(n, seed)):
        ref_picks, ref_at = brute_snapped_fps(dist, k, start, n_neighbors, weight=w)
        for chunk in (1, 7, 10_000):
            got = fps_streaming(
                f, k, metric=metric, start=start, device="cpu", chunk=chunk, log_interval=100, weight=w, snap=snap
            )
            np.testing.assert_array_equal(got.picks, ref_picks)
            np.testing.assert_array_equal(got.min_distance, ref_at)
        got = fps_matrix(blocks(tmp_path, f, 8, metric), k, start=start, log_interval=10, weight=w, snap=snap)
        np.testing.assert_array_equal(got.picks, ref_picks)
        np.testing.assert_array_equal(got.min_distance, ref_at)
        assert len(set(got.picks.tolist())) == min(k, n)
        # snapping changes the picks here (else this test would not test it)
        assert not np.array_equal(ref_picks[: min(k, n) - 1], brute_fps(dist, k, start, weight=w)[0][: min(k, n) - 1])


@pytest.mark.parametrize("metric", ["wasserstein", "cosine", "l2"])
@pytest.mark.parametrize("n_neighbors", [1, 4])
@pytest.mark.parametrize("by", ["quality", "length"])
def test_quality_and_length_snapped_fps_equal_brute_force(metric, n_neighbors, by):
    # selection.fps_snap: quality: the same race, the pick the best quality rank of the neighbourhood;
    # length: the longest response of it (score minus the response tokens, many ties: to the lowest index)
    f = with_ties(60, 11, metric)
    rng = np.random.default_rng(11)
    rank = rng.permutation(60).astype(np.float64) if by == "quality" else -rng.integers(1, 8, 60).astype(np.float64)
    nbr, _ = knn_graph(f, n_neighbors, metric)
    got = fps_streaming(f, 15, metric=metric, device="cpu", log_interval=100, snap=Snap(nbr, rank))
    ref_picks, ref_at = brute_snapped_fps(naive_matrix(f, metric), 15, 0, n_neighbors, score=rank)
    np.testing.assert_array_equal(got.picks, ref_picks)
    np.testing.assert_array_equal(got.min_distance, ref_at)
    density = fps_streaming(f, 15, metric=metric, device="cpu", log_interval=100, snap=snap_of(f, metric, n_neighbors))
    assert got.picks.tolist() != density.picks.tolist()  # the ranks, not the spreads, decide here


@pytest.mark.parametrize("seed", [5, 8])
def test_snapped_fps_with_strata_equals_brute_force_and_fills_each_quota(seed):
    f = with_ties(50, seed, "wasserstein")
    strata = np.random.default_rng(seed).integers(0, 3, size=50)
    # stratum 2 gets as many picks as it has candidates: none of its nominees may leave the race
    quota = np.bincount(strata, minlength=3) * [1, 0, 0]
    quota[0] = 6
    quota[2] = np.bincount(strata, minlength=3)[2]
    k = int(quota.sum())
    start, got = fps_in_strata(f, k, strata, quota, snap=snap_of(f, "wasserstein", 5))
    ref_picks, ref_at = brute_snapped_fps(naive_matrix(f, "wasserstein"), k, start, 5, strata, quota)
    np.testing.assert_array_equal(got.picks, ref_picks)
    np.testing.assert_array_equal(got.min_distance, ref_at)
    np.testing.assert_array_equal(np.bincount(strata[got.picks], minlength=3), quota)


def test_snapped_fps_takes_the_typical_record_where_plain_fps_takes_the_outlier():
    # a tight cluster (the start), a loose one and one point far out beyond the loose one: plain FPS's
    # second pick is the far point; snapped, the far point only nominates its neighbourhood (the loose
    # cluster), the densest of its neighbours there is picked instead, and the far point leaves the race
    rng = np.random.default_rng(0)
    tight = rng.normal(0.0, 0.01, size=(20, 4))
    loose = rng.normal(3.0, 0.5, size=(20, 4))
    far = np.full((1, 4), 40.0)
    f = np.vstack([tight, loose, far]).astype(np.float32)
    plain = fps_streaming(f, 10, metric="l2", device="cpu", log_interval=100)
    assert plain.picks[1] == 40
    snap = snap_of(f, "l2", 5)
    snapped = fps_streaming(f, 10, metric="l2", device="cpu", log_interval=100, snap=snap)
    assert 40 not in snapped.picks.tolist()
    near = snap.neighbors[40]
    second = snapped.picks[1]
    assert second in near and 20 <= second < 40
    assert snap.score[second] == snap.score[near[near < 40]].min()
