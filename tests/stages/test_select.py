"""The selection steps end to end on small shuffled multi-dataset, multi-shard router data."""

import json
import logging
import math

import h5py
import numpy as np
import pandas as pd
import pytest

from selectflow import cli
from selectflow.config import FPS_ONLY_KEYS, selection_section
from selectflow.router.routerfile import RouterShard, write_router_shard
from selectflow.runtime.errors import CorruptFileError, SelectFlowError
from selectflow.schema import schema_default
from selectflow.select.candidates import fps_options, n_blocks, open_candidates, read_candidates
from selectflow.select.distance import block_path, features
from selectflow.select.diversity import (
    LOF_CUT_WEIGHT,
    boilerplate_hold_back,
    density_weight,
    knn_graph,
    lof_cut_weight,
    lof_weight,
    mean_spread,
    relevance_hold_back,
)
from selectflow.select.fps import Snap, fps_streaming
from selectflow.select.fps_dist import THREAD_VARS
from selectflow.select.quality import boilerplate_share, prompt_coverage
from selectflow.stages.select import (
    build_candidates,
    compute_block,
    run_fps,
    write_selection,
)
from tests.pool_reference import build_candidates_whole

L, E = 2, 5
DATASETS = {"alpaca": 14, "chat": 9, "NA": 7}  # "NA" must stay a string through the TSVs


def make_pool(seed=0):
    """sample_id -> everything about one sample; the truth the tests compare against."""
    rng = np.random.default_rng(seed)
    pool = {}
    for name, count in DATASETS.items():
        for line in range(1, count + 1):
            sid = f"{name}:{line}"
            logits = rng.normal(size=(L, 2)).astype(np.float32)
            if line == 3:  # a planted quality tie across datasets, broken by sample_id
                logits = np.zeros((L, 2), dtype=np.float32)
            pool[sid] = {
                "probs": rng.dirichlet(np.ones(E), size=L).astype(np.float32),
                "logits": logits,
                "nll": float(rng.uniform(0.5, 2.0)),
                "alone": float(rng.uniform(0.5, 2.0)),
                "norm": {
                    "sample_id": sid,
                    "dataset": name,
                    "line": line,
                    "prompt": f"p {sid}",
                    "response": f"r {sid}",
                    "record": {"instruction": f"do {sid}", "output": "ok", "score": float(rng.normal())},
                },
            }
    return pool


def gate_score(s):
    logits = s["logits"].astype(np.float64)
    return float(np.mean(1 / (1 + np.exp(logits[:, 1] - logits[:, 0]))))


def write_shards(pool, root, seed, shard_size=5, response_tokens=None):
    """Shuffle samples across datasets, cut into shards under per-dataset-looking folders;
    ``response_tokens``: {sample id: count} (default 8 each)."""
    ids = list(pool)
    np.random.default_rng(seed).shuffle(ids)
    paths = []
    for k, lo in enumerate(range(0, len(ids), shard_size)):
        part = ids[lo : lo + shard_size]
        shard = RouterShard(
            sample_id=np.array(part, dtype=object),
            moe_probs=np.stack([pool[s]["probs"] for s in part]),
            nll_response=np.array([pool[s]["nll"] for s in part], dtype=np.float32),
            n_tokens=np.full(len(part), 20, dtype=np.int32),
            n_response_tokens=np.array([(response_tokens or {}).get(s, 8) for s in part], dtype=np.int32),
            quality_logits=np.stack([pool[s]["logits"] for s in part]),
            nll_response_alone=np.array([pool[s]["alone"] for s in part], dtype=np.float32),
            record=np.array([json.dumps(pool[s]["norm"]) for s in part], dtype=object),
            hidden=np.stack([pool[s]["hidden"] for s in part]) if "hidden" in pool[ids[0]] else None,
        )
        path = root / f"group{k % 2}" / f"shard_{k:05d}.h5"
        write_router_shard(path, shard)
        paths.append(path)
    return paths


def section(**kw):
    """The selection section for these tests: plain FPS (one stratum, no weights) on the CPU unless ``kw`` says
    otherwise."""
    return selection_section({"routing_strata": 1, "fps_weight": "none", "device": "cpu", **kw})


def pipeline(paths, out, **kw):
    sel = section(distance_batch_size=4, fps_log_interval=5, **kw)
    build_candidates(paths, out / "candidates.h5", out / "candidates_quality.tsv", sel)
    block_dir = None
    if sel.distance_mode == "matrix":
        block_dir = out / "blocks"
        nb = n_blocks(out / "candidates.h5", 4)
        for i in range(nb):
            for j in range(i, nb):
                compute_block(out / "candidates.h5", i, j, block_path(block_dir, i, j), sel, sub_chunk=3)
    run_fps(out / "candidates.h5", out / "curve.tsv", sel, block_dir=block_dir)
    write_selection(
        out / "curve.tsv",
        out / "candidates_quality.tsv",
        paths,
        out / "selected.jsonl",
        out / "summary.tsv",
        out / "quality.tsv",
    )
    return [json.loads(line) for line in open(out / "selected.jsonl")]


def test_two_stage_joins_by_sample_id(tmp_path):
    pool = make_pool()
    paths = write_shards(pool, tmp_path / "a", seed=1)
    selected = pipeline(
        paths, tmp_path / "out", selection_percentage=0.2, importance_selection_percentage=0.5, quality_method="gate"
    )

    # reference: rank the dict by (quality desc, sample_id), keep the top half, FPS from the best
    n = len(pool)
    ranked = sorted(pool, key=lambda s: (-gate_score(pool[s]), s))
    stage1 = ranked[: round(0.5 * n)]
    ref = fps_streaming(
        features(np.stack([pool[s]["probs"] for s in stage1]), "wasserstein"),
        round(0.2 * n),
        device="cpu",
        metric="wasserstein",
        log_interval=100,
    )
    want = [stage1[i] for i in ref.picks]

    assert [r["sample_id"] for r in selected] == want
    for rank, rec in enumerate(selected):
        truth = pool[rec["sample_id"]]
        assert rec["selection_rank"] == rank
        assert rec["dataset"] == truth["norm"]["dataset"]
        assert rec["quality_score"] == pytest.approx(gate_score(truth), rel=1e-12)
        assert {k: rec[k] for k in truth["norm"]["record"]} == truth["norm"]["record"]

    cands = read_candidates(tmp_path / "out" / "candidates.h5")
    assert cands.sample_id.tolist() == stage1 and cands.attrs["stage"] == "two_stage"
    assert cands.attrs["n_pool"] == n and cands.attrs["k"] == round(0.2 * n)

    summary = pd.read_csv(tmp_path / "out" / "summary.tsv", sep="\t", keep_default_na=False).set_index("dataset")
    for name, count in DATASETS.items():
        assert summary.at[name, "pool"] == count
        assert summary.at[name, "candidates"] == sum(s.startswith(name + ":") for s in stage1)
        assert summary.at[name, "selected"] == sum(s.startswith(name + ":") for s in want)
    curve = pd.read_csv(tmp_path / "out" / "curve.tsv", sep="\t", keep_default_na=False)
    assert math.isinf(curve["min_distance"][0]) and curve["sample_id"].tolist() == want
    # the table a user reads after the run: every sample's final reason
    table = pd.read_csv(tmp_path / "out" / "quality.tsv", sep="\t", keep_default_na=False, dtype={"sample_id": str})
    reason = dict(zip(table["sample_id"], table["reason"]))
    assert len(reason) == n
    assert {s for s, r in reason.items() if r == "selected"} == set(want)
    assert {s for s, r in reason.items() if r == "not_picked"} == set(stage1) - set(want)
    assert {s for s, r in reason.items() if r == "below_importance_cut"} == set(ranked) - set(stage1)
    assert table["selected"].sum() == len(want) and table["candidate"].sum() == len(stage1)


