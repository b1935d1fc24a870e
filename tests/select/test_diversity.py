"""Facility location and k-means round-robin (selectflow.select.diversity) against brute-force references."""

import math

import numpy as np
import pandas as pd
import pytest

from selectflow.config import selection_section
from selectflow.runtime.errors import SelectFlowError
from selectflow.select import baselines, distance, diversity


def _feats(n, seed, metric="wasserstein", L=2, E=4):
    rng = np.random.default_rng(seed)
    probs = rng.dirichlet(np.ones(E) * 0.5, size=(n, L)).astype(np.float32)
    return distance.features(probs, metric)


def _full_distances(x, metric):
    import torch

    t = torch.as_tensor(x).to(distance.compute_dtype(metric))
    return distance.pairwise(t, t, metric).numpy()


def _greedy_reference(nbr, sim, weight, k, strata=None, quota=None):
    """Exact greedy over the dense m×m similarity matrix restricted to the k-NN graph."""
    m = len(nbr)
    s = np.zeros((m, m))
    s[np.repeat(np.arange(m), nbr.shape[1]), nbr.ravel()] = sim.ravel()
    strata = np.zeros(m, dtype=int) if strata is None else strata
    left = np.array([k]) if quota is None else np.array(quota).copy()
    cover, picks = np.zeros(m), []
    for _ in range(k):
        gains = weight * np.maximum(0.0, s - cover[:, None]).sum(0)
        gains[picks] = -np.inf
        gains[left[strata] == 0] = -np.inf
        j = int(np.argmax(gains))
        picks.append(j)
        left[strata[j]] -= 1
        cover = np.maximum(cover, s[:, j])
    return np.array(picks)


@pytest.mark.parametrize("metric", ["wasserstein", "cosine", "l2"])
def test_knn_graph_is_the_exact_nearest_neighbours(metric):
    x = _feats(300, 1, metric)
    nbr, dist = diversity.knn_graph(x, 7, metric, chunk=64)
    d = _full_distances(x, metric)
    ref = np.array([np.lexsort((np.arange(len(x)), row))[:8] for row in d])
    np.testing.assert_array_equal(nbr, ref)
    np.testing.assert_array_equal(dist, np.take_along_axis(d, ref, 1))


def test_knn_graph_breaks_ties_by_index():
    x = np.repeat(_feats(20, 2), 5, axis=0)  # every row has 4 exact duplicates
    nbr, dist = diversity.knn_graph(x, 3, "wasserstein", chunk=7)
    d = _full_distances(x, "wasserstein")
    ref = np.array([np.lexsort((np.arange(len(x)), row))[:4] for row in d])
    np.testing.assert_array_equal(nbr, ref)
    assert (dist == 0).all()


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_facility_location_lazy_greedy_matches_exact_greedy(seed):
    x = _feats(250, seed)
    rng = np.random.default_rng(seed)
    quality, ids = rng.normal(size=len(x)), np.array([f"s{i:04d}" for i in range(len(x))])
    nbr, dist = diversity.knn_graph(x, 10, "wasserstein")
    sim, w = diversity.similarities(dist), diversity.quality_weight(quality, ids)
    picks = diversity.facility_location(nbr, sim, w, 40)
    np.testing.assert_array_equal(picks, _greedy_reference(nbr, sim, w, 40))
    assert len(set(picks.tolist())) == 40


def test_facility_location_keeps_strata_quotas():
    x = _feats(200, 5)
    quality, ids = np.linspace(1, 0, len(x)), np.array([f"s{i:04d}" for i in range(len(x))])
    strata = np.random.default_rng(5).integers(0, 4, len(x))
    quota = np.array([10, 0, 5, 5])
    nbr, dist = diversity.knn_graph(x, 8, "wasserstein")
    sim, w = diversity.similarities(dist), diversity.quality_weight(quality, ids)
    picks = diversity.facility_location(nbr, sim, w, 20, strata, quota)
    np.testing.assert_array_equal(picks, _greedy_reference(nbr, sim, w, 20, strata, quota))
    np.testing.assert_array_equal(np.bincount(strata[picks], minlength=4), quota)


