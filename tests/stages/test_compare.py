"""The comparison stage: baseline selectors against brute-force references, held-out slice, config."""

import itertools
from dataclasses import replace

import h5py
import numpy as np
import pytest

from selectflow.runtime.errors import SelectFlowError
from selectflow.select import baselines, distance


def _pool(n=60, seed=0):
    rng = np.random.default_rng(seed)
    probs = rng.dirichlet(np.ones(4), size=(n, 2)).astype(np.float32)
    feats = distance.features(probs, "wasserstein")
    quality = np.round(rng.normal(size=n), 1)  # ties on purpose
    ids = np.array([f"s{i:03d}" for i in rng.permutation(n)], dtype=object)
    return feats, quality, ids


def _full(feats):
    """The brute-force n×n distance matrix (references only)."""
    import torch

    x = torch.from_numpy(feats)
    return distance.pairwise(x, x, "wasserstein").numpy().astype(np.float64)  # compared like the walk does


def _qorder(quality, ids):
    return sorted(range(len(quality)), key=lambda i: (-quality[i], ids[i]))


def test_random_and_quality_have_k_distinct_rows_and_are_seeded():
    feats, quality, ids = _pool()
    a, b = baselines.random_pick(60, 7, seed=3), baselines.random_pick(60, 7, seed=3)
    assert np.array_equal(a, b) and len(set(a)) == 7
    assert not np.array_equal(a, baselines.random_pick(60, 7, seed=4))
    assert list(baselines.quality_pick(quality, ids, 7)) == _qorder(quality, ids)[:7]


def test_round_robin_matches_a_brute_force_reference():
    feats, quality, ids = _pool()
    labels = np.random.default_rng(1).integers(0, 5, 60)
    labels[labels == 4] = 3  # uneven cluster sizes, one cluster empty
    order = _qorder(quality, ids)
    # reference: clusters by their best member; each round every cluster's next best
    queues = {}
    for i in order:
        queues.setdefault(labels[i], []).append(i)
    expect = []
    while any(queues.values()):
        for c in list(queues):
            if queues[c]:
                expect.append(queues[c].pop(0))
    for k in (1, 4, 17, 60):
        assert list(baselines.round_robin(labels, quality, ids, k)) == expect[:k]


@pytest.mark.parametrize("block", [4096, 7, 1])  # the walk in one block, in several, a row a block
def test_score_first_walk_follows_the_threshold_rule(block):
    feats, quality, ids = _pool()
    d = _full(feats)
    order = _qorder(quality, ids)
    tau = float(np.quantile(d[np.triu_indices(60, 1)], 0.2))
    kept = []
    for i in order:
        if all(d[i, j] > tau for j in kept):
            kept.append(i)
    got = baselines.score_first_walk(feats, np.asarray(order), 60, tau, "wasserstein", block=block)
    assert list(got) == kept
    assert list(baselines.score_first_walk(feats, np.asarray(order), 3, tau, "wasserstein", block=block)) == kept[:3]


@pytest.mark.parametrize("metric", ["wasserstein", "cosine", "l2"])
def test_score_first_walk_in_blocks_keeps_what_the_whole_walk_kept(metric):
    from tests.pool_reference import score_first_walk_whole

    rng = np.random.default_rng(2)
    feats = distance.features(rng.dirichlet(np.ones(4), size=(80, 2)).astype(np.float32), metric)
    order = rng.permutation(80)
    d = distance.pairwise(*[__import__("torch").from_numpy(np.ascontiguousarray(feats, dtype=np.float32))] * 2, metric)
    for tau in np.quantile(d.numpy()[np.triu_indices(80, 1)], [0.0, 0.05, 0.3, 0.9]):
        whole = score_first_walk_whole(feats, order, 30, float(tau), metric)
        assert 1 <= len(whole) <= 30
        for block in (4096, 9, 1):
            assert np.array_equal(baselines.score_first_walk(feats, order, 30, float(tau), metric, block=block), whole)