def test_shard_layout_and_mode_do_not_change_the_selection(tmp_path):
    pool = make_pool(seed=5)
    kw = dict(selection_percentage=0.3, importance_selection_percentage=0.6, quality_method="gate")
    a = pipeline(write_shards(pool, tmp_path / "a", seed=2, shard_size=4), tmp_path / "oa", **kw)
    b = pipeline(
        write_shards(pool, tmp_path / "b", seed=3, shard_size=7), tmp_path / "ob", distance_mode="matrix", **kw
    )
    assert a == b
    curve_a = pd.read_csv(tmp_path / "oa" / "curve.tsv", sep="\t")
    curve_b = pd.read_csv(tmp_path / "ob" / "curve.tsv", sep="\t")
    pd.testing.assert_frame_equal(curve_a, curve_b)


@pytest.mark.parametrize(
    ("fps_weight", "fps_snap", "hold"),
    [
        ("quality", "none", 0),
        ("density", "none", 0),
        ("lof", "none", 0),
        ("lof_cut", "none", 0),
        ("none", "density", 0),
        ("density", "density", 0),
        ("none", "quality", 0),
        ("none", "length", 0),
        ("none", "none", 0.3),
        ("lof_cut", "none", 0.3),
    ],
)
@pytest.mark.parametrize("strata", [1, 3])
def test_weighted_and_snapped_fps(tmp_path, strata, fps_weight, fps_snap, hold):
    # selection.fps_weight: FPS over the candidates with weights 1 - rank/m, in either distance
    # mode; quality: the candidates are in quality order, so candidate i has rank i; density: the
    # rank of diversity.density_weight over the candidates' features and diversity_neighbors; lof: of
    # diversity.lof_weight over the same k-NN graph; lof_cut: diversity.lof_cut_weight of it (lof_cut_z 1).
    # selection.fps_snap: density: the picks snap to the densest of each nominee's fps_snap_neighbors
    # nearest candidates (fps.Snap over the candidates' k-NN graph; with both, the weights keep
    # diversity_neighbors: one graph of the larger size serves both); quality: to the best-ranked of them;
    # length: to the longest response of them (ties, which the tokens below have, to the better quality).
    # selection.fps_quality_hold_back: the last floor(hold * m) candidates (the lowest by quality) weigh
    # diversity.LOF_CUT_WEIGHT, on top of fps_weight's weights
    pool = make_pool(seed=5)
    tokens = {s: int(t) for s, t in zip(pool, np.random.default_rng(5).integers(1, 6, size=len(pool)))}
    kw = dict(selection_percentage=0.3, quality_method="gate", routing_strata=strata, fps_weight=fps_weight)
    kw.update(diversity_neighbors=4, fps_snap=fps_snap, fps_snap_neighbors=2, lof_cut_z=1.0)
    kw.update(fps_quality_hold_back=hold)
    a = pipeline(
        write_shards(pool, tmp_path / "a", seed=2, shard_size=4, response_tokens=tokens), tmp_path / "oa", **kw
    )
    b = pipeline(
        write_shards(pool, tmp_path / "b", seed=3, shard_size=7, response_tokens=tokens),
        tmp_path / "ob",
        distance_mode="matrix",
        **kw,
    )
    assert a == b
    with h5py.File(tmp_path / "oa" / "candidates.h5") as f:
        feats, m = f["features"][()], len(f["quality"])
        ids = np.array([v.decode() for v in f["sample_id"][()]], dtype=object)
        assert f["response_tokens"][()].tolist() == [tokens[s] for s in ids]  # each candidate's own count
        assert (np.diff(f["quality"][()]) <= 0).all()
        opts = {"strata": f["stratum"][()], "quota": f["quota"][()]} if "stratum" in f else {}
    start = 0 if not opts else int(np.flatnonzero(opts["quota"][opts["strata"]] > 0)[0])
    nbr, dist = knn_graph(feats, 2, "wasserstein")
    nbr4, dist4 = knn_graph(feats, 4, "wasserstein")
    weight = {
        "none": None,
        "quality": 1.0 - np.arange(m) / m,
        "density": density_weight(feats, ids, 4, "wasserstein"),
        "lof": lof_weight(mean_spread(dist4), nbr4, ids),
        "lof_cut": lof_cut_weight(mean_spread(dist4), nbr4, 1.0),
    }[fps_weight]
    if hold:
        weight = np.ones(m) if weight is None else weight.copy()
        weight[m - math.floor(hold * m) :] = LOF_CUT_WEIGHT
    want = fps_streaming(
        feats,
        round(0.3 * len(pool)),
        metric="wasserstein",
        device="cpu",
        start=start,
        log_interval=100,
        weight=weight,
        snap={
            "none": None,
            "density": Snap(nbr, mean_spread(dist)),
            "quality": Snap(nbr, np.arange(m, dtype=float)),
            "length": Snap(nbr, -np.array([tokens[s] for s in ids], dtype=float)),
        }[fps_snap],
        **opts,
    )
    curve = pd.read_csv(tmp_path / "oa" / "curve.tsv", sep="\t")
    assert curve["candidate_index"].tolist() == want.picks.tolist()
    plain = pipeline(
        write_shards(pool, tmp_path / "c", seed=2, shard_size=4, response_tokens=tokens),
        tmp_path / "oc",
        **{**kw, "fps_weight": "none", "fps_snap": "none", "fps_quality_hold_back": 0},
    )
    assert plain != a  # the weights and the snapping change the picks here


@pytest.mark.parametrize("kw", [dict(diversity="facility_location"), dict(disable_diversity=True)])
def test_no_fps_weight_or_hold_back_where_no_fps_picks(tmp_path, kw, caplog):
    # the default fps_weight (lof_cut) and fps_quality_hold_back act on FPS's steps only: with another
    # diversity, or the quality stage, fps_options builds no k-NN graph, no weight, and logs no hold-back
    paths = write_shards(make_pool(seed=5), tmp_path / "shards", seed=2, shard_size=4)
    sel = section(selection_percentage=0.3, quality_method="gate", routing_strata=3, **kw)  # the defaults
    build_candidates(paths, tmp_path / "c.h5", tmp_path / "c.tsv", sel)
    fps = section(selection_percentage=0.3, quality_method="gate", routing_strata=3, fps_quality_hold_back=0.3)
    with caplog.at_level(logging.INFO), open_candidates(tmp_path / "c.h5") as f:
        assert fps_options(f, sel, read_candidates(tmp_path / "c.h5"))["weight"] is None
        assert not any("held back" in m for m in caplog.messages)
        if "diversity" in kw:  # the same candidates with FPS: both act
            assert (fps_options(f, fps, read_candidates(tmp_path / "c.h5"))["weight"] < 1).any()
            assert any("fps_quality_hold_back: the " in m for m in caplog.messages)


