"""Selection toward a target (selectflow.select.target) against a brute-force round-robin over the full matrix."""

import numpy as np
import pytest

from selectflow.runtime.errors import SelectFlowError
from selectflow.select import distance, target


def _feats(n, seed, metric, L=2, E=4):
    rng = np.random.default_rng(seed)
    probs = rng.dirichlet(np.ones(E) * 0.5, size=(n, L)).astype(np.float32)
    return distance.features(probs, metric)


def _reference_distances(t, c, metric):
    """The full T×n matrix in numpy float64 (exact on the grid), rounded once to float32 as the library does."""
    t, c = t.astype(np.float64), c.astype(np.float64)
    if metric == "wasserstein":
        d = np.abs(t[:, None, :] - c[None, :, :]).sum(-1)
    else:
        d = np.maximum(0.0, 1.0 - t @ c.T)
    return d.astype(np.float32)


def _reference(t, c, k, metric):
    """RDS+ round-robin: each target in turn takes its nearest unpicked candidate (ties: lower index)."""
    d = _reference_distances(t, c, metric)
    ranked = [np.argsort(row, kind="stable") for row in d]
    picked, picks = set(), []
    while len(picks) < k:
        for row in ranked:
            if len(picks) == k:
                break
            j = next(int(j) for j in row if j not in picked)
            picked.add(j)
            picks.append(j)
    return np.array(picks)


@pytest.mark.parametrize("metric", ["wasserstein", "cosine"])
@pytest.mark.parametrize("n_targets,k,slack", [(7, 50, 8), (7, 50, 0), (40, 25, 2), (3, 120, 0), (1, 120, 1)])
def test_round_robin_matches_the_full_matrix_reference(metric, n_targets, k, slack):
    cands = _feats(120, 1, metric)
    cands[60:70] = cands[0:10]  # exact ties: the lower index (higher quality) must win
    targets = _feats(n_targets, 2, metric)
    want = _reference(targets, cands, k, metric)
    for chunk, block in ((1024, target.BLOCK), (16, 64), (7, 7)):
        got = target.toward_target(targets, cands, k, metric, slack=slack, chunk=chunk, block=block)
        np.testing.assert_array_equal(got, want, err_msg=f"chunk {chunk}, block {block}")
    assert len(set(want.tolist())) == k


def test_crowded_targets_refill_their_lists():
    """Targets that all sit on one candidate exhaust their short lists at once; refills keep the reference order."""
    cands = _feats(200, 3, "wasserstein")
    targets = np.repeat(cands[5:6], 6, axis=0)
    got = target.toward_target(targets, cands, 150, "wasserstein", slack=0, chunk=32, block=64)
    np.testing.assert_array_equal(got, _reference(targets, cands, 150, "wasserstein"))
    assert got[0] == 5  # the candidate the targets are equal to comes first


def test_nearest_excludes_and_orders_by_distance_then_index():
    cands = _feats(50, 4, "wasserstein")
    cands[30] = cands[3]
    import torch

    t = torch.as_tensor(cands[[3]])
    excluded = np.zeros(50, dtype=bool)
    excluded[[10, 11]] = True
    got = target.nearest(t, torch.as_tensor(cands), 60, "wasserstein", excluded=excluded, chunk=8, block=8)[0]
    d = _reference_distances(cands[[3]], cands, "wasserstein")[0]
    d[excluded] = np.inf
    np.testing.assert_array_equal(got, np.argsort(d, kind="stable")[:48])
    assert got[:2].tolist() == [3, 30]


def test_bad_inputs_are_errors():
    cands = _feats(10, 5, "wasserstein")
    with pytest.raises(SelectFlowError, match="no target records"):
        target.toward_target(cands[:0], cands, 3, "wasserstein")
    with pytest.raises(SelectFlowError, match="cannot select 11 of 10"):
        target.toward_target(cands[:2], cands, 11, "wasserstein")


# --- the compare's target set: never a test record -------------------------------------------------


def _cmp(compare=None):
    """The compare section of a config with ``compare`` over the schema's defaults, methods fps and target."""
    from selectflow.config import build_config
    from selectflow.schema import schema, with_defaults

    raw = {
        "datasets": {"a": "a.jsonl"},
        "model": {"path": "m"},
        "compare": {"methods": ["fps", "target"], "eval": "demo", **(compare or {})},
    }
    return build_config(with_defaults(raw, schema())).compare


def test_demo_target_set_shares_no_record_with_the_test_set_or_the_pool(tmp_path, demo_pool):
    from selectflow.data.records import iter_jsonl, read_dataset
    from selectflow.report.yardstick import _text_key
    from selectflow.stages.compare import write_target_set, write_testset

    cmp = _cmp({"test_per_kind": 4})
    test, dev = tmp_path / "test.jsonl", tmp_path / "dev.jsonl"
    write_testset({"demo": demo_pool}, test, cmp)
    n = write_target_set(dev, test, cmp, datasets={"demo": demo_pool})
    test_keys = {_text_key(r) for _, r in iter_jsonl(test)}
    dev_keys = {_text_key(r) for _, r in iter_jsonl(dev)}
    pool_keys = {_text_key(r) for r in read_dataset(demo_pool, "demo")}
    assert n == len(dev_keys) == len(test_keys) > 0  # as many as the test set, no two alike
    assert not dev_keys & test_keys and not dev_keys & pool_keys
    assert len(read_dataset(dev, "target")) == n  # a format the pool accepts