def test_facility_location_prefers_representatives_over_outliers():
    """A dense cluster's member covers more than an isolated point, at equal quality weight."""
    rng = np.random.default_rng(0)
    dense = rng.normal(0, 0.01, (50, 3))
    outliers = rng.normal(0, 1, (5, 3)) + 10
    x = np.vstack([outliers, dense]).astype(np.float32)
    nbr, dist = diversity.knn_graph(x, 10, "l2")
    picks = diversity.facility_location(nbr, diversity.similarities(dist), np.ones(len(x)), 1)
    assert picks[0] >= 5


def test_quality_weight_is_rank_based():
    w = diversity.quality_weight(np.array([0.1, 5.0, 0.1, -3.0]), np.array(["b", "x", "a", "y"]))
    np.testing.assert_array_equal(w, [0.5, 1.0, 0.75, 0.25])


@pytest.mark.parametrize("metric", ["wasserstein", "cosine", "l2"])
@pytest.mark.parametrize("n_neighbors", [1, 4, 30])
def test_density_weight_equals_brute_force(metric, n_neighbors):
    """1 - rank/m by the mean distance to the n nearest other rows (from the full matrix, self
    left out), densest first, ties by sample id; duplicate rows make ties on purpose."""
    x = _feats(30, 4, metric)
    x[10:16] = x[3]  # six copies of row 3: tied densities, and neighbours at distance 0
    ids = np.array([f"s{(7 * i) % 30:03d}" for i in range(len(x))])  # ties broken by id, not by row
    d = _full_distances(x, metric).astype(np.float64)
    spread = np.array([np.sort(np.delete(row, i))[:n_neighbors].mean() for i, row in enumerate(d)])
    order = np.lexsort((ids, spread))
    want = np.empty(len(x))
    want[order] = 1.0 - np.arange(len(x)) / len(x)
    got = diversity.density_weight(x, ids, n_neighbors, metric)
    np.testing.assert_allclose(got, want, rtol=0, atol=0)
    assert (got > 0).all() and len(np.unique(got)) == len(x)


def _brute_outlier_ratio(x, metric, n):
    """Each row's local outlier factor from the full matrix: its mean distance to its n nearest rows over
    the mean of theirs (neighbours sorted by distance, ties by row, the first of the n + 1 nearest, the
    row or a copy of it, left out); 1 where both are 0, infinite where only theirs is."""
    d = _full_distances(x, metric).astype(np.float64)
    near = [np.lexsort((np.arange(len(x)), row))[1 : n + 1] for row in d]
    spread = np.array([d[i, near[i]].mean() for i in range(len(x))])
    around = np.array([spread[near[i]].mean() for i in range(len(x))])
    return np.array([1.0 if s == a == 0 else (np.inf if a == 0 else s / a) for s, a in zip(spread, around)])


@pytest.mark.parametrize("metric", ["wasserstein", "cosine", "l2"])
@pytest.mark.parametrize("n_neighbors", [1, 4, 30])
def test_lof_weight_equals_brute_force(metric, n_neighbors):
    """1 - rank/m by the local outlier factor from the full matrix: a row's mean distance to its n
    nearest rows over the mean of theirs (neighbours sorted by distance, ties by row, the first of
    the n + 1 nearest, the row or a copy of it, left out), lowest first, ties by sample id."""
    x = _feats(30, 4, metric)
    x[10:16] = x[3]  # six copies of row 3: spreads of 0 and neighbours at distance 0
    ids = np.array([f"s{(7 * i) % 30:03d}" for i in range(len(x))])
    ratio = _brute_outlier_ratio(x, metric, min(n_neighbors, len(x) - 1))
    order = np.lexsort((ids, ratio))
    want = np.empty(len(x))
    want[order] = 1.0 - np.arange(len(x)) / len(x)
    nbr, dist = diversity.knn_graph(x, n_neighbors, metric)
    got = diversity.lof_weight(diversity.mean_spread(dist), nbr, ids)
    np.testing.assert_allclose(got, want, rtol=0, atol=0)
    assert (got > 0).all() and len(np.unique(got)) == len(x)


