"""Routing strata: k-means, proportional allocation, and quota FPS against naive references."""

import json

import numpy as np
import pandas as pd
import pytest

from selectflow.config import selection_section
from selectflow.router.routerfile import RouterShard, write_router_shard
from selectflow.runtime.errors import SelectFlowError
from selectflow.select.fps import fps_matrix, fps_streaming
from selectflow.select.strata import allocate, kmeans
from selectflow.stages.select import build_candidates, run_fps
from tests.test_fps import blocks, brute_fps, naive_matrix, with_ties


@pytest.mark.parametrize("seed, start", [(0, 0), (1, 7)])
def test_quota_fps_equals_a_naive_reference_in_both_modes(tmp_path, seed, start):
    f = with_ties(45, seed, "wasserstein")
    strata = np.random.default_rng(seed).integers(0, 3, len(f))
    quota = np.array([4, 2, 5])
    ref_picks, ref_at = brute_fps(naive_matrix(f, "wasserstein"), sum(quota), start, strata, quota)
    got = fps_streaming(f, 11, start=start, device="cpu", strata=strata, quota=quota)
    np.testing.assert_array_equal(got.picks, ref_picks)
    np.testing.assert_array_equal(got.min_distance, ref_at)
    assert np.bincount(strata[got.picks], minlength=3).tolist() == quota.tolist()
    got = fps_matrix(blocks(tmp_path, f, 8, "wasserstein"), 11, start=start, strata=strata, quota=quota)
    np.testing.assert_array_equal(got.picks, ref_picks)


def test_quota_that_does_not_fit_is_rejected():
    f = with_ties(10, 0, "wasserstein")
    strata = np.array([0] * 8 + [1] * 2)
    with pytest.raises(SelectFlowError, match="quota"):
        fps_streaming(f, 5, device="cpu", strata=strata, quota=np.array([2, 3]))  # stratum 1 holds 2


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
    records = [json.dumps({"sample_id": s, "dataset": "d", "prompt": f"q {s}", "response": f"a {s}", "record": {}})
               for s in ids]
    shard = RouterShard(sample_id=np.array(ids, dtype=object), moe_probs=probs,
                        nll_response=np.ones(n, np.float32), n_tokens=np.full(n, 9, np.int32),
                        n_response_tokens=np.full(n, 5, np.int32), record=np.array(records, dtype=object))
    write_router_shard(tmp_path / "r.h5", shard)
    picked = {}
    for strata in (1, 2):
        sel = selection_section(quality_method="perplexity", selection_percentage=0.2, routing_strata=strata,
                                device="cpu")
        build_candidates([tmp_path / "r.h5"], tmp_path / "c.h5", tmp_path / "q.tsv", sel)
        run_fps(tmp_path / "c.h5", tmp_path / "curve.tsv", sel)
        curve = pd.read_csv(tmp_path / "curve.tsv", sep="\t")
        picked[strata] = sum(int(s[1:]) < 90 for s in curve["sample_id"])  # picks from the dense region
    assert picked[1] <= 6  # plain FPS: the spread 25 % of the pool takes most of the 24 picks
    assert picked[2] == 18  # strata: 90 / 120 of 24 picks