def test_score_first_reaches_k_and_its_threshold_separates_the_picks():
    feats, quality, ids = _pool()
    d = _full(feats)
    for k in (1, 5, 12):
        picks, tau = baselines.score_first(feats, quality, ids, k, "wasserstein")
        assert len(picks) == k == len(set(picks))
        assert all(d[i, j] > tau for i, j in itertools.combinations(picks, 2))
        if k > 1:
            assert tau > 0  # a real threshold, not the quality top k
            assert (
                len(baselines.score_first_walk(feats, np.asarray(_qorder(quality, ids)), k, tau * 1.5, "wasserstein"))
                < k
                or tau * 1.5 > d.max()
            )


@pytest.mark.parametrize("block_values", [1 << 25, 50, 1])  # a cluster's rows at once, a few rows a block, one
def test_semdedup_drops_near_duplicates_within_clusters_only(block_values):
    feats, quality, ids = _pool()
    feats = np.concatenate([feats, feats[:10]])  # ten exact copies
    quality = np.concatenate([quality, quality[:10] - 5.0])  # worse than their originals
    ids = np.concatenate([ids, [f"z{i}" for i in range(10)]]).astype(object)
    d = _full(feats)
    labels = np.arange(70) % 3
    labels[60:] = labels[:10]  # copies in their original's cluster
    eps = float(np.quantile(d[np.triu_indices(70, 1)], 0.05))
    # reference: per cluster, walk in quality order, drop a member within eps of a kept one
    dropped = set()
    for c in range(3):
        kept = []
        for i in _qorder(quality, ids):
            if labels[i] != c:
                continue
            if any(d[i, j] <= eps for j in kept):
                dropped.add(i)
            else:
                kept.append(i)
    survivors = [i for i in _qorder(quality, ids) if i not in dropped]
    picks, n_dropped = baselines.semdedup(
        feats, quality, ids, labels, 20, eps, "wasserstein", block_values=block_values
    )
    assert n_dropped == len(dropped) and set(range(60, 70)) <= dropped
    assert list(picks) == survivors[:20]
    # across clusters nothing is dropped: one cluster per row keeps everything
    _, none = baselines.semdedup(feats, quality, ids, np.arange(70), 20, eps, "wasserstein")
    assert none == 0
    # fewer survivors than k: the best dropped rows fill the selection
    picks, _ = baselines.semdedup(feats, quality, ids, labels, 70, eps, "wasserstein")
    assert sorted(picks) == list(range(70))


@pytest.mark.parametrize("metric", ["wasserstein", "cosine", "l2"])
def test_semdedup_walk_in_blocks_matches_the_walk_row_by_row(metric):
    """Whatever the block, a row is near exactly when it lies within eps of an earlier row that is not."""
    import torch

    rng = np.random.default_rng(1)
    probs = rng.dirichlet(np.ones(4), size=(40, 2)).astype(np.float32)
    feats = distance.features(np.concatenate([probs, probs[:8]]), metric)  # eight copies among them
    x = torch.from_numpy(np.ascontiguousarray(feats, dtype=np.float32))
    d = distance.pairwise(x, x, metric).numpy()
    eps = float(np.quantile(d[np.triu_indices(len(x), 1)], 0.1))
    reference = np.zeros(len(x), dtype=bool)
    for j in range(len(x)):
        reference[j] = any(d[i, j] <= eps and not reference[i] for i in range(j))
    assert reference[40:].all() and 8 < reference.sum() < 40  # the copies, and not every row
    for block_values in (1 << 25, 3 * len(x), len(x), 1):
        assert np.array_equal(baselines._near_in_order(x, eps, metric, block_values), reference), block_values


def test_kmeans_is_seeded_and_near_duplicate_pairs_match_brute_force():
    feats, quality, ids = _pool()
    a = baselines.kmeans_labels(feats, 6, seed=0)
    assert np.array_equal(a, baselines.kmeans_labels(feats, 6, seed=0)) and len(np.unique(a)) == 6
    d = _full(feats)
    eps = float(np.quantile(d[np.triu_indices(60, 1)], 0.1))
    assert baselines.near_duplicate_pairs(feats, eps, "wasserstein", chunk=7) == int(
        (d[np.triu_indices(60, 1)] <= eps).sum()
    )