@pytest.mark.parametrize("metric", ["wasserstein", "cosine", "l2"])
@pytest.mark.parametrize("z_cut", [0.5, 2.0, 3.5])
def test_lof_cut_weight_equals_brute_force(metric, z_cut):
    """1, or LOF_CUT_WEIGHT where the log outlier factor (from the full matrix, as in the lof test) lies
    more than z_cut robust standard deviations (1.4826 MAD) above its median over all rows; a copy
    among copies (spread 0) is never held back, a row whose neighbours all have spread 0 always is."""
    x = _feats(40, 4, metric)
    x[10:16] = x[3]  # six copies of row 3: spreads of 0
    x[30] = x[30] * 0.1 + 3.0  # a stray row
    n = 4
    ratio = _brute_outlier_ratio(x, metric, n)
    finite = (ratio > 0) & np.isfinite(ratio)  # where the log is finite
    logr = np.log(ratio[finite])
    med = np.median(logr)
    z = np.full(len(x), np.nan)
    z[finite] = (logr - med) / (1.4826 * np.median(np.abs(logr - med)))
    held = (z > z_cut) | np.isposinf(ratio)
    nbr, dist = diversity.knn_graph(x, n, metric)
    got = diversity.lof_cut_weight(diversity.mean_spread(dist), nbr, z_cut)
    np.testing.assert_array_equal(got, np.where(held, diversity.LOF_CUT_WEIGHT, 1.0))
    assert not held[[3, *range(10, 16)]].any()  # copies are never held back
    if z_cut < 3.5:
        assert held.any() and not held.all()


def test_lof_cut_holds_back_the_stray_point_only():
    """The two clusters of the next test (one 50 times as wide) and one point off the dense one: the cut
    holds back the stray point and nothing of either cluster."""
    rng = np.random.default_rng(2)
    dense, wide = rng.normal(0, 0.01, (40, 2)), rng.normal(0, 0.5, (40, 2)) + 20
    x = np.vstack([dense, wide, [[0.3, 0.3]]]).astype(np.float32)
    nbr, dist = diversity.knn_graph(x, 5, "l2")
    weight = diversity.lof_cut_weight(diversity.mean_spread(dist), nbr, 3.5)
    assert np.flatnonzero(weight < 1).tolist() == [80]


@pytest.mark.parametrize("share", [0.0, 0.05, 0.3, 0.99])
@pytest.mark.parametrize("with_weight", [False, True])
def test_quality_hold_back_equals_brute_force(share, with_weight):
    """The floor(share * m) lowest candidates by quality, ties to the later sample_id, weigh LOF_CUT_WEIGHT;
    every other candidate keeps its weight (1 without one); the weight given is not changed."""
    rng = np.random.default_rng(4)
    m = 41
    quality = rng.integers(0, 6, m).astype(float)  # many ties
    ids = np.array([f"s{i:02d}" for i in rng.permutation(m)], dtype=object)
    weight = rng.uniform(0.5, 1.0, m) if with_weight else None
    given = None if weight is None else weight.copy()
    order = sorted(range(m), key=lambda i: (-quality[i], ids[i]))  # best first, ties by sample_id
    held = set(order[m - int(share * m + 1e-9) :]) if int(share * m + 1e-9) else set()
    want = np.array(
        [diversity.LOF_CUT_WEIGHT if i in held else (1.0 if weight is None else weight[i]) for i in range(m)]
    )
    got = diversity.quality_hold_back(weight, quality, ids, share)
    np.testing.assert_array_equal(got, want)
    assert len(held) == {0.0: 0, 0.05: 2, 0.3: 12, 0.99: 40}[share]
    if given is not None:
        np.testing.assert_array_equal(weight, given)


