"""Routing strata: k-means, proportional allocation, and quota FPS against naive references; the
clustering and score_first's bisection bounded for large pools."""

import itertools
import json

import h5py
import numpy as np
import pandas as pd
import pytest

from selectflow.config import selection_section
from selectflow.router.routerfile import RouterShard, write_router_shard
from selectflow.runtime.errors import SelectFlowError
from selectflow.select import baselines, strata
from selectflow.select.fps import fps_matrix, fps_streaming
from selectflow.select.strata import allocate, kmeans, strata_labels
from selectflow.stages.select import build_candidates, run_fps
from tests.pool_reference import build_candidates_whole
from tests.select.test_fps import blocks, brute_fps, naive_matrix, with_ties


@pytest.mark.parametrize(
    "seed, start, quota", [(0, 0, [4, 2, 5]), (1, 7, [4, 2, 5]), (2, 0, [6, 0, 5]), (3, 1, [0, 6, 5])]
)
def test_quota_fps_equals_a_naive_reference_in_both_modes(tmp_path, seed, start, quota):
    # a stratum with quota 0 (allocate gives one to a stratum too small for a pick) gets no pick
    f = with_ties(45, seed, "wasserstein")
    strata = np.random.default_rng(seed).integers(0, 3, len(f))
    quota = np.array(quota)
    if quota[strata[start]] == 0:
        start = int(np.flatnonzero(quota[strata] > 0)[0])
    ref_picks, ref_at = brute_fps(naive_matrix(f, "wasserstein"), sum(quota), start, strata, quota)
    got = fps_streaming(
        f, 11, start=start, device="cpu", strata=strata, quota=quota, metric="wasserstein", log_interval=100
    )
    np.testing.assert_array_equal(got.picks, ref_picks)
    np.testing.assert_array_equal(got.min_distance, ref_at)
    assert np.bincount(strata[got.picks], minlength=3).tolist() == quota.tolist()
    got = fps_matrix(
        blocks(tmp_path, f, 8, "wasserstein"), 11, start=start, log_interval=10, strata=strata, quota=quota
    )
    np.testing.assert_array_equal(got.picks, ref_picks)


def test_quota_that_does_not_fit_is_rejected():
    f = with_ties(10, 0, "wasserstein")
    strata = np.array([0] * 8 + [1] * 2)
    with pytest.raises(SelectFlowError, match="quota"):
        fps_streaming(
            f, 5, device="cpu", strata=strata, quota=np.array([2, 3]), metric="wasserstein", log_interval=100
        )  # stratum 1 holds 2


def test_allocate_is_proportional_capped_and_exact():
    # 2.5, 2.5, 5: the remainder goes to the first of equal fractions
    assert allocate(10, np.array([1.0, 1.0, 2.0]), np.array([100, 100, 100])).tolist() == [3, 2, 5]
    out = allocate(10, np.array([8.0, 1.0, 1.0]), np.array([3, 100, 100]))
    assert out.tolist()[0] == 3 and out.sum() == 10 and abs(out[1] - out[2]) <= 1  # the cap's excess is shared
    rng = np.random.default_rng(0)
    for _ in range(50):
        w, cap = rng.uniform(0, 5, 7), rng.integers(0, 20, 7)
        total = int(rng.integers(0, 80))
        out = allocate(total, w, cap)
        assert out.sum() == min(total, cap.sum()) and (out <= cap).all() and (out >= 0).all()