def test_longest_takes_the_most_response_tokens_ties_by_sample_id_and_needs_them():
    from selectflow.runtime.errors import SelectFlowError

    feats, quality, ids = _pool()
    tokens = np.random.default_rng(5).integers(1, 12, 60)  # ties on purpose
    picks = baselines.select(
        "longest", feats, quality, ids, 9, seed=0, labels=None, eps=0.0, metric="wasserstein", response_tokens=tokens
    )
    assert list(picks) == sorted(range(60), key=lambda i: (-tokens[i], ids[i]))[:9]
    assert min(tokens[picks]) >= max(np.delete(tokens, picks))
    with pytest.raises(SelectFlowError, match="rerun rule compare_pool"):
        baselines.select("longest", feats, quality, ids, 9, seed=0, labels=None, eps=0.0, metric="wasserstein")


def test_length_bins_are_the_pools_quantiles_and_ties_share_a_bin():
    bins = baselines.length_bins(np.arange(1, 101), bins=10)
    assert list(np.bincount(bins)) == [10] * 10 and list(bins[::10]) == list(range(10))
    assert len(set(baselines.length_bins(np.full(30, 7)))) == 1  # one length: one bin
    tokens = np.array([1] * 50 + list(range(2, 52)))  # half the pool ties at 1
    bins = baselines.length_bins(tokens, bins=10)
    # brute force: a row's bin is how many distinct deciles of the pool are at or below its length
    deciles = {float(np.quantile(tokens, q / 10)) for q in range(1, 10)}
    assert list(bins) == [sum(e <= t for e in deciles) for t in tokens]


def _length_matched(method, seed, response_tokens, reference):
    """Baseline ``method`` (random_length, random_matched) on a pool of the tokens' size, k 20."""
    feats, quality, ids = _pool(400 if response_tokens is None else len(response_tokens))
    return baselines.select(
        method,
        feats,
        quality,
        ids,
        20,
        seed=seed,
        labels=None,
        eps=0.0,
        metric="wasserstein",
        response_tokens=response_tokens,
        reference=reference,
    )


def test_random_length_draws_the_references_length_profile_seeded_and_anew():
    from selectflow.runtime.errors import SelectFlowError

    tokens = np.random.default_rng(1).geometric(0.1, 200)  # long tail, ties
    bins = baselines.length_bins(tokens)
    longest = np.argsort(-tokens, kind="stable")[:20]  # a selection of long records

    def pick(seed, reference=longest, **kw):
        return _length_matched("random_length", seed, **{"response_tokens": tokens, "reference": reference, **kw})

    a = pick(3)
    assert len(set(a)) == 20 and np.array_equal(a, pick(3))
    assert np.array_equal(np.bincount(bins[a], minlength=10), np.bincount(bins[longest], minlength=10))
    assert tokens[a].mean() > 2 * tokens.mean()  # as long as the reference, not as the pool
    assert set(pick(4)) != set(a)
    # a reference spread over every bin: the draw is too, bin by bin
    spread = np.random.default_rng(2).choice(200, 30, replace=False)
    b = pick(0, spread)
    assert np.array_equal(np.bincount(bins[b], minlength=10), np.bincount(bins[spread], minlength=10))
    with pytest.raises(SelectFlowError, match="rerun rule compare_pool"):
        pick(0, response_tokens=None)
    with pytest.raises(SelectFlowError, match="picks of the selection it matches"):
        pick(0, reference=None)
    with pytest.raises(SelectFlowError, match="distinct rows"):
        pick(0, np.array([1, 1, 2]))


def _nearest_length_brute(tokens, reference, seed, neighbours):
    """nearest_length_pick's specification, one full scan of the pool per draw."""
    rng = np.random.default_rng(seed)
    left = np.ones(len(tokens), dtype=bool)
    out = []
    for r in rng.permutation(reference):
        dist = np.abs(tokens - tokens[r]).astype(float)
        d = np.sort(dist[left])[min(neighbours, left.sum()) - 1]
        eligible = np.flatnonzero(left & (dist <= d))
        out.append(int(eligible[rng.integers(len(eligible))]))
        left[out[-1]] = False
    return np.array(out)