def test_the_candidates_read_no_fps_only_key(tmp_path):
    # the rules before FPS get the section with config.FPS_ONLY_KEYS at their defaults (param_before_fps):
    # the candidates must come out the same whatever those keys say
    paths = write_shards(make_pool(seed=5), tmp_path / "shards", seed=2, shard_size=4)
    changed = dict(
        fps_log_interval=3, fps_weight="density", lof_cut_z=1.0, fps_snap="density", fps_snap_neighbors=2, fps_gpus=2
    )
    changed.update(
        knn_exact_max=0, knn_probes=1, fps_quality_hold_back=0.5, fps_relevance_hold_back=0.5, fps_boilerplate_cut_z=1.0
    )
    # diversity too, in a second set: FPS's weights (density) go with diversity fps only
    other = dict(diversity="stratified", diversity_neighbors=3, diversity_clusters=2, fps_quality_hold_back=0.5)
    assert set(changed) | set(other) == set(FPS_ONLY_KEYS)
    for name, kw in (("plain", {}), ("changed", changed), ("other", other)):
        sel = section(selection_percentage=0.3, quality_method="gate", routing_strata=3, **kw)
        (tmp_path / name).mkdir()
        build_candidates(paths, tmp_path / name / "candidates.h5", tmp_path / name / "quality.tsv", sel)
    for name in ("changed", "other"):
        assert (tmp_path / "plain/quality.tsv").read_bytes() == (tmp_path / name / "quality.tsv").read_bytes()
        with h5py.File(tmp_path / "plain/candidates.h5") as a, h5py.File(tmp_path / name / "candidates.h5") as b:
            assert sorted(a) == sorted(b) and sorted(a.attrs) == sorted(b.attrs)
            for key in a.attrs:
                np.testing.assert_array_equal(a.attrs[key], b.attrs[key])
            for key in a:
                np.testing.assert_array_equal(a[key][()], b[key][()])


def assert_weighted_fps(curve_tsv, feats, k, weight, opts):
    """The picks of ``curve_tsv`` are streaming FPS's over ``feats`` with ``weight`` (strata and quota ``opts``),
    started where the pipeline starts (the best candidate of a stratum with picks)."""
    start = 0 if not opts else int(np.flatnonzero(opts["quota"][opts["strata"]] > 0)[0])
    want = fps_streaming(
        feats, k, metric="wasserstein", device="cpu", start=start, log_interval=100, weight=weight, **opts
    )
    assert pd.read_csv(curve_tsv, sep="\t")["candidate_index"].tolist() == want.picks.tolist()


@pytest.mark.parametrize("strata", [1, 3])
def test_relevance_hold_back_in_the_pipeline(tmp_path, strata, caplog):
    # selection.fps_relevance_hold_back: candidates.h5 holds each candidate's dataset and prompt coverage
    # (quality.prompt_coverage over the candidates' records), and FPS runs with diversity.relevance_hold_back's
    # weights on top of the quality hold-back, in either distance mode
    pool = make_pool(seed=5)
    for i, s in enumerate(pool.values()):  # every third response answers its prompt; the others do not
        s["norm"]["prompt"] = f"question {s['norm']['sample_id']} topic{i % 4}"
        s["norm"]["response"] = f"answer topic{i % 4}" if i % 3 else f"answer {s['norm']['sample_id']}"
    kw = dict(selection_percentage=0.3, quality_method="gate", routing_strata=strata, fps_relevance_hold_back=0.4)
    kw.update(fps_quality_hold_back=0.1)
    with caplog.at_level(logging.INFO):
        a = pipeline(write_shards(pool, tmp_path / "a", seed=2, shard_size=4), tmp_path / "oa", **kw)
    assert any("fps_relevance_hold_back: the " in m for m in caplog.messages)
    b = pipeline(
        write_shards(pool, tmp_path / "b", seed=3, shard_size=7), tmp_path / "ob", distance_mode="matrix", **kw
    )
    assert a == b
    with h5py.File(tmp_path / "oa" / "candidates.h5") as f:
        feats, quality = f["features"][()], f["quality"][()]
        ids = f["sample_id"].asstr()[()].astype(object)
        dataset, coverage = f["dataset"].asstr()[()], f["coverage"][()]
        opts = {"strata": f["stratum"][()], "quota": f["quota"][()]} if "stratum" in f else {}
    norm = [pool[s]["norm"] for s in ids]
    assert dataset.tolist() == [r["dataset"] for r in norm]
    np.testing.assert_array_equal(coverage, prompt_coverage(lambda: [(np.arange(len(norm)), norm)], len(norm)))
    assert len(set(coverage.round(6))) > 1  # the answers that ignore their prompt cover less of it
    m = len(ids)
    weight = np.ones(m)
    weight[m - math.floor(0.1 * m) :] = LOF_CUT_WEIGHT  # the quality hold-back (candidates in quality order)
    weight = relevance_hold_back(weight, quality, coverage, dataset, ids, 0.4)
    assert (weight < 1).sum() > math.floor(0.1 * m)
    assert_weighted_fps(tmp_path / "oa" / "curve.tsv", feats, round(0.3 * len(pool)), weight, opts)
    plain = pipeline(
        write_shards(pool, tmp_path / "c", seed=2, shard_size=4),
        tmp_path / "oc",
        **{**kw, "fps_relevance_hold_back": 0},
    )
    assert plain != a  # the hold-back changes the picks here


def filler_pool():
    """make_pool(seed=5) with every fifth response the same filler and each other one its own answer."""
    pool = make_pool(seed=5)
    for i, s in enumerate(pool.values()):
        sid = s["norm"]["sample_id"]
        s["norm"]["response"] = "I hope this helps! Let me know." if i % 5 == 0 else f"Answer {sid}. Really {sid}."
    return pool


@pytest.mark.parametrize("strata", [1, 3])
def test_boilerplate_cut_in_the_pipeline(tmp_path, strata, caplog):
    # selection.fps_boilerplate_cut_z: candidates.h5 holds each candidate's boilerplate share
    # (quality.boilerplate_share over the candidates' records), and FPS runs with diversity.boilerplate_hold_back's
    # weights, in either distance mode; the answers every prompt gets alike are held back
    pool = filler_pool()
    kw = dict(selection_percentage=0.3, quality_method="gate", routing_strata=strata, fps_boilerplate_cut_z=3.5)
    kw.update(fps_quality_hold_back=0)
    with caplog.at_level(logging.INFO):
        a = pipeline(write_shards(pool, tmp_path / "a", seed=2, shard_size=4), tmp_path / "oa", **kw)
    assert any("fps_boilerplate_cut_z: " in m and " held back" in m for m in caplog.messages)
    b = pipeline(
        write_shards(pool, tmp_path / "b", seed=3, shard_size=7), tmp_path / "ob", distance_mode="matrix", **kw
    )
    assert a == b
    with h5py.File(tmp_path / "oa" / "candidates.h5") as f:
        feats = f["features"][()]
        ids = f["sample_id"].asstr()[()].astype(object)
        dataset, share = f["dataset"].asstr()[()], f["boilerplate"][()]
        opts = {"strata": f["stratum"][()], "quota": f["quota"][()]} if "stratum" in f else {}
    norm = [pool[s]["norm"] for s in ids]
    np.testing.assert_array_equal(share, boilerplate_share(lambda: [(np.arange(len(norm)), norm)], len(norm)))
    filler = np.array([r["response"].startswith("I hope") for r in norm])
    np.testing.assert_array_equal(share, filler.astype(float))
    weight = boilerplate_hold_back(None, share, dataset, 3.5)
    np.testing.assert_array_equal(weight < 1, filler)
    assert_weighted_fps(tmp_path / "oa" / "curve.tsv", feats, round(0.3 * len(pool)), weight, opts)
    plain = pipeline(
        write_shards(pool, tmp_path / "c", seed=2, shard_size=4),
        tmp_path / "oc",
        **{**kw, "fps_boilerplate_cut_z": None},
    )

    def fillers(picks):
        return sum(pool[r["sample_id"]]["norm"]["response"].startswith("I hope") for r in picks)

    assert fillers(a) == 0  # FPS had enough else in every stratum
    if strata == 1:  # here plain FPS reaches a filler answer
        assert fillers(plain) > 0