def test_kmeans_finds_separated_groups_and_is_deterministic():
    rng = np.random.default_rng(3)
    centres = np.array([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    truth = rng.integers(0, 3, 300)
    x = (centres[truth] + rng.normal(scale=0.5, size=(300, 2))).astype(np.float32)
    a, b = kmeans(x, 3, seed=0, chunk=7), kmeans(x, 3, seed=0)
    np.testing.assert_array_equal(a, b)
    # the same partition as the truth, up to the names of the groups
    assert len({(t, g) for t, g in zip(truth, a)}) == 3
    assert kmeans(x, 1).tolist() == [0] * 300


def test_strata_keep_the_pool_shares_that_plain_fps_loses(tmp_path):
    """A dense region of 90 samples and a spread one of 30: FPS alone favours the spread one."""
    rng = np.random.default_rng(0)
    dense = np.tile([[0.9, 0.05, 0.03, 0.02]], (90, 2, 1)) + rng.uniform(0, 0.01, (90, 2, 4))
    spread = rng.dirichlet(np.ones(4), size=(30, 2))
    probs = np.concatenate([dense / dense.sum(-1, keepdims=True), spread]).astype(np.float32)
    n = len(probs)
    ids = [f"s{i:03d}" for i in range(n)]
    records = [
        json.dumps({"sample_id": s, "dataset": "d", "prompt": f"q {s}", "response": f"a {s}", "record": {}})
        for s in ids
    ]
    shard = RouterShard(
        sample_id=np.array(ids, dtype=object),
        moe_probs=probs,
        nll_response=np.ones(n, np.float32),
        n_tokens=np.full(n, 9, np.int32),
        n_response_tokens=np.full(n, 5, np.int32),
        record=np.array(records, dtype=object),
    )
    write_router_shard(tmp_path / "r.h5", shard)
    picked = {}
    for n_strata in (1, 2):
        sel = selection_section(
            quality_method="perplexity", selection_percentage=0.2, routing_strata=n_strata, device="cpu"
        )
        build_candidates([tmp_path / "r.h5"], tmp_path / "c.h5", tmp_path / "q.tsv", sel)
        run_fps(tmp_path / "c.h5", tmp_path / "curve.tsv", sel)
        curve = pd.read_csv(tmp_path / "curve.tsv", sep="\t")
        picked[n_strata] = sum(int(s[1:]) < 90 for s in curve["sample_id"])  # picks from the dense region
    assert picked[1] <= 6  # plain FPS: the spread 25 % of the pool takes most of the 24 picks
    assert picked[2] == 18  # strata: 90 / 120 of 24 picks


def _blobs(n, seed=3):
    rng = np.random.default_rng(seed)
    centres = np.array([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0], [10.0, 10.0]])
    truth = rng.integers(0, 4, n)
    return (centres[truth] + rng.normal(scale=0.5, size=(n, 2))).astype(np.float32)


def _streamed(x, shard=97):
    """strata_labels' two readers over ``x``, the second a shard of ``shard`` rows at a time; rows each read."""
    reads = []

    def features_of(at):
        reads.append(len(at))
        return x[at]

    def labels_of(label):
        return np.concatenate([label(x[lo : lo + shard]) for lo in range(0, len(x), shard)])

    return features_of, labels_of, reads


def test_strata_labels_of_a_small_pool_are_the_whole_pool_kmeans():
    x = _blobs(900)
    features_of, labels_of, reads = _streamed(x)
    np.testing.assert_array_equal(strata_labels(len(x), 4, features_of, labels_of), kmeans(x, 4, seed=0))
    assert reads == [900]  # 900 <= 4 x POINTS_PER_CENTROID: clustered whole


def test_strata_labels_of_a_large_pool_train_on_a_sample_and_assign_every_sample(monkeypatch):
    monkeypatch.setattr(strata, "POINTS_PER_CENTROID", 25)  # 4 strata: a sample of 100 of 3,000
    x = _blobs(3000)
    features_of, labels_of, reads = _streamed(x)
    got = strata_labels(len(x), 4, features_of, labels_of)
    assert reads == [100]  # only the sample's features were read at once
    # separated groups: the sampled centres give the same partition, numbered alike, as k-means on every row
    np.testing.assert_array_equal(got, kmeans(x, 4, seed=0))
    np.testing.assert_array_equal(got, strata_labels(len(x), 4, *_streamed(x, shard=1000)[:2]))


def test_strata_of_a_streamed_pool_hold_a_sample_of_the_kept_features(tmp_path, monkeypatch):
    """With strata the scan holds the sampled features and one shard more than without, not every kept sample's."""
    import tracemalloc

    rng = np.random.default_rng(1)
    n, size, L, E = 6000, 500, 16, 64
    paths = []
    for k in range(n // size):
        ids = [f"s{i:05d}" for i in range(k * size, (k + 1) * size)]
        probs = rng.dirichlet(np.full(E, 0.3), size=(size, L)).astype(np.float32)
        records = [
            json.dumps({"sample_id": s, "dataset": "d", "prompt": f"q {s}", "response": f"a {s}", "record": {}})
            for s in ids
        ]
        write_router_shard(
            tmp_path / f"shard_{k:05d}.h5",
            RouterShard(
                sample_id=np.array(ids, dtype=object),
                moe_probs=probs,
                nll_response=rng.uniform(1, 2, size).astype(np.float32),
                n_tokens=np.full(size, 9, np.int32),
                n_response_tokens=np.full(size, 5, np.int32),
                record=np.array(records, dtype=object),
            ),
        )
        paths.append(tmp_path / f"shard_{k:05d}.h5")
    monkeypatch.setattr(strata, "POINTS_PER_CENTROID", 50)  # 4 strata: k-means on 200 samples
    peak, labels = {}, {}
    for n_strata in (1, 4):
        sel = selection_section(
            quality_method="perplexity",
            selection_percentage=0.01,
            importance_selection_percentage=0.02,
            routing_strata=n_strata,
            device="cpu",
        )
        tracemalloc.start()
        build_candidates(paths, tmp_path / f"c{n_strata}.h5", tmp_path / f"q{n_strata}.tsv", sel)
        peak[n_strata] = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        whole = tmp_path / f"c{n_strata}_whole.h5"
        build_candidates_whole(paths, whole, tmp_path / f"q{n_strata}_whole.tsv", sel)
        with h5py.File(tmp_path / f"c{n_strata}.h5") as a, h5py.File(whole) as b:
            assert all(np.array_equal(a[name][()], b[name][()]) for name in a)  # the whole-pool reference agrees
            if n_strata > 1:
                labels = a["stratum"][()]
    # k-means over every kept sample held their features (24.6 MB); now the sample's (0.8 MB) and one
    # shard's moe_probs and features with their temporaries (a few times 2 MB)
    shard_bytes, sample_bytes = size * L * E * 4, 200 * L * E * 4
    assert peak[4] - peak[1] < 4 * shard_bytes + sample_bytes < n * L * E * 4 / 2, peak
    assert len(np.unique(labels)) == 4  # and there are 4 strata among the candidates


def test_baseline_kmeans_of_a_large_pool_trains_on_a_sample_and_finds_the_groups():
    x = _blobs(3000)  # 3,000 rows > 4 x POINTS_PER_CENTROID: FAISS trains on a seeded sample of 1,024
    truth = kmeans(x, 4, seed=0)  # the whole-pool k-means of the strata separates the four groups
    # FAISS starts from random rows: some seeds merge two groups, sampled or not (seed 1 does on all
    # 3,000 rows); seed 2 does not
    got = baselines.kmeans_labels(x, 4, seed=2)
    assert len({(t, g) for t, g in zip(truth, got)}) == 4  # the same partition
    np.testing.assert_array_equal(got, baselines.kmeans_labels(x, 4, seed=2, chunk=333))  # chunked assignment


def test_baseline_kmeans_reads_the_sample_faiss_draws_and_runs_on_a_dataset_on_disk(tmp_path):
    """Above the sample size the centres train on the rows FAISS's own subsampling would take: the same
    labels as FAISS given every row (the code before), from an array or from an HDF5 dataset."""
    import faiss

    x = np.random.default_rng(5).random((3000, 8), dtype=np.float32)  # > 4 x POINTS_PER_CENTROID rows
    km = faiss.Kmeans(8, 4, niter=20, seed=7, verbose=False, max_points_per_centroid=256, min_points_per_centroid=1)
    km.train(x)  # FAISS draws its sample of 1,024 rows itself
    whole = km.index.search(x, 1)[1][:, 0].astype(np.int64)
    assert len(np.unique(whole)) == 4
    np.testing.assert_array_equal(baselines.kmeans_labels(x, 4, seed=7), whole)
    with h5py.File(tmp_path / "x.h5", "w") as f:
        f.create_dataset("x", data=x)
        f.create_dataset("small", data=x[:900])  # at most the sample size: every row, as before
    with h5py.File(tmp_path / "x.h5") as f:
        np.testing.assert_array_equal(baselines.kmeans_labels(f["x"], 4, seed=7, chunk=700), whole)
        km.train(x[:900])
        np.testing.assert_array_equal(
            baselines.kmeans_labels(f["small"], 4, seed=7), km.index.search(x[:900], 1)[1][:, 0]
        )
        eps = baselines.pair_threshold(x, 0.05, 3, "l2")
        assert baselines.pair_threshold(f["x"], 0.05, 3, "l2") == eps > 0


def test_score_first_bisection_is_capped_for_large_pools_and_still_selects_k():
    rng = np.random.default_rng(5)
    feats = rng.dirichlet(np.ones(8), size=(300, 2)).reshape(300, 16).astype(np.float32)
    quality, ids = rng.normal(size=300), np.array([f"s{i:03d}" for i in range(300)], dtype=object)
    k = 20
    assert baselines.bisection_steps(k, 300) == baselines.BISECTION_STEPS  # small pools: unchanged
    budget = 15 * k * 300  # room for 14 halvings (and the final walk): fewer than 30
    assert baselines.bisection_steps(k, 300, budget) == 14
    assert baselines.bisection_steps(k, 10**9) == baselines.MIN_BISECTION_STEPS
    full, tau_full = baselines.score_first(feats, quality, ids, k, "l2")
    capped, tau = baselines.score_first(feats, quality, ids, k, "l2", budget=budget)
    d = np.linalg.norm(feats[:, None] - feats[None], axis=-1)
    assert len(capped) == k == len(set(capped.tolist()))
    assert all(d[i, j] > tau for i, j in itertools.combinations(capped, 2))
    # the capped bisection is the first 14 halvings of the full one: τ below the full τ, by less than the
    # bracket after 14 halvings of [-1, 2 × the largest distance from the best row]
    best = int(baselines.quality_order(quality, ids)[0])
    assert 0 <= tau_full - tau < (2 * d[best].max() + 1) / 2**14


def test_strata_weight_kept_shares_picks_by_kept_samples_pool_by_the_duplicates_too(tmp_path):
    """Region A: 30 samples each written 3 times (60 exact duplicates dropped); region B: 30 samples."""
    rng = np.random.default_rng(1)
    a = np.tile([[0.9, 0.05, 0.03, 0.02]], (90, 2, 1)) + rng.uniform(0, 0.01, (90, 2, 4))
    b = np.tile([[0.02, 0.03, 0.05, 0.9]], (30, 2, 1)) + rng.uniform(0, 0.01, (30, 2, 4))
    probs = np.concatenate([a / a.sum(-1, keepdims=True), b / b.sum(-1, keepdims=True)]).astype(np.float32)
    n = len(probs)
    ids = [f"s{i:03d}" for i in range(n)]
    text = [f"a{i % 30:03d}" if i < 90 else f"b{i:03d}" for i in range(n)]  # A's copies share a text
    records = [
        json.dumps({"sample_id": s, "dataset": "d", "prompt": f"q {t}", "response": f"r {t}", "record": {}})
        for s, t in zip(ids, text)
    ]
    shard = RouterShard(
        sample_id=np.array(ids, dtype=object),
        moe_probs=probs,
        nll_response=np.ones(n, np.float32),
        n_tokens=np.full(n, 9, np.int32),
        n_response_tokens=np.full(n, 5, np.int32),
        record=np.array(records, dtype=object),
    )
    write_router_shard(tmp_path / "r.h5", shard)
    from_a = {}
    for weight in ("pool", "kept"):
        sel = selection_section(
            quality_method="perplexity",
            selection_percentage=0.1,
            routing_strata=2,
            strata_weight=weight,
            near_duplicate_threshold=None,
            device="cpu",
        )
        build_candidates([tmp_path / "r.h5"], tmp_path / "c.h5", tmp_path / "q.tsv", sel)
        run_fps(tmp_path / "c.h5", tmp_path / "curve.tsv", sel)
        curve = pd.read_csv(tmp_path / "curve.tsv", sep="\t")
        assert len(curve) == 12  # 10 % of the pool of 120
        from_a[weight] = sum(int(s[1:]) < 90 for s in curve["sample_id"])
    assert from_a == {"pool": 9, "kept": 6}  # A stands for 90 of 120 pool samples, for 30 of 60 kept ones