@pytest.mark.parametrize("neighbours", [1, 3, 10])
@pytest.mark.parametrize("tail", ["geometric", "ties"])
def test_random_matched_equals_its_brute_force_specification(neighbours, tail):
    rng = np.random.default_rng(5)
    # a long tail with gaps, or few distinct counts (ties at the boundary distance)
    tokens = rng.geometric(0.05, 300) if tail == "geometric" else rng.integers(1, 6, 300) * 7
    for seed, reference in [
        (0, np.argsort(-tokens, kind="stable")[:60]),  # the long end: matches run out of near rows
        (1, rng.choice(300, 150, replace=False)),
        (2, np.arange(300)),  # every row: the draw is a permutation of the pool
    ]:
        got = baselines.nearest_length_pick(tokens, reference, seed, neighbours)
        assert np.array_equal(got, _nearest_length_brute(tokens, reference, seed, neighbours))
    assert sorted(got) == list(range(300))


def test_random_matched_draws_each_pick_near_its_reference_seeded_and_anew():
    from selectflow.runtime.errors import SelectFlowError

    tokens = np.random.default_rng(1).geometric(0.05, 400)  # long tail, ties
    longest = np.argsort(-tokens, kind="stable")[:20]

    def pick(seed, method="random_matched", reference=longest, **kw):
        return _length_matched(method, seed, **{"response_tokens": tokens, "reference": reference, **kw})

    a = pick(3)
    assert len(set(a)) == 20 and np.array_equal(a, pick(3)) and set(pick(4)) != set(a)
    # matched pick by pick: the sorted lengths stay within the 10-nearest window of the reference's,
    # closer at the long tail than random_length's bins
    gap = np.abs(np.sort(tokens[a]) - np.sort(tokens[longest])).mean()
    binned = np.abs(np.sort(tokens[pick(3, "random_length")]) - np.sort(tokens[longest])).mean()
    assert gap < binned
    with pytest.raises(SelectFlowError, match="rerun rule compare_pool"):
        pick(0, response_tokens=None)
    with pytest.raises(SelectFlowError, match="picks of the selection it matches"):
        pick(0, reference=None)
    with pytest.raises(SelectFlowError, match="distinct rows"):
        pick(0, reference=np.array([1, 1, 2]))


def test_unknown_baseline_is_named():
    from selectflow.runtime.errors import SelectFlowError

    feats, quality, ids = _pool()
    with pytest.raises(SelectFlowError, match="compare.methods"):
        baselines.select("lesss", feats, quality, ids, 3, seed=0, labels=None, eps=0.0, metric="wasserstein")


def _section(**values):
    import yaml

    from selectflow.config import CompareConfig, section
    from selectflow.configdoc import SCHEMA
    from selectflow.schema import with_defaults

    defaults = with_defaults(_raw(), yaml.safe_load(SCHEMA.read_text()))["compare"]
    return section(CompareConfig, {**defaults, "train": None, **values})


def _raw(**compare):
    return {"datasets": {"a": "a.jsonl"}, "model": {"path": "m"}, "compare": compare}


def test_an_unknown_compare_method_is_a_config_error_naming_the_key(tmp_path):
    import yaml

    from selectflow.runtime.errors import SelectFlowError
    from selectflow.schema import load_config

    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(_raw(methods=["random", "lesss"])))
    with pytest.raises(SelectFlowError, match=r"'compare\.methods\.1' is 'lesss', it must be one of fps, random"):
        load_config(path)


def test_fps_is_always_compared_first_and_the_compare_train_overrides_apply():
    import yaml

    from selectflow.config import build_config
    from selectflow.configdoc import SCHEMA
    from selectflow.schema import with_defaults

    schema = yaml.safe_load(SCHEMA.read_text())
    cfg = build_config(with_defaults(_raw(methods=["quality", "random"], train={"max_steps": 3}), schema))
    assert cfg.compare.methods == ("fps", "quality", "random")
    assert cfg.compare.train.max_steps == 3 and cfg.train.settings.max_steps != 3
    # one key set keeps the comparison's other training defaults, not the train section's
    one = build_config(
        with_defaults({**_raw(train={"epochs": 2}), "train": {"max_steps": 6, "learning_rate": 0.1}}, schema)
    ).compare.train
    assert (one.epochs, one.max_steps, one.learning_rate) == (2, None, 0.01)
    default = build_config(with_defaults(_raw(), schema)).compare
    # every baseline but longest, random_length and random_matched (opt-in: five more fine-tunes each) runs by default
    opt_in = {"longest", "random_length", "random_matched"}
    assert default.methods[0] == "fps" and set(default.methods) == {"fps", *baselines.BASELINES} - opt_in