@pytest.mark.parametrize(
    ("setting", "dataset", "message"),
    [
        ({"fps_snap": "length"}, "response_tokens", "has no response_tokens "),
        ({"fps_relevance_hold_back": 0.2}, "coverage", "has no prompt coverage "),
        ({"fps_boilerplate_cut_z": 3.5}, "boilerplate", "has no boilerplate share "),
    ],
)
def test_fps_needs_what_its_setting_reads_in_the_candidates(tmp_path, setting, dataset, message):
    # a candidates.h5 written before fps_snap: length (response_tokens) or fps_relevance_hold_back (coverage)
    # lacks what the setting reads: a clear error naming the rebuild, and no curve
    paths = write_shards(make_pool(seed=5), tmp_path / "shards", seed=2)
    sel = section(selection_percentage=0.3, quality_method="gate", **setting)
    build_candidates(paths, tmp_path / "candidates.h5", tmp_path / "quality.tsv", sel)
    with h5py.File(tmp_path / "candidates.h5", "a") as f:
        del f[dataset]
    with pytest.raises(SelectFlowError, match=message + ".*rule candidates rebuilds it"):
        run_fps(tmp_path / "candidates.h5", tmp_path / "curve.tsv", sel)
    assert not (tmp_path / "curve.tsv").exists()


def test_fps_snap_needs_fps():
    with pytest.raises(SelectFlowError, match="fps_snap: density snaps the picks of farthest-point sampling"):
        section(diversity="facility_location", fps_snap="density")


def test_single_stage_when_importance_not_above_selection_and_ifd_drops(tmp_path):
    pool = make_pool(seed=7)
    paths = write_shards(pool, tmp_path / "a", seed=4)
    build_candidates(
        paths,
        tmp_path / "c.h5",
        tmp_path / "q.tsv",
        section(quality_method="ifd", selection_percentage=0.25, importance_selection_percentage=0.25),
        exclude_ids={"chat:1", "alpaca:2"},
    )
    ifd = {s: v["nll"] / v["alone"] for s, v in pool.items() if s not in {"chat:1", "alpaca:2"}}
    kept = sorted((s for s, v in ifd.items() if v < 1), key=lambda s: (-ifd[s], s))
    cands = read_candidates(tmp_path / "c.h5")
    assert cands.attrs["stage"] == "fps" and cands.sample_id.tolist() == kept
    assert cands.attrs["k"] == round(0.25 * len(ifd))
    table = pd.read_csv(tmp_path / "q.tsv", sep="\t", keep_default_na=False, dtype={"sample_id": str})
    assert len(table) == len(ifd) and set(table.loc[~table["kept"], "sample_id"]) == {s for s in ifd if ifd[s] >= 1}
    assert table["candidate"].sum() == len(kept)


def test_disable_diversity_is_top_k_by_quality(tmp_path):
    pool = make_pool(seed=8)
    selected = pipeline(
        write_shards(pool, tmp_path / "a", seed=5),
        tmp_path / "o",
        selection_percentage=0.1,
        importance_selection_percentage=0.5,
        disable_diversity=True,
        quality_method="gate",
    )
    ranked = sorted(pool, key=lambda s: (-gate_score(pool[s]), s))
    assert [r["sample_id"] for r in selected] == ranked[: round(0.1 * len(pool))]
    curve = pd.read_csv(tmp_path / "o" / "curve.tsv", sep="\t")
    assert curve["min_distance"].isna().all()


@pytest.mark.parametrize(
    "key, value",
    [
        ("selection_percentage", 0.0),
        ("selection_percentage", 1.5),
        ("importance_selection_percentage", -0.1),
        ("importance_selection_percentage", 2),
    ],
)
def test_percentages_outside_unit_interval_rejected(tmp_path, key, value):
    paths = write_shards(make_pool(), tmp_path / "a", seed=0)
    kw = {"selection_percentage": 0.1, "importance_selection_percentage": None, key: value}
    with pytest.raises(SelectFlowError, match=rf"{key} must be a fraction in \(0, 1\]"):
        build_candidates(paths, tmp_path / "c.h5", tmp_path / "q.tsv", section(**kw))
    assert not (tmp_path / "c.h5").exists()


def test_corrupt_candidates_rejected(tmp_path):
    path = tmp_path / "c.h5"
    with h5py.File(path, "w") as f:
        f.attrs["layout_version"] = 1
    with pytest.raises(CorruptFileError, match="no completeness marker.*rule candidates rebuilds it"):
        run_fps(path, tmp_path / "curve.tsv", section())


def continue_selection(argv):
    return cli.main(["continue-selection", *argv])


def test_continue_selection_cli(tmp_path, capsys):
    pool = make_pool(seed=9)
    write_shards(pool, tmp_path / "router_data", seed=6)
    out = tmp_path / "run" / "selected_data.jsonl"
    base = ["--router_data_dir", str(tmp_path / "router_data"), "--output_path", str(out), "--device", "cpu"]
    assert (
        continue_selection(
            base
            + [
                "--selection_percentage",
                "0.2",
                "--importance_selection_percentage",
                "0.5",
                "--mode",
                "matrix",
                "--distance_batch_size",
                "4",
                "--fps_log_interval",
                "3",
            ]
        )
        == 0
    )
    lines = [json.loads(line) for line in open(out)]
    assert len(lines) == round(0.2 * len(pool))
    assert {p.name for p in out.parent.iterdir()} == {
        "selected_data.jsonl",
        "quality.tsv",
        "fps_curve.tsv",
        "selection_summary.tsv",
    }
    table = pd.read_csv(out.with_name("quality.tsv"), sep="\t", keep_default_na=False, dtype={"sample_id": str})
    assert set(table.loc[table["reason"] == "selected", "sample_id"]) == {r["sample_id"] for r in lines}
    assert (table["reason"] == "not_picked").sum() == table["candidate"].sum() - len(lines) > 0
    # same selection in streaming mode
    assert continue_selection(base + ["--selection_percentage", "0.2", "--importance_selection_percentage", "0.5"]) == 0
    assert [json.loads(line) for line in open(out)] == lines

    assert continue_selection(base + ["--selection_percentage", "5"]) == 2
    assert "'selection.selection_percentage' is 5.0, it must be at most 1" in capsys.readouterr().err
    assert (
        continue_selection(
            ["--router_data_dir", str(tmp_path / "run"), "--output_path", str(out), "--selection_percentage", "0.1"]
        )
        == 2
    )
    assert "no *.h5 router-data shards" in capsys.readouterr().err