@pytest.mark.parametrize("share", [0.0, 0.1, 0.5])
@pytest.mark.parametrize("with_weight", [False, True])
def test_relevance_hold_back_equals_brute_force(share, with_weight):
    """The floor(share * m) candidates with the largest mean place (quality and coverage, each ranked within
    the candidate's dataset, best first, ties by sample_id, over the dataset's size), ties to the earlier
    sample_id, weigh LOF_CUT_WEIGHT; the rest keep their weight."""
    rng = np.random.default_rng(6)
    m = 30
    quality = rng.integers(0, 4, m).astype(float)  # ties
    coverage = rng.integers(0, 3, m) / 2
    dataset = np.array(["a"] * 20 + ["b"] * 10, dtype=object)[rng.permutation(m)]
    ids = np.array([f"s{i:02d}" for i in rng.permutation(m)], dtype=object)
    weight = rng.uniform(0.5, 1.0, m) if with_weight else None

    def place(values, i):
        group = [j for j in range(m) if dataset[j] == dataset[i]]
        order = sorted(group, key=lambda j: (-values[j], ids[j]))
        return order.index(i) / len(group)

    mean = [(place(quality, i) + place(coverage, i)) / 2 for i in range(m)]
    held = set(sorted(range(m), key=lambda i: (-mean[i], ids[i]))[: int(share * m + 1e-9)])
    want = [diversity.LOF_CUT_WEIGHT if i in held else (1.0 if weight is None else weight[i]) for i in range(m)]
    got = diversity.relevance_hold_back(weight, quality, coverage, dataset, ids, share)
    np.testing.assert_array_equal(got, np.array(want))
    assert len(held) == {0.0: 0, 0.1: 3, 0.5: 15}[share]


def test_boilerplate_hold_back_equals_brute_force():
    """Candidates whose boilerplate share lies beyond z_cut robust deviations above their dataset's median
    (MAD, or mean absolute deviation where the MAD is 0) weigh LOF_CUT_WEIGHT; a dataset of templated
    answers (most share their sentences) holds none back; weights given are kept elsewhere."""
    rng = np.random.default_rng(8)
    share_a = np.concatenate([np.zeros(50), rng.uniform(0, 0.2, 20), [1.0, 1.0, 0.9, 0.5]])  # unique answers
    share_b = np.concatenate([np.ones(40), rng.uniform(0.5, 1.0, 15), np.zeros(5)])  # templated labels
    share = np.concatenate([share_a, share_b])
    dataset = np.array(["a"] * len(share_a) + ["b"] * len(share_b), dtype=object)
    weight = rng.uniform(0.5, 1.0, len(share))

    def z(values, x):
        center = np.median(values)
        mad = np.median(np.abs(values - center))
        scale = 1.4826 * mad if mad > 0 else math.sqrt(math.pi / 2) * np.mean(np.abs(values - center))
        return (x - center) / scale

    want = weight.copy()
    for g, values in (("a", share_a), ("b", share_b)):
        rows = np.flatnonzero(dataset == g)
        want[rows[z(values, values) > 3.5]] = diversity.LOF_CUT_WEIGHT
    got = diversity.boilerplate_hold_back(weight, share, dataset, 3.5)
    np.testing.assert_array_equal(got, want)
    held = got == diversity.LOF_CUT_WEIGHT
    assert held[: len(share_a)].sum() >= 3 and not held[len(share_a) :].any()
    assert (diversity.boilerplate_hold_back(None, share, dataset, 3.5) < 1).sum() == held.sum()


def test_quality_hold_back_keeps_fps_off_the_held_back_while_others_are_left():
    """Plain FPS goes to the far point first; held back (the lowest quality), it is picked only after every
    other candidate, and the picks before it are plain FPS's over the rest."""
    from selectflow.select.fps import fps_streaming

    rng = np.random.default_rng(3)
    x = np.vstack([rng.normal(0, 0.1, (12, 2)), [[9.0, 9.0]]]).astype(np.float32)
    quality = np.linspace(1.0, 0.0, len(x))  # the far point is the lowest
    ids = np.array([f"s{i:02d}" for i in range(len(x))], dtype=object)
    run = dict(metric="l2", device="cpu", log_interval=100)
    assert fps_streaming(x, 3, **run).picks[1] == 12  # plain FPS: the far point comes second
    weight = diversity.quality_hold_back(None, quality, ids, 1 / len(x))
    held = fps_streaming(x, len(x), weight=weight, **run).picks
    assert held[-1] == 12
    np.testing.assert_array_equal(held[:-1], fps_streaming(x[:-1], len(x) - 1, **run).picks)