def test_compare_eval_auto_is_the_demo_test_set_for_the_demo_pool_else_a_heldout_slice():
    import yaml

    from selectflow.config import build_config
    from selectflow.configdoc import SCHEMA
    from selectflow.schema import with_defaults

    schema = yaml.safe_load(SCHEMA.read_text())

    def resolved(datasets, **compare):
        return build_config(with_defaults({**_raw(**compare), "datasets": datasets}, schema)).compare.eval

    assert resolved({"demo": "resources/demo/demo_pool.jsonl"}) == "demo"
    assert resolved({"mine": "data/mine.jsonl"}) == "heldout"
    assert resolved({"mine": "data/mine.jsonl"}, eval="dev.jsonl") == "dev.jsonl"
    assert resolved({"demo": "resources/demo/demo_pool.jsonl"}, eval="heldout") == "heldout"


def _assert_same_h5(path_a, path_b):
    """The two HDF5 files hold the same datasets (names, dtypes, values) and attributes."""
    with h5py.File(path_a) as a, h5py.File(path_b) as b:
        assert sorted(a) == sorted(b) and dict(a.attrs) == dict(b.attrs)
        for name in a:
            assert a[name].dtype == b[name].dtype and np.array_equal(a[name][()], b[name][()]), name


def test_the_heldout_slice_never_appears_in_any_selection(tmp_path):
    from selectflow.config import LENGTH_MATCHED, selection_section
    from selectflow.data.records import iter_jsonl
    from selectflow.report.yardstick import PoolFeatures, read_pool, read_pool_features
    from selectflow.router.routerfile import shard_header
    from selectflow.runtime.tables import read_tsv
    from selectflow.stages import compare
    from selectflow.stages.select import build_candidates, run_fps
    from tests.pool_reference import build_compare_pool_concat
    from tests.stages.test_select import make_pool, write_shards

    pool = make_pool()
    shards = write_shards(pool, tmp_path / "router", seed=1, response_tokens={s: 3 + i % 7 for i, s in enumerate(pool)})
    sel = selection_section(selection_percentage=0.2, device="cpu", quality_method="ifd")
    cmp = _section(
        methods=("fps", *baselines.BASELINES),
        heldout_fraction=0.25,
        clusters=3,
        near_duplicate_quantile=0.05,
        eval="demo",
    )
    build_candidates(shards, tmp_path / "main.h5", tmp_path / "main.tsv", sel)
    assert compare.draw_heldout(tmp_path / "main.tsv", shards, tmp_path / "none.jsonl", cmp) == 0  # eval: demo
    cmp = replace(cmp, eval="heldout")
    n = compare.draw_heldout(tmp_path / "main.tsv", shards, tmp_path / "heldout.jsonl", cmp)
    held = compare.heldout_ids(tmp_path / "heldout.jsonl")
    assert n == len(held) > 0
    k = build_candidates(shards, tmp_path / "c.h5", tmp_path / "c.tsv", sel, held)
    compare.build_pool(shards, tmp_path / "c.h5", tmp_path / "c.tsv", tmp_path / "pool.h5", cmp, sel)
    kept = read_pool(tmp_path / "pool.h5")
    # the two passes write what stacking every shard's kept features and re-ordering them wrote (the shards
    # hold the samples shuffled, so the rows move)
    build_compare_pool_concat(shards, tmp_path / "c.h5", tmp_path / "c.tsv", tmp_path / "concat.h5", cmp, sel)
    _assert_same_h5(tmp_path / "pool.h5", tmp_path / "concat.h5")
    in_shards = [str(s) for path in shards for s in shard_header(path)[1] if s in set(kept["sample_id"])]
    assert list(kept["sample_id"]) == sorted(in_shards) != in_shards
    assert not held & set(kept["sample_id"])
    # each kept sample's response tokens, as its router shard recorded them
    assert list(kept["response_tokens"]) == [3 + list(pool).index(sid) % 7 for sid in kept["sample_id"]]
    run_fps(tmp_path / "c.h5", tmp_path / "fps.tsv", sel)
    picks = {"fps": tmp_path / "fps.tsv"}
    for method in baselines.BASELINES:
        reference = tmp_path / "fps.tsv" if method in LENGTH_MATCHED else None
        compare.pick_baseline(method, tmp_path / "pool.h5", tmp_path / f"{method}.tsv", cmp, reference_tsv=reference)
        picks[method] = tmp_path / f"{method}.tsv"
    for method, path in picks.items():
        ids = list(read_tsv(path, method)["sample_id"])
        assert len(ids) == len(set(ids)) == k, method
        assert not held & set(ids), method
    # each baseline picks the same rows from the pool as it reads it (_pool_for: the features read by rows
    # from disk, or not at all: READS_FEATURE_ROWS is complete) as from the pool in memory, and the features
    # of some rows are those rows of the pool's
    assert read_pool(tmp_path / "pool.h5", features=False)["features"] is None
    for method in baselines.BASELINES:
        reference = compare.reference_rows(kept, picks["fps"]) if method in LENGTH_MATCHED else None
        as_read = compare._pool_for(method, tmp_path / "pool.h5")
        on_disk = method in baselines.READS_FEATURE_ROWS
        assert (PoolFeatures if on_disk else type(None)) is type(as_read["features"])
        assert np.array_equal(
            compare._baseline_rows(method, as_read, 5, reference), compare._baseline_rows(method, kept, 5, reference)
        ), method
    for rows in ([4, 0, 4, 2], []):
        assert np.array_equal(read_pool_features(tmp_path / "pool.h5", rows), kept["features"][rows])
    # random_length's further draws: fps's length profile again, drawn anew
    draws = [tmp_path / f"draw_{i}.jsonl" for i in (1, 2)]
    compare.random_draws(
        tmp_path / "pool.h5", tmp_path / "c.tsv", shards, draws, cmp, method="random_length", reference_tsv=picks["fps"]
    )
    bins = baselines.length_bins(kept["response_tokens"])
    row = {sid: i for i, sid in enumerate(kept["sample_id"])}

    def profile(ids):
        return list(np.bincount(bins[[row[s] for s in ids]], minlength=bins.max() + 1))

    fps_ids = list(read_tsv(picks["fps"], "fps")["sample_id"])
    drawn = [[rec["sample_id"] for _, rec in iter_jsonl(path)] for path in draws]
    assert (
        profile(drawn[0])
        == profile(drawn[1])
        == profile(fps_ids)
        == profile(read_tsv(picks["random_length"], "r")["sample_id"])
    )
    assert len(set(drawn[0])) == k and set(drawn[0]) != set(drawn[1])
    # compare.fps_draws: draw j matches fps's draw j (here two random selections stand in for them), not draw 0
    stand_ins = [tmp_path / f"fps_draw_{i}.jsonl" for i in (1, 2)]
    compare.random_draws(tmp_path / "pool.h5", tmp_path / "c.tsv", shards, stand_ins, cmp, method="random")
    refs = [[rec["sample_id"] for _, rec in iter_jsonl(path)] for path in stand_ins]
    assert profile(refs[0]) != profile(refs[1]) != profile(fps_ids), "the stand-ins' lengths differ on this pool"
    for method in LENGTH_MATCHED:
        matched = [tmp_path / f"{method}_{i}.jsonl" for i in (1, 2)]
        compare.random_draws(
            tmp_path / "pool.h5", tmp_path / "c.tsv", shards, matched, cmp, method, picks["fps"], stand_ins
        )
        got = [[rec["sample_id"] for _, rec in iter_jsonl(path)] for path in matched]
        if method == "random_length":  # bin by bin
            assert [profile(ids) for ids in got] == [profile(ids) for ids in refs]
        else:  # pick by pick: the draw nearest_length_pick makes from stand-in j with seed compare.seed + j + 1
            for j, ids in enumerate(got):
                want = baselines.nearest_length_pick(
                    kept["response_tokens"], np.array([row[s] for s in refs[j]]), cmp.seed + j + 1
                )
                assert sorted(row[s] for s in ids) == sorted(want), method
    with pytest.raises(SelectFlowError, match="2 draws of random_length but 1 fps draws"):
        compare.random_draws(
            tmp_path / "pool.h5", tmp_path / "c.tsv", shards, draws, cmp, "random_length", picks["fps"], stand_ins[:1]
        )
    # the same draw again: identical
    compare.draw_heldout(tmp_path / "main.tsv", shards, tmp_path / "again.jsonl", cmp)
    assert (tmp_path / "again.jsonl").read_bytes() == (tmp_path / "heldout.jsonl").read_bytes()