def test_continue_selection_warns_when_the_selection_is_tiny(tmp_path, caplog):
    pool = make_pool(seed=9)
    write_shards(pool, tmp_path / "router_data", seed=6)
    out = tmp_path / "run" / "selected_data.jsonl"
    base = ["--router_data_dir", str(tmp_path / "router_data"), "--output_path", str(out), "--device", "cpu"]
    with caplog.at_level(logging.WARNING):
        assert continue_selection(base + ["--selection_percentage", "0.02"]) == 0  # round(0.6) -> 1 of 30
    assert f"selection.selection_percentage 0.02 of the {len(pool)} samples under" in caplog.text
    assert "selects 1 record; raise selection_percentage or add records" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        assert continue_selection(base + ["--selection_percentage", "0.1"]) == 0
    assert "raise selection_percentage" not in caplog.text


def test_continue_selection_distance_batch_size_sets_the_fps_chunk(tmp_path, monkeypatch):
    """--distance_batch_size is the streaming FPS chunk, as selection.distance_batch_size is in the workflow."""
    import selectflow.stages.select as stage

    chunks = []
    real = stage.fps_streaming

    def spy(*args, **kw):
        chunks.append(kw["chunk"])
        return real(*args, **kw)

    monkeypatch.setattr(stage, "fps_streaming", spy)
    write_shards(make_pool(seed=10), tmp_path / "router_data", seed=7)
    base = [
        "--router-data-dir",
        str(tmp_path / "router_data"),
        "--device",
        "cpu",
        "--selection-percentage",
        "0.2",
        "--routing-strata",
        "1",
    ]
    outs = {}
    for size in (7, 1000):
        outs[size] = tmp_path / str(size) / "selected_data.jsonl"
        assert continue_selection(base + ["--output-path", str(outs[size]), "--distance-batch-size", str(size)]) == 0
    assert chunks == [7, 1000]
    assert outs[7].read_bytes() == outs[1000].read_bytes()  # the chunk changes the memory, not the picks
    # the rule passes its attempt-scaled resource instead (with the command's FPS weight: the schema's default)
    sel = section(selection_percentage=0.2, fps_weight=schema_default("selection", "fps_weight"))
    paths = sorted((tmp_path / "router_data").rglob("*.h5"))
    build_candidates(paths, tmp_path / "c.h5", tmp_path / "q.tsv", sel)
    run_fps(tmp_path / "c.h5", tmp_path / "curve.tsv", sel, chunk=3)
    assert chunks[-1] == 3
    assert (tmp_path / "curve.tsv").read_bytes() == outs[7].with_name("fps_curve.tsv").read_bytes()


def test_duplicates_keep_the_best_copy_and_are_counted(tmp_path, caplog):
    pool = make_pool(seed=11)
    ids = list(pool)
    best, worse = ids[0], ids[1]  # same text up to case, spacing and punctuation
    said = pool[best]["norm"]["record"]
    pool[worse]["norm"] = {
        **pool[worse]["norm"],
        "record": {**said, "instruction": "DO  " + said["instruction"].upper() + "!", "output": said["output"] + "."},
    }
    pool[best]["norm"] = {**pool[best]["norm"], "record": {**said, "instruction": "do " + said["instruction"]}}
    pool[worse]["logits"] = pool[best]["logits"] - np.array([1.0, -1.0], dtype=np.float32)  # lower gate score
    twin_a, twin_b = ids[2], ids[3]  # different text, identical routing
    pool[twin_b]["probs"] = pool[twin_a]["probs"].copy()
    pool[twin_b]["logits"] = pool[twin_a]["logits"].copy()  # equal quality: the smaller sample_id stays
    paths = write_shards(pool, tmp_path / "a", seed=1)
    selected = pipeline(paths, tmp_path / "o", selection_percentage=1.0, quality_method="gate")
    picked = {r["sample_id"] for r in selected}
    assert (
        best in picked and worse not in picked and min(twin_a, twin_b) in picked and max(twin_a, twin_b) not in picked
    )
    table = pd.read_csv(tmp_path / "o" / "quality.tsv", sep="\t", keep_default_na=False, dtype={"sample_id": str})
    reason = dict(zip(table["sample_id"], table["reason"]))
    assert reason[worse] == f"duplicate_of:{best}"
    assert reason[max(twin_a, twin_b)] == f"duplicate_of:{min(twin_a, twin_b)}"
    assert len(selected) == len(pool) - 2  # k = the whole pool, capped at what is left
    summary = pd.read_csv(tmp_path / "o" / "summary.tsv", sep="\t", keep_default_na=False)
    assert summary["duplicates"].sum() == 2 and summary["selected"].sum() == len(pool) - 2
    assert read_candidates(tmp_path / "o" / "candidates.h5").attrs["n_duplicates"] == 2


def _drop_duplicates_one_key_at_a_time(ids, score, keep, text, routing):
    """The dict-based pass the sorted one replaced: best copy first, text keys, then routing keys."""
    keep, reason = keep.copy(), np.full(len(ids), "", dtype=object)
    kept = np.flatnonzero(keep)
    kept = kept[np.lexsort((ids[kept].astype(str), -score[kept]))]
    for key in (text, routing):
        first = {}
        for i in kept:
            if keep[i] and key[i]:
                if key[i] in first:
                    keep[i], reason[i] = False, f"duplicate_of:{ids[first[key[i]]]}"
                else:
                    first[key[i]] = i
    return keep, reason


@pytest.mark.parametrize("seed", range(5))
def test_duplicates_by_sorting_drop_what_a_dict_pass_drops(seed):
    from types import SimpleNamespace

    from selectflow.select.dedup import drop_duplicates

    rng = np.random.default_rng(seed)
    n = 400
    ids = np.array([f"s:{i}" for i in rng.permutation(n)], dtype=object)
    score = rng.integers(0, 20, size=n).astype(np.float64)  # many ties: the id decides
    keep = rng.random(n) > 0.1
    # few distinct keys, so chains occur (a text copy of one sample, a routing copy of another); b"": no text
    text = np.array([b"" if r < 0.15 else bytes([int(r * 40)]) * 16 for r in rng.random(n)], dtype="S16")
    routing = np.array([bytes([k]) * 16 for k in rng.integers(1, 90, size=n)], dtype="S16")
    pool = SimpleNamespace(sample_id=ids, text_key=text, routing_key=routing, near={}, answer_key=None)
    got_keep, got_reason = keep.copy(), np.full(n, "", dtype=object)
    dropped = drop_duplicates(pool, score, got_keep, got_reason, system_turns=False)
    want_keep, want_reason = _drop_duplicates_one_key_at_a_time(ids, score, keep, text, routing)
    assert dropped == int((keep & ~want_keep).sum()) > 50
    assert (got_keep == want_keep).all() and (got_reason == want_reason).all()