def test_lof_spares_a_sparse_region_that_density_holds_back():
    """Two clusters, one 50 times as wide, and one point off the dense one: density weights put the
    whole wide cluster below the dense one; the outlier factor ranks only the stray point last."""
    rng = np.random.default_rng(2)
    dense, wide = rng.normal(0, 0.01, (40, 2)), rng.normal(0, 0.5, (40, 2)) + 20
    x = np.vstack([dense, wide, [[0.3, 0.3]]]).astype(np.float32)
    ids = np.array([f"s{i:02d}" for i in range(len(x))])
    nbr, dist = diversity.knn_graph(x, 5, "l2")
    lof = diversity.lof_weight(diversity.mean_spread(dist), nbr, ids)
    density = diversity.density_weight(x, ids, 5, "l2")
    assert lof.argmin() == 80
    assert density[40:80].max() < density[:40].min()  # density: every wide point below every dense one
    assert np.median(lof[40:80]) > np.quantile(lof[:40], 0.25)  # the outlier factor: no such split


@pytest.mark.parametrize("rows", [(0, 30), (0, 1), (7, 19), (29, 30), (12, 12)])
def test_knn_graph_of_some_rows_is_those_rows_of_the_whole_graph(rows):
    """What each rank of the distributed FPS computes for the density weights: its own rows, against
    all rows, in blocks that start at its first row (chunk 4: blocks not aligned to the whole graph's)."""
    x = _feats(30, 6)
    x[20:23] = x[9]  # ties at the k-th neighbour
    nbr, dist = diversity.knn_graph(x, 5, "wasserstein", chunk=4)
    part_nbr, part_dist = diversity.knn_graph(x, 5, "wasserstein", chunk=4, rows=rows)
    np.testing.assert_array_equal(part_nbr, nbr[rows[0] : rows[1]])
    np.testing.assert_array_equal(part_dist, dist[rows[0] : rows[1]])
    spread = diversity.neighbour_spread(x, 5, "wasserstein", rows=rows)
    np.testing.assert_array_equal(spread, diversity.neighbour_spread(x, 5, "wasserstein")[rows[0] : rows[1]])


@pytest.mark.parametrize("metric", ["wasserstein", "cosine", "l2"])
@pytest.mark.parametrize("rows", [None, (0, 1), (130, 415)])
def test_approximate_graph_searching_every_list_is_the_exact_graph(metric, rows):
    """selection.knn_exact_max below m: with knn_probes at least the number of lists the inverted-list
    search is exhaustive, so the graph must be the exact one, indices and distances."""
    x = _feats(600, 11, metric)
    exact = diversity.knn_graph(x, 9, metric, chunk=64, rows=rows)
    approx = diversity.knn_graph(x, 9, metric, rows=rows, probes=10**6)
    np.testing.assert_array_equal(approx[0], exact[0])
    np.testing.assert_array_equal(approx[1], exact[1])


def _clusters(n, seed):
    """Routing of n samples drawn around 40 centres: the structure an inverted-list index relies on."""
    rng = np.random.default_rng(seed)
    centres = rng.dirichlet(np.ones(8) * 0.5, size=(40, 4))
    probs = 0.5 * centres[rng.integers(0, 40, n)] + 0.5 * rng.dirichlet(np.ones(8) * 0.5, size=(n, 4))
    return distance.features(probs.astype(np.float32), "wasserstein")