def test_fps_draw_is_fps_with_the_next_strata_seed_less_the_excluded_in_either_distance_mode(tmp_path):
    # compare.fps_draws' draw i: the comparison's candidates and fps re-built with strata_seed + i; matrix
    # mode too (the comparison has no distance blocks: pick_fps streams, with matrix mode's picks)
    from selectflow.config import selection_section
    from selectflow.data.records import iter_jsonl
    from selectflow.runtime.tables import read_tsv
    from selectflow.stages import compare
    from selectflow.stages.select import build_candidates, run_fps
    from tests.stages.test_select import make_pool, write_shards

    pool = make_pool()
    shards = write_shards(pool, tmp_path / "router", seed=1)
    exclude = set(list(pool)[::6])
    sel = selection_section(selection_percentage=0.3, device="cpu", quality_method="ifd", routing_strata=3)
    drawn = {}
    for seed in (1, 3):  # seed 1 + draw 2 is seed 3
        seeded = replace(sel, strata_seed=seed)
        build_candidates(shards, tmp_path / f"c{seed}.h5", tmp_path / f"c{seed}.tsv", seeded, exclude)
        run_fps(tmp_path / f"c{seed}.h5", tmp_path / f"fps{seed}.tsv", seeded)
        drawn[seed] = list(read_tsv(tmp_path / f"fps{seed}.tsv", "picks")["sample_id"])
    assert drawn[1] != drawn[3], "the strata seed moves the picks on this pool"
    for mode in ("streaming", "matrix"):
        base = replace(sel, strata_seed=1, distance_mode=mode)
        assert compare.pick_fps(tmp_path / "c1.h5", tmp_path / f"{mode}.tsv", base) == len(drawn[1])
        assert list(read_tsv(tmp_path / f"{mode}.tsv", "picks")["sample_id"]) == drawn[1]
        out = tmp_path / f"draw_{mode}.jsonl"
        assert compare.fps_draw(shards, exclude, out, base, 2) == len(drawn[3])
        ids = [rec["sample_id"] for _, rec in iter_jsonl(out)]
        assert sorted(ids) == sorted(drawn[3]) and not exclude & set(ids)
        # from the comparison's candidates (seed 1's), only the strata drawn anew: the same draw, byte for byte
        reused = tmp_path / f"reused_{mode}.jsonl"
        assert compare.fps_draw(shards, exclude, reused, base, 2, candidates=(tmp_path / "c1.h5", tmp_path / "c1.tsv"))
        assert reused.read_bytes() == out.read_bytes()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith("tmp")] == []  # no scratch folder left