def test_reason_column_and_raw_inputs(tmp_path):
    pool = make_pool(seed=12)
    ids = list(pool)
    pool[ids[0]]["nll"], pool[ids[0]]["alone"] = 2.0, 1.0  # IFD 2: the prompt does not help
    pool[ids[1]]["norm"] = {**pool[ids[1]]["norm"], "response": "   "}  # no response
    for s in ids[2:]:
        pool[s]["alone"] = pool[s]["nll"] * 2
    paths = write_shards(pool, tmp_path / "a", seed=2)
    build_candidates(
        paths,
        tmp_path / "c.h5",
        tmp_path / "q.tsv",
        section(quality_method="combined", selection_percentage=0.1, importance_selection_percentage=0.5),
    )
    table = pd.read_csv(tmp_path / "q.tsv", sep="\t", keep_default_na=False, dtype={"sample_id": str})
    reason = dict(zip(table["sample_id"], table["reason"]))
    assert reason[ids[0]] == "ifd>=1" and reason[ids[1]] == "no_response_tokens"
    m = round(0.5 * len(pool))
    assert (table["reason"] == "candidate").sum() == m == table["candidate"].sum()
    assert (table["reason"] == "below_importance_cut").sum() == len(pool) - 2 - m
    assert set(table.loc[table["candidate"], "reason"]) == {"candidate"}
    row = table.set_index("sample_id").loc[ids[5]]
    assert float(row["nll_response"]) == pytest.approx(pool[ids[5]]["nll"], rel=1e-6)
    assert float(row["nll_response_alone"]) == pytest.approx(pool[ids[5]]["alone"], rel=1e-6)
    assert float(row["quality"]) == pytest.approx(math.log(2.0), rel=1e-5)  # log(1/IFD), no eos data
    assert "gate_mean" in table.columns  # the test shards carry quality logits


def test_fps_warns_when_the_max_min_distance_reaches_zero(tmp_path, caplog):
    pool = make_pool(seed=13)
    ids = list(pool)
    for i, s in enumerate(ids):  # four routing patterns only
        pool[s]["probs"] = pool[ids[i % 4]]["probs"]
    paths = write_shards(pool, tmp_path / "a", seed=3)
    # routing-identical samples are dropped before FPS, so only 4 candidates stay
    build_candidates(
        paths, tmp_path / "c.h5", tmp_path / "q.tsv", section(quality_method="gate", selection_percentage=0.5)
    )
    assert len(read_candidates(tmp_path / "c.h5")) == 4
    # FPS over candidates that repeat each other (written by hand) warns on the console
    with h5py.File(tmp_path / "c.h5", "a") as f:
        f["features"][2] = f["features"][0]
    with caplog.at_level("WARNING"):
        run_fps(tmp_path / "c.h5", tmp_path / "curve.tsv", section())
    assert any("max-min distance reached 0" in r.message for r in caplog.records)


@pytest.mark.parametrize(
    ("strata", "fps_weight", "fps_snap", "hold"),
    [
        (1, "none", "none", {}),
        (3, "none", "none", {}),
        (3, "density", "none", {}),
        (3, "lof", "none", {}),
        (1, "lof_cut", "none", {}),
        (3, "lof_cut", "none", {"fps_quality_hold_back": 0.3}),
        (3, "lof_cut", "none", {"fps_quality_hold_back": 0.1, "fps_relevance_hold_back": 0.3}),
        (3, "none", "density", {}),
        (1, "none", "quality", {}),
        (3, "none", "length", {}),
    ],
)
def test_fps_on_two_ranks_writes_the_same_curve(tmp_path, strata, fps_weight, fps_snap, hold, caplog, monkeypatch):
    # rule fps with selection.fps_gpus: 2 on a CPU box: torchrun starts two gloo ranks, which share
    # the job's threads (Snakemake sets OMP_NUM_THREADS, MKL_NUM_THREADS… to the rule's threads: 2)
    for name in THREAD_VARS:
        monkeypatch.setenv(name, "2")
    pool = make_pool(seed=7)
    paths = write_shards(pool, tmp_path / "a", seed=2)
    kw = dict(selection_percentage=0.3, quality_method="gate", routing_strata=strata, fps_weight=fps_weight)
    kw.update({"fps_snap": fps_snap, "lof_cut_z": 1.0, "fps_quality_hold_back": 0, **hold})
    sel = section(distance_batch_size=4, **kw)
    build_candidates(paths, tmp_path / "candidates.h5", tmp_path / "candidates_quality.tsv", sel)
    assert run_fps(tmp_path / "candidates.h5", tmp_path / "one.tsv", sel) == 9
    ranked = section(distance_batch_size=4, fps_gpus=2, **kw)
    with caplog.at_level(logging.INFO, logger="selectflow.stages.select"):
        assert run_fps(tmp_path / "candidates.h5", tmp_path / "two.tsv", ranked) == 9
    ranks = [m for m in caplog.messages if "rank 0/2 (gloo, cpu): candidate rows [0, " in m]
    assert ranks, "the FPS did not run on two ranks"
    assert ranks[0].endswith(" of 30, 1 CPU threads"), ranks
    if (fps_weight, fps_snap) != ("none", "none"):  # rank 0 (the one that logs) builds the k-NN graph of its half only
        assert any("NN graph of 30 candidates, rows [0, 15): " in m for m in caplog.messages), caplog.messages
    assert (tmp_path / "two.tsv").read_bytes() == (tmp_path / "one.tsv").read_bytes()


def test_fps_above_knn_exact_max_runs_on_the_approximate_graph(tmp_path, caplog, monkeypatch):
    # selection.knn_exact_max: 0 builds the lof weights' k-NN graph from inverted lists, on one
    # rank and on two; 30 candidates make one list, whose search is exhaustive: the exact graph's picks
    for name in THREAD_VARS:
        monkeypatch.setenv(name, "2")
    paths = write_shards(make_pool(seed=7), tmp_path / "a", seed=2)
    kw = dict(
        distance_batch_size=4, selection_percentage=0.3, quality_method="gate", routing_strata=3, fps_weight="lof"
    )
    build_candidates(paths, tmp_path / "candidates.h5", tmp_path / "candidates_quality.tsv", section(**kw))
    assert run_fps(tmp_path / "candidates.h5", tmp_path / "exact.tsv", section(**kw)) == 9
    for ranks in (1, 2):
        caplog.clear()
        with caplog.at_level(logging.INFO):
            sel = section(knn_exact_max=0, fps_gpus=ranks, **kw)
            assert run_fps(tmp_path / "candidates.h5", tmp_path / f"approx{ranks}.tsv", sel) == 9
        rows = "[0, 30)" if ranks == 1 else "[0, 15)"
        want = f"approximate 10-NN graph of 30 candidates, rows {rows}: 1 inverted lists"
        assert any(want in m for m in caplog.messages), caplog.messages
        assert (tmp_path / f"approx{ranks}.tsv").read_bytes() == (tmp_path / "exact.tsv").read_bytes()


def rich_pool(seed):
    """make_pool plus what the candidates step must handle: text and routing duplicates, an empty, a looping
    and a text-less response, a pool-relative unfinished one (nll_eos)."""
    pool = make_pool(seed)
    ids = list(pool)
    rng = np.random.default_rng(seed + 50)
    for s in ids:
        pool[s]["eos"] = float(rng.uniform(0.1, 1.0))
    said = pool[ids[0]]["norm"]["record"]  # ids[1] says what ids[0] says (its record and its prompt)
    pool[ids[1]]["norm"] = {
        **pool[ids[1]]["norm"],
        "prompt": pool[ids[0]]["norm"]["prompt"].upper() + "!",
        "response": pool[ids[0]]["norm"]["response"],
        "record": {
            **pool[ids[1]]["norm"]["record"],
            "instruction": said["instruction"].upper() + "!",
            "output": said["output"],
        },
    }
    pool[ids[2]]["probs"] = pool[ids[3]]["probs"].copy()
    pool[ids[4]]["norm"] = {**pool[ids[4]]["norm"], "response": "   "}
    pool[ids[5]]["norm"] = {**pool[ids[5]]["norm"], "response": "so so so so so so so so so so so"}
    pool[ids[6]]["norm"] = {k: v for k, v in pool[ids[6]]["norm"].items() if k not in ("prompt", "response")}
    pool[ids[7]]["eos"] = 9.0
    pool[ids[8]]["nll"] = 5.0  # ifd >= 1
    for s in ids[:8]:  # ifd < 1, so that the other checks decide
        pool[s]["nll"], pool[s]["alone"] = pool[s]["nll"] / 4, pool[s]["nll"] / 2
    return pool