def test_heldout_target_slice_is_disjoint_from_the_test_slice(tmp_path):
    from selectflow.data.records import iter_jsonl
    from selectflow.report.yardstick import _kept_ids, _text_key
    from selectflow.stages.compare import draw_heldout, heldout_ids, write_target_set
    from selectflow.stages.select import build_candidates
    from tests.stages.test_select import make_pool, section, write_shards

    shards = write_shards(make_pool(), tmp_path / "router", seed=1)
    quality = tmp_path / "quality.tsv"
    build_candidates(shards, tmp_path / "c.h5", quality, section())
    cmp = _cmp({"eval": "heldout", "heldout_fraction": 0.2})
    test, dev = tmp_path / "heldout.jsonl", tmp_path / "dev.jsonl"
    draw_heldout(quality, shards, test, cmp)
    n = write_target_set(dev, test, cmp, quality_tsv=quality, router_paths=shards)
    kept = set(_kept_ids(quality))
    assert n == round(0.2 * len(kept)) and heldout_ids(dev) <= kept
    assert not heldout_ids(dev) & heldout_ids(test)
    assert not {_text_key(r) for _, r in iter_jsonl(dev)} & {_text_key(r) for _, r in iter_jsonl(test)}


def test_the_stage_picks_only_candidates_toward_the_targets_in_a_seeded_order(tmp_path):
    """run_fps with a target file: the reference round-robin over the candidates' features and the targets',
    visited in the stage's shuffle; samples dropped by the quality step are never picked."""
    import pandas as pd

    from selectflow.router.routerfile import RouterShard, write_router_shard
    from selectflow.select.candidates import read_candidates
    from selectflow.stages.select import TARGET_ORDER_SEED, build_candidates, run_fps
    from tests.stages.test_select import make_pool, section, write_shards

    pool = make_pool()
    shards = write_shards(pool, tmp_path / "router", seed=1)
    sel = section(selection_percentage=0.3, distance_batch_size=4)
    build_candidates(shards, tmp_path / "c.h5", tmp_path / "q.tsv", sel)
    near = ["alpaca:1", "chat:2", "NA:3", "alpaca:5", "chat:7"]
    probs = np.stack([pool[s]["probs"] for s in near])
    write_router_shard(
        tmp_path / "target.h5",
        RouterShard(
            sample_id=np.array([f"target:{i}" for i in range(5)], dtype=object),
            moe_probs=probs,
            nll_response=np.ones(5, np.float32),
            n_tokens=np.full(5, 9, np.int32),
            n_response_tokens=np.full(5, 4, np.int32),
        ),
    )
    assert run_fps(tmp_path / "c.h5", tmp_path / "curve.tsv", sel, target_h5=tmp_path / "target.h5") == 9
    curve = pd.read_csv(tmp_path / "curve.tsv", sep="\t")
    cands = read_candidates(tmp_path / "c.h5")
    feats = distance.features(np.stack([pool[s]["probs"] for s in cands.sample_id]), "wasserstein")
    order = np.random.default_rng(TARGET_ORDER_SEED).permutation(5)
    want = _reference(distance.features(probs, "wasserstein")[order], feats, 9, "wasserstein")
    np.testing.assert_array_equal(curve["candidate_index"], want)
    assert set(curve["sample_id"]) <= set(cands.sample_id)
    q = pd.read_csv(tmp_path / "q.tsv", sep="\t")
    assert not set(curve["sample_id"]) & set(q.loc[~q["candidate"], "sample_id"])
    sel_q = section(disable_diversity=True)
    build_candidates(shards, tmp_path / "cq.h5", tmp_path / "qq.tsv", sel_q)
    with pytest.raises(SelectFlowError, match="disable_diversity"):
        run_fps(tmp_path / "cq.h5", tmp_path / "curve.tsv", sel_q, target_h5=tmp_path / "target.h5")


def test_a_user_target_set_with_a_test_record_is_an_error(tmp_path):
    import json

    from selectflow.stages.compare import write_target_set

    test, dev = tmp_path / "test.jsonl", tmp_path / "dev.jsonl"
    rows = [{"instruction": f"q{i}", "input": "", "output": f"a{i}"} for i in range(4)]
    test.write_text("".join(json.dumps(r) + "\n" for r in rows[:2]))
    dev.write_text("".join(json.dumps(r) + "\n" for r in rows[1:]))
    cmp = _cmp({"eval": str(test), "target": str(dev)})
    with pytest.raises(SelectFlowError, match=r"compare.target .*1 records \(the first on line 1\)"):
        write_target_set(tmp_path / "out.jsonl", test, cmp)
    dev.write_text("".join(json.dumps(r) + "\n" for r in rows[2:]))
    assert write_target_set(tmp_path / "out.jsonl", test, cmp) == 2


def test_target_in_compare_methods_with_an_own_test_set_needs_compare_target():
    with pytest.raises(SelectFlowError, match="set compare.target"):
        _cmp({"eval": "dev.jsonl"})
    assert _cmp({"eval": "dev.jsonl", "target": "t.jsonl"}).target == "t.jsonl"


@pytest.mark.parametrize("key", ["selection", "compare"])
def test_a_missing_target_file_is_named_before_any_job(tmp_path, key):
    from selectflow.data.preflight import check_targets_exist

    config = {"selection": {"target": None}, "compare": {"target": None}}
    check_targets_exist(config)
    config[key]["target"] = str(tmp_path / "dev.jsonl")
    with pytest.raises(SelectFlowError, match=rf"{key}.target: file .*dev.jsonl does not exist"):
        check_targets_exist(config)
    (tmp_path / "dev.jsonl").write_text("{}\n")
    check_targets_exist(config)