def test_approximate_graph_finds_most_neighbours_at_their_exact_distances(caplog):
    import logging

    import faiss

    x = _clusters(3000, 12)
    d = _full_distances(x, "wasserstein")
    ref = np.array([np.lexsort((np.arange(len(x)), row))[:11] for row in d])
    with caplog.at_level(logging.INFO, logger="selectflow.select.diversity"):
        nbr, dist = diversity.knn_graph(x, 10, "wasserstein", probes=4)  # 4 of 55 lists
    recall = np.mean([len(set(a) & set(b)) / 11 for a, b in zip(nbr, ref)])
    assert 0.8 < recall < 1.0, recall  # approximate, and near (0.85 here)
    # the log tells the user the recall on a sample of rows, measured against their exact neighbours
    check = diversity.check_rows(0, len(x))
    assert len(check) == diversity.IVF_CHECK_ROWS and len(set(check.tolist())) == len(check)
    sampled = np.mean([len(set(nbr[r]) & set(ref[r])) / 11 for r in check])
    want = f"approximate 10-NN graph: recall {sampled:.3f} against the exact neighbours of 256 sampled rows"
    assert any(m.startswith(want) for m in caplog.messages), (want, caplog.messages)
    np.testing.assert_array_equal(dist, np.take_along_axis(d, nbr, 1))  # each found neighbour's exact distance
    assert (nbr[:, 0] == np.arange(len(x))).all() and (dist[:, 0] == 0).all()
    assert (np.diff(dist, axis=1) >= 0).all() and all(len(set(row)) == 11 for row in nbr)
    threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)  # the same graph on any thread count, and each rank's rows the same
    try:
        part = diversity.knn_graph(x, 10, "wasserstein", probes=4, rows=(1000, 1700))
    finally:
        faiss.omp_set_num_threads(threads)
    np.testing.assert_array_equal(part[0], nbr[1000:1700])
    np.testing.assert_array_equal(part[1], dist[1000:1700])


@pytest.mark.parametrize("metric", ["wasserstein", "cosine", "l2"])
def test_exact_rows_of_any_rows_are_their_exact_neighbours(metric, monkeypatch):
    # what the approximate graph's short rows and its recall check use: any rows, ties by index, and
    # (a small KNN_BLOCK) the distances and the converted features taken a few at a time
    x = np.repeat(_feats(100, 15, metric), 2, axis=0)  # every row has a copy: ties at distance 0
    monkeypatch.setattr(diversity, "KNN_BLOCK", 700)
    rows = np.array([199, 0, 57, 58, 120])
    nbr, dist = diversity.exact_rows(x, rows, 6, metric)
    d = _full_distances(x, metric)
    ref = np.array([np.lexsort((np.arange(len(x)), d[r]))[:6] for r in rows])
    np.testing.assert_array_equal(nbr, ref)
    np.testing.assert_array_equal(dist, np.take_along_axis(d[rows], ref, 1))


def test_approximate_graph_computes_a_row_exactly_when_its_lists_hold_too_few_rows(caplog):
    import logging

    x = _clusters(400, 13)  # 10 lists of about 40 rows: some hold 41 rows, some do not
    d = _full_distances(x, "wasserstein")
    with caplog.at_level(logging.INFO, logger="selectflow.select.diversity"):
        nbr, dist = diversity.knn_graph(x, 40, "wasserstein", probes=1)
    assert any("computed exactly" in m for m in caplog.messages), caplog.messages
    assert (nbr >= 0).all() and all(len(set(row)) == 41 for row in nbr)
    np.testing.assert_array_equal(dist, np.take_along_axis(d, nbr, 1))
    ref = np.array([np.lexsort((np.arange(len(x)), row))[:41] for row in d])
    assert 0 < (nbr == ref).all(1).sum() < len(x)  # the short rows exact, others approximate


def test_facility_location_on_the_approximate_graph():
    x = _feats(500, 14)
    quality, ids = np.linspace(1, 0, len(x)), np.array([f"s{i:04d}" for i in range(len(x))])
    kw = dict(metric="wasserstein", n_neighbors=6, n_clusters=5)
    exact = diversity.select("facility_location", x, quality, ids, 30, **kw)
    np.testing.assert_array_equal(diversity.select("facility_location", x, quality, ids, 30, probes=100, **kw), exact)
    approx = diversity.select("facility_location", x, quality, ids, 30, probes=1, **kw)
    assert len(set(approx.tolist())) == 30 and not np.array_equal(approx, exact)