def write_rich_shards(pool, root, seed, shard_size=4):
    paths = write_shards(pool, root, seed, shard_size)
    for path in paths:
        with h5py.File(path, "a") as f:
            ids = [v.decode() for v in f["sample_id"][()]]
            f.create_dataset("nll_eos", data=np.array([pool[s]["eos"] for s in ids], dtype=np.float32))
    return paths


def h5_digest(path):
    """sha256 of every dataset (name, dtype, shape, values) and attribute of an HDF5 file."""
    import hashlib

    h = hashlib.sha256()
    with h5py.File(path, "r") as f:
        for name in sorted(f):
            data = f[name][()]
            h.update(f"{name}|{data.dtype}|{data.shape}|".encode())
            h.update(
                b"\x00".join(v if isinstance(v, bytes) else str(v).encode() for v in data.ravel())
                if data.dtype.kind == "O"
                else np.ascontiguousarray(data).tobytes()
            )
        for key in sorted(f.attrs):
            h.update(f"{key}={f.attrs[key]!r};".encode())
    return h.hexdigest()[:16]


def file_digest(path):
    import hashlib

    return hashlib.sha256(open(path, "rb").read()).hexdigest()[:16]


# the outputs of build_candidates and write_selection on rich_pool(21) as the in-memory code wrote them
# (commit 3681dd9, before streaming); a change to these bytes is a change of the selection. The two
# TSVs are not pinned: the same code wrote other TSV bytes on three fresh installs (2026-11-29, twice on
# 2026-12-03; the HDF5 values matched; the cause was not found), so the test compares them with
# the whole-pool reference (tests/pool_reference.py) run beside the streaming one
STREAMING_CASES = {
    "combined_strata": dict(
        quality_method="combined", selection_percentage=0.2, importance_selection_percentage=0.6, routing_strata=3
    ),
    "combined_fps": dict(quality_method="combined", selection_percentage=0.25),
    "gate_two_stage": dict(quality_method="gate", selection_percentage=0.2, importance_selection_percentage=0.5),
    "field": dict(quality_method="field", quality_field="score", selection_percentage=0.3, routing_strata=2),
    "perplexity_quality": dict(quality_method="perplexity", selection_percentage=0.2, disable_diversity=True),
    # today's defaults (no pinned bytes: 3681dd9 had neither key): streaming against the whole-pool path
    "combined_pool_cut_kept": dict(
        quality_method="combined", selection_percentage=0.25, routing_strata=3, quality_cut="pool", strata_weight="kept"
    ),
}
# the settings of 3681dd9 where a case does not name them (the defaults changed on 2026-12-04 and 2026-12-06)
PINNED_SETTINGS = dict(quality_cut="fixed", strata_weight="pool", fps_quality_hold_back=0)
# candidates.h5 re-pinned when it gained response_tokens (fps_snap: length), and again when it gained each
# candidate's dataset and prompt coverage (fps_relevance_hold_back), and when it gained the boilerplate share
# (fps_boilerplate_cut_z); its other datasets and attributes hash
# as before, and the other files are unchanged
EXPECTED_DIGESTS = {
    "combined_strata": {  # quota [5, 1, 0]: re-pinned when FPS stopped picking in the stratum with quota 0
        "candidates.h5": "19f979564b5f8c59",
        "curve.tsv": "73daf4c985f81e0c",
        "selected.jsonl": "121bae84d825d9f0",
        "summary.tsv": "20ea501ee6a9f6be",
    },
    "combined_fps": {
        "candidates.h5": "40604aed3c773dd1",
        "curve.tsv": "49874493ea19cc2d",
        "selected.jsonl": "e99e5677b349ee7e",
        "summary.tsv": "16e5a60675f0408b",
    },
    "gate_two_stage": {
        "candidates.h5": "0b18d846cd0d52f0",
        "curve.tsv": "6714cc481e9c125f",
        "selected.jsonl": "78346fcfca77fa35",
        "summary.tsv": "8b3c3f24790ad5e1",
    },
    "field": {
        "candidates.h5": "c2c8163f52270615",
        "curve.tsv": "599c245bdd6140df",
        "selected.jsonl": "61b4e78264edb6d2",
        "summary.tsv": "361d20b0d57f7f5e",
    },
    "perplexity_quality": {
        "candidates.h5": "d91b4187e178b7f4",
        "curve.tsv": "e26ffb74833d75ac",
        "selected.jsonl": "d84c64ebdd3f1fe5",
        "summary.tsv": "e1d2cbd707e24c06",
    },
}


def selection_digests(tmp_path, name, whole=False):
    pool = rich_pool(21)
    paths = write_rich_shards(pool, tmp_path / "shards", seed=3)
    out = tmp_path / (name + ("_whole" if whole else ""))
    sel = section(distance_batch_size=4, **{**PINNED_SETTINGS, **STREAMING_CASES[name]})
    build = build_candidates_whole if whole else build_candidates
    build(paths, out / "candidates.h5", out / "candidates_quality.tsv", sel, exclude_ids={"chat:2"})
    run_fps(out / "candidates.h5", out / "curve.tsv", sel)
    write_selection(
        out / "curve.tsv",
        out / "candidates_quality.tsv",
        paths,
        out / "selected.jsonl",
        out / "summary.tsv",
        out / "quality.tsv",
    )
    return {
        "candidates.h5": h5_digest(out / "candidates.h5"),
        **{
            f: file_digest(out / f)
            for f in ("candidates_quality.tsv", "curve.tsv", "selected.jsonl", "summary.tsv", "quality.tsv")
        },
    }


@pytest.mark.parametrize("name", list(STREAMING_CASES))
def test_streaming_candidates_write_what_the_in_memory_code_wrote(tmp_path, name):
    streamed = selection_digests(tmp_path, name)
    pinned = EXPECTED_DIGESTS.get(name, {})
    assert {f: d for f, d in streamed.items() if f in pinned} == pinned
    # every file, the TSVs included, byte for byte as the whole-pool reference writes them on this machine
    assert streamed == selection_digests(tmp_path, name, whole=True)


def with_hidden(pool, seed=5, size=6):
    """``pool`` with a hidden-state vector per sample, unrelated to its routing (float16 values: stored exactly)."""
    rng = np.random.default_rng(seed)
    for s in pool.values():
        s["hidden"] = rng.normal(size=size).astype(np.float16).astype(np.float32)
    return pool