@pytest.mark.parametrize(
    "setting, reused",
    [
        ({}, True),
        ("sampled", True),  # the strata's k-means trained on a sample, every sample assigned chunk by chunk
        ({"importance_selection_percentage": 0.6}, False),  # candidates: each stratum's quality top, from the pool
        ({"strata_weight": "pool"}, False),  # weights: the duplicates each kept sample stands for
        ({"routing_strata": 1}, False),
    ],
)
def test_restratify_writes_the_candidates_a_rebuild_with_the_next_seed_writes_or_declines(
    tmp_path, monkeypatch, caplog, setting, reused
):
    import logging

    sampled = setting == "sampled"
    if sampled:
        monkeypatch.setattr("selectflow.select.strata.POINTS_PER_CENTROID", 2)
        setting = {}
    caplog.set_level(logging.INFO, logger="selectflow.select.strata")

    from selectflow.config import selection_section
    from selectflow.select.candidates import restratify
    from selectflow.stages.select import build_candidates
    from tests.stages.test_select import make_pool, write_shards

    shards = write_shards(make_pool(), tmp_path / "router", seed=1)
    sel = selection_section(
        **{"selection_percentage": 0.3, "device": "cpu", "quality_method": "ifd", "routing_strata": 3, **setting}
    )
    build_candidates(shards, tmp_path / "c0.h5", tmp_path / "c0.tsv", sel)
    build_candidates(shards, tmp_path / "c5.h5", tmp_path / "c5.tsv", replace(sel, strata_seed=5))
    assert restratify(tmp_path / "c0.h5", tmp_path / "r5.h5", replace(sel, strata_seed=5), chunk=4) is reused
    if not reused:
        assert not (tmp_path / "r5.h5").exists()
        return
    _assert_same_h5(tmp_path / "r5.h5", tmp_path / "c5.h5")
    with h5py.File(tmp_path / "c5.h5") as b, h5py.File(tmp_path / "c0.h5") as c:
        assert not np.array_equal(b["stratum"][()], c["stratum"][()]), "the seed moves the strata on this pool"
    assert (tmp_path / "c5.tsv").read_bytes() == (tmp_path / "c0.tsv").read_bytes()  # the quality table keeps
    assert ("k-means trained on 6 of" in caplog.text) is sampled