def test_density_weight_ranks_an_outlier_last_and_weighted_fps_passes_it_by():
    from selectflow.select.fps import fps_streaming

    rng = np.random.default_rng(1)
    x = np.vstack([rng.normal(0, 1, (40, 3)), [[9.0, 9.0, 9.0]]]).astype(np.float32)
    ids = np.array([f"s{i:02d}" for i in range(len(x))])
    w = diversity.density_weight(x, ids, 5, "l2")
    assert w.argmin() == 40 and w[40] == pytest.approx(1.0 / len(x))
    assert 40 in fps_streaming(x, 3, metric="l2", device="cpu", log_interval=100).picks.tolist()
    # weighted, it needs 1/weight (41 x) the distance of the dense points: it waits until their
    # weighted distances have shrunk below its own
    weighted = fps_streaming(x, 8, metric="l2", device="cpu", log_interval=100, weight=w)
    assert 40 not in weighted.picks.tolist()


def test_kmeans_round_robin_is_compares_kmeans_baseline():
    x = _feats(300, 3)
    rng = np.random.default_rng(3)
    quality, ids = rng.normal(size=len(x)), np.array([f"s{i:04d}" for i in range(len(x))])
    picks = diversity.kmeans_round_robin(x, quality, ids, 30, 8, seed=4)
    labels = baselines.kmeans_labels(x, 8, 4)
    ref = baselines.select("kmeans", x, quality, ids, 30, seed=4, labels=labels, eps=0.0, metric="wasserstein")
    np.testing.assert_array_equal(picks, ref)
    # round 0 is every cluster's best member
    best = {c: min((i for i in range(len(x)) if labels[i] == c), key=lambda i: (-quality[i], ids[i])) for c in range(8)}
    assert set(picks[:8].tolist()) == set(best.values())
    np.testing.assert_array_equal(picks, diversity.kmeans_round_robin(x, quality, ids, 30, 8, seed=4))


def test_kmeans_round_robin_keeps_strata_quotas():
    x = _feats(200, 6)
    quality, ids = np.linspace(1, 0, len(x)), np.array([f"s{i:04d}" for i in range(len(x))])
    strata = np.arange(len(x)) % 3
    quota = np.array([2, 10, 3])
    picks = diversity.kmeans_round_robin(x, quality, ids, 15, 6, strata=strata, quota=quota)
    order = baselines.round_robin(baselines.kmeans_labels(x, 6, 0), quality, ids, len(x))
    left, ref = quota.copy(), []
    for j in order:
        if left[strata[j]]:
            ref.append(j)
            left[strata[j]] -= 1
    np.testing.assert_array_equal(picks, ref)


def test_select_is_seeded_and_rejects_unknown_methods():
    x = _feats(150, 7)
    quality, ids = np.linspace(1, 0, len(x)), np.array([f"s{i:04d}" for i in range(len(x))])
    kw = dict(metric="wasserstein", n_neighbors=5, n_clusters=5, seed=0)
    for method in ("facility_location", "kmeans", "stratified"):
        a = diversity.select(method, x, quality, ids, 12, **kw)
        np.testing.assert_array_equal(a, diversity.select(method, x, quality, ids, 12, **kw))
        assert len(set(a.tolist())) == 12
    with pytest.raises(SelectFlowError, match="selection.diversity"):
        diversity.select("fpsx", x, quality, ids, 12, **kw)
    with pytest.raises(SelectFlowError, match="k must be"):
        diversity.select("kmeans", x, quality, ids, 151, **kw)
    with pytest.raises(SelectFlowError, match="strata_seed"):
        diversity.select("stratified", x, quality, ids, 12, **{**kw, "seed": None})