def test_hidden_features_pick_by_cosine_distance_of_the_hidden_states(tmp_path):
    pool = with_hidden(make_pool())
    paths = write_shards(pool, tmp_path / "a", seed=1)
    kw = dict(selection_percentage=0.2, importance_selection_percentage=0.5, quality_method="gate")
    selected = [r["sample_id"] for r in pipeline(paths, tmp_path / "hidden", features="hidden", **kw)]

    # reference: the same quality stage, FPS over the L2-normalised hidden vectors under cosine distance
    ranked = sorted(pool, key=lambda s: (-gate_score(pool[s]), s))
    stage1 = ranked[: round(0.5 * len(pool))]
    unit = np.stack([pool[s]["hidden"] / np.linalg.norm(pool[s]["hidden"]) for s in stage1])
    ref = fps_streaming(
        features(unit[:, None, :], "cosine"), round(0.2 * len(pool)), metric="cosine", device="cpu", log_interval=100
    )
    assert selected == [stage1[i] for i in ref.picks]
    assert read_candidates(tmp_path / "hidden" / "candidates.h5").attrs["metric"] == "cosine"
    # the key changes what is compared: routing features pick otherwise on this pool
    assert selected != [r["sample_id"] for r in pipeline(paths, tmp_path / "routing", **kw)]


@pytest.mark.parametrize("diversity", ["fps", "facility_location", "kmeans"])
def test_hidden_features_run_with_strata_streamed_as_in_memory(tmp_path, diversity):
    pool = with_hidden(make_pool())
    paths = write_shards(pool, tmp_path / "a", seed=2)
    sel = section(
        features="hidden",
        diversity=diversity,
        routing_strata=3,
        diversity_clusters=3,
        diversity_neighbors=4,
        selection_percentage=0.2,
        importance_selection_percentage=0.6,
    )
    picks = []
    for build in (build_candidates, build_candidates_whole):
        out = tmp_path / build.__name__
        build(paths, out / "c.h5", out / "q.tsv", sel)
        run_fps(out / "c.h5", out / "curve.tsv", sel)
        picks.append(pd.read_csv(out / "curve.tsv", sep="\t", dtype={"sample_id": str})["sample_id"].tolist())
        with h5py.File(out / "c.h5") as f:
            assert f["features"].shape[1] == 6 and f["stratum"][()].max() == 2
    assert picks[0] == picks[1] and len(picks[0]) == round(0.2 * len(pool)) == len(set(picks[0]))


def test_hidden_features_of_shards_dumped_without_them_say_which_key_to_set(tmp_path):
    pool = make_pool()
    paths = write_shards(pool, tmp_path / "a", seed=1)
    sel = section(features="hidden", selection_percentage=0.2)
    with pytest.raises(SelectFlowError, match=r"router_dump\.hidden_states: true.*router dump runs again") as err:
        build_candidates(paths, tmp_path / "c.h5", tmp_path / "q.tsv", sel)
    assert any(str(p) in str(err.value) for p in paths)  # the shard that lacks them is named
    assert not (tmp_path / "c.h5").exists()
    # the same shards serve routing features as before
    build_candidates(paths, tmp_path / "c.h5", tmp_path / "q.tsv", section(selection_percentage=0.2))


def test_strata_seed_seeds_the_routing_kmeans(tmp_path):
    # selection.strata_seed is the seed of strata.kmeans over the kept samples (here every kept sample is a
    # candidate, in quality order): candidates.h5's strata are its partition for that seed, the default
    # seed 0 is the selection before the key, and two seeds split this pool differently
    from selectflow.select.strata import kmeans

    def same_partition(a, b):
        return (np.equal.outer(a, a) == np.equal.outer(b, b)).all()

    pool = make_pool(seed=5)
    paths = write_shards(pool, tmp_path / "shards", seed=2, shard_size=4)
    kw = dict(selection_percentage=0.3, quality_method="gate", routing_strata=3)
    partitions = {}
    for seed in (None, 0, 1, 2):
        out = tmp_path / f"seed_{seed}"
        out.mkdir()
        picks = pipeline(paths, out, **kw, **({} if seed is None else {"strata_seed": seed}))
        with h5py.File(out / "candidates.h5") as f:
            feats, strata = f["features"][()], f["stratum"][()]
        assert same_partition(strata, kmeans(feats, 3, seed=0 if seed is None else seed))
        partitions[seed] = (strata, picks)
    assert same_partition(partitions[None][0], partitions[0][0]) and partitions[None][1] == partitions[0][1]
    assert not all(same_partition(partitions[0][0], partitions[s][0]) for s in (1, 2))


@pytest.mark.parametrize("strata", [1, 3])
def test_stratified_draws_the_held_back_last_in_the_pipeline(tmp_path, strata, caplog):
    # selection.diversity stratified: diversity.stratified over the candidates, seeded by strata_seed, with the
    # hold-backs FPS would read (lof_cut over the k-NN graph, the quality hold-back, the boilerplate cut) as its
    # weights, in either distance mode; the run summary names them
    from selectflow.report.summary import _diversity
    from selectflow.select.candidates import fps_options
    from selectflow.select.diversity import stratified

    pool = filler_pool()
    kw = dict(selection_percentage=0.3, quality_method="gate", routing_strata=strata, diversity="stratified")
    kw.update(fps_weight="lof_cut", diversity_neighbors=4, lof_cut_z=1.0, fps_quality_hold_back=0.1)
    kw.update(fps_boilerplate_cut_z=3.5)
    with caplog.at_level(logging.INFO):
        a = pipeline(write_shards(pool, tmp_path / "a", seed=2, shard_size=4), tmp_path / "oa", strata_seed=7, **kw)
    assert any(m.startswith("stratified: ") for m in caplog.messages)
    b = pipeline(
        write_shards(pool, tmp_path / "b", seed=3, shard_size=7),
        tmp_path / "ob",
        distance_mode="matrix",
        strata_seed=7,
        **kw,
    )
    assert a == b
    sel = section(distance_batch_size=4, fps_log_interval=5, strata_seed=7, **kw)
    with open_candidates(tmp_path / "oa" / "candidates.h5") as f:
        opts = fps_options(f, sel, read_candidates(tmp_path / "oa" / "candidates.h5"))
        ids = f["sample_id"].asstr()[()].astype(object)
        feats, quality = f["features"][()], f["quality"][()]
        dataset, share = f["dataset"].asstr()[()], f["boilerplate"][()]
    weight, k = opts["weight"], round(0.3 * len(pool))
    # held back: an extreme local outlier factor, the lowest 10 % by quality, or mostly boilerplate
    nbr, dist = knn_graph(feats, 4, "wasserstein")
    lowest = np.zeros(len(ids), dtype=bool)
    lowest[np.lexsort((ids.astype(str), -quality))[len(ids) - math.floor(0.1 * len(ids)) :]] = True
    held = (
        (lof_cut_weight(mean_spread(dist), nbr, 1.0) < 1)
        | lowest
        | (boilerplate_hold_back(None, share, dataset, 3.5) < 1)
    )
    np.testing.assert_array_equal(weight < 1, held)
    assert 0 < held.sum() < len(ids)  # some held back, not all
    want = stratified(len(ids), k, 7, opts["strata"], opts["quota"], weight)
    assert sorted(r["sample_id"] for r in a) == sorted(ids[want].tolist())
    assert sum(pool[r["sample_id"]]["norm"]["response"].startswith("I hope") for r in a) == 0
    other = pipeline(write_shards(pool, tmp_path / "c", seed=2, shard_size=4), tmp_path / "oc", strata_seed=8, **kw)
    assert sorted(r["sample_id"] for r in other) != sorted(r["sample_id"] for r in a)
    assert _diversity({"diversity": "stratified", "fps_weight": "lof_cut", "fps_quality_hold_back": 0.05}) == (
        "stratified (fps_weight: lof_cut, fps_quality_hold_back: 0.05)"
    )