def test_caption_names_the_winners_and_tests_the_difference_with_welch():
    import pandas as pd
    from scipy import stats

    from selectflow.report.compare import caption, difference

    fps, rnd = np.array([0.50, 0.52, 0.51, 0.53, 0.49]), np.array([0.40, 0.45, 0.42, 0.41, 0.44])
    # reference: Welch's t-test p < 0.05 exactly when the 95 % interval of the difference excludes 0
    diff, half = difference(fps, rnd)
    assert diff == pytest.approx(fps.mean() - rnd.mean())
    assert (abs(diff) > half) == (stats.ttest_ind(fps, rnd, equal_var=False).pvalue < 0.05)

    def row(method, acc, loss):
        return {
            "method": method,
            "macro_accuracy": acc.mean(),
            "macro_accuracy_ci95": 0.01,
            "accuracy_per_seed": ",".join(map(str, acc)),
            "macro_loss": loss.mean(),
            "macro_loss_ci95": 0.01,
            "loss_per_seed": ",".join(map(str, loss)),
        }

    down = pd.DataFrame([row("fps", fps, 2 - fps), row("random", rnd, 2 - rnd)])
    text = caption(down)
    assert text.startswith("Best macro accuracy: fps (0.5100") and "best macro loss: fps" in text
    assert "fps better than random by 0.0860 (beyond the 95 % interval" in text
    close = pd.DataFrame([row("fps", fps, 2 - fps), row("random", fps[::-1] - 0.001, 2 - fps[::-1])])
    assert "fps better than random by 0.0010 (within the 95 % interval" in caption(close)
    # whether fps's interval holds its selection's chance (compare.fps_draws): said when the table knows
    assert "one fps selection" not in text and "drawn anew" not in text  # a table before n_selections
    for n, said in ((1, "one fps selection for its 5 fine-tunes"), (5, "fps drawn anew for each of its 5")):
        known = down.assign(n_seeds=5, n_selections=[n, 5])
        assert said in caption(known) and caption(known).endswith(".")


def test_interval_is_students_t_over_the_seeds():
    from scipy import stats

    from selectflow.report.yardstick import interval

    values = np.array([1.0, 1.2, 0.9, 1.1, 1.05])
    mean, half = interval(values)
    low, high = stats.t.interval(0.95, len(values) - 1, loc=values.mean(), scale=stats.sem(values))
    assert mean == pytest.approx(values.mean()) and half == pytest.approx((high - low) / 2)
    assert np.isnan(interval(np.array([1.0]))[1])


@pytest.mark.skipif(not __import__("torch").cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("method", ["score_first", "semdedup"])
def test_cuda_picks_the_same_rows_as_cpu(method):
    feats, quality, ids = _pool(200)
    labels = baselines.kmeans_labels(feats, 5, seed=0)
    eps = baselines.pair_threshold(feats, 0.05, 0, "wasserstein")
    assert eps == baselines.pair_threshold(feats, 0.05, 0, "wasserstein", device="cuda")
    args = (method, feats, quality, ids, 30)
    cpu = baselines.select(*args, seed=0, labels=labels, eps=eps, metric="wasserstein", device="cpu")
    gpu = baselines.select(*args, seed=0, labels=labels, eps=eps, metric="wasserstein", device="cuda")
    assert np.array_equal(cpu, gpu)