@pytest.mark.parametrize("method", ["facility_location", "kmeans", "stratified"])
def test_run_fps_writes_the_methods_picks(tmp_path, method):
    import h5py

    from selectflow.stages.select import run_fps

    x = _feats(120, 8)
    ids = np.array([f"s{i:04d}" for i in range(len(x))])
    quality = np.linspace(2, 1, len(x))
    h5 = tmp_path / "candidates.h5"
    with h5py.File(h5, "w") as f:
        f.create_dataset("sample_id", data=ids.astype(object), dtype=h5py.string_dtype())
        f.create_dataset("quality", data=quality)
        f.create_dataset("features", data=x)
        f.attrs.update(
            {
                "metric": "wasserstein",
                "n_pool": 120,
                "n_kept": 120,
                "k": 10,
                "stage": "fps",
                "quality_method": "ifd",
                "n_duplicates": 0,
                "layout_version": 1,
                "complete": True,
            }
        )
    # stratified reads the hold-backs: none here (this file has no records' measures; test_select runs them)
    off = dict(fps_weight="none", fps_quality_hold_back=0, fps_boilerplate_cut_z=None) if method == "stratified" else {}
    sel = selection_section(diversity=method, diversity_neighbors=6, diversity_clusters=4, device="cpu", **off)
    assert run_fps(h5, tmp_path / "curve.tsv", sel) == 10
    curve = pd.read_csv(tmp_path / "curve.tsv", sep="\t")
    ref = diversity.select(method, x, quality, ids, 10, metric="wasserstein", n_neighbors=6, n_clusters=4, seed=0)
    np.testing.assert_array_equal(curve["candidate_index"], ref)
    assert curve["sample_id"].tolist() == ids[ref].tolist()


def _stratified_reference(m, k, seed, strata, quota, held):
    """Brute force: each stratum's quota from its candidates in key order, the held-back ones after the rest."""
    key = np.random.default_rng(seed).random(m)
    strata = np.zeros(m, dtype=np.int64) if strata is None else strata
    quota = np.array([k]) if quota is None else quota
    picks = []
    for c in range(len(quota)):
        members = [j for j in range(m) if strata[j] == c]
        members.sort(key=lambda j: (held[j], key[j]))
        picks += members[: quota[c]]
    return sorted(picks)


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("with_strata", [False, True])
def test_stratified_equals_brute_force(seed, with_strata):
    rng = np.random.default_rng(seed)
    m = int(rng.integers(20, 80))
    k = int(rng.integers(1, m // 2))
    strata = quota = None
    if with_strata:
        strata = rng.integers(0, 5, size=m)
        size = np.bincount(strata, minlength=5)
        quota = np.zeros(5, dtype=np.int64)
        for _ in range(k):  # k picks spread over strata that still have room
            quota[rng.choice(np.flatnonzero(quota < size))] += 1
    weight = np.where(rng.random(m) < 0.4, diversity.LOF_CUT_WEIGHT, 1.0)
    picks = diversity.stratified(m, k, seed + 10, strata, quota, weight)
    assert len(picks) == k == len(set(picks.tolist()))
    assert sorted(picks.tolist()) == _stratified_reference(m, k, seed + 10, strata, quota, weight < 1)
    if with_strata:
        np.testing.assert_array_equal(np.bincount(strata[picks], minlength=5), quota)
    # another seed draws otherwise; no weight holds nothing back
    assert (
        sorted(picks.tolist()) != sorted(diversity.stratified(m, k, seed + 11, strata, quota, weight).tolist())
        or k == m
    )
    assert sorted(diversity.stratified(m, k, 3, strata, quota).tolist()) == _stratified_reference(
        m, k, 3, strata, quota, np.zeros(m, dtype=bool)
    )


def test_stratified_draws_a_held_back_candidate_only_where_its_stratum_has_nothing_else():
    strata = np.array([0] * 6 + [1] * 3)
    quota = np.array([3, 3])
    weight = np.ones(9)
    weight[[0, 1, 2, 6]] = diversity.LOF_CUT_WEIGHT  # stratum 0: 3 of 6 held back; stratum 1: 1 of 3
    for seed in range(20):
        picks = set(diversity.stratified(9, 6, seed, strata, quota, weight).tolist())
        assert picks == {3, 4, 5, 6, 7, 8}  # stratum 0 has 3 others; stratum 1 needs its held-back one
