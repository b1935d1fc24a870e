"""The selection steps end to end on small shuffled multi-dataset, multi-shard router data."""

import json
import math

import h5py
import numpy as np
import pandas as pd
import pytest

from selectflow.distance import block_path, features
from selectflow.errors import CorruptFileError, SelectFlowError
from selectflow.fps import fps_streaming
from selectflow.routerfile import RouterShard, write_router_shard
from selectflow.select import (
    build_candidates,
    compute_block,
    continue_selection,
    n_blocks,
    read_candidates,
    run_fps,
    write_selection,
)

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
                "norm": {"sample_id": sid, "dataset": name, "line": line, "prompt": "p", "response": "r",
                         "record": {"instruction": f"do {sid}", "output": "ok", "score": float(rng.normal())}},
            }
    return pool


def gate_score(s):
    logits = s["logits"].astype(np.float64)
    return float(np.mean(1 / (1 + np.exp(logits[:, 1] - logits[:, 0]))))


def write_shards(pool, root, seed, shard_size=5):
    """Shuffle samples across datasets, cut into shards under per-dataset-looking folders."""
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
            n_response_tokens=np.full(len(part), 8, dtype=np.int32),
            quality_logits=np.stack([pool[s]["logits"] for s in part]),
            nll_response_alone=np.array([pool[s]["alone"] for s in part], dtype=np.float32),
            record=np.array([json.dumps(pool[s]["norm"]) for s in part], dtype=object),
        )
        path = root / f"group{k % 2}" / f"shard_{k:05d}.h5"
        write_router_shard(path, shard)
        paths.append(path)
    return paths


def pipeline(paths, out, **kw):
    mode = kw.pop("mode", "streaming")
    build_candidates(paths, out / "candidates.h5", out / "quality.tsv", **kw)
    block_dir = None
    if mode == "matrix":
        block_dir = out / "blocks"
        nb = n_blocks(out / "candidates.h5", 4)
        for i in range(nb):
            for j in range(i, nb):
                compute_block(out / "candidates.h5", i, j, 4, block_path(block_dir, i, j), device="cpu", sub_chunk=3)
    run_fps(out / "candidates.h5", out / "curve.tsv", mode=mode, block_dir=block_dir, block_size=4, device="cpu", log_interval=5)
    write_selection(out / "curve.tsv", out / "quality.tsv", paths, out / "selected.jsonl", out / "summary.tsv")
    return [json.loads(line) for line in open(out / "selected.jsonl")]


def test_two_stage_joins_by_sample_id(tmp_path):
    pool = make_pool()
    paths = write_shards(pool, tmp_path / "a", seed=1)
    selected = pipeline(paths, tmp_path / "out", selection_percentage=0.2, importance_selection_percentage=0.5, method="gate")

    # reference: rank the dict by (quality desc, sample_id), keep the top half, FPS from the best
    n = len(pool)
    ranked = sorted(pool, key=lambda s: (-gate_score(pool[s]), s))
    stage1 = ranked[: round(0.5 * n)]
    ref = fps_streaming(features(np.stack([pool[s]["probs"] for s in stage1])), round(0.2 * n), device="cpu")
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


def test_shard_layout_and_mode_do_not_change_the_selection(tmp_path):
    pool = make_pool(seed=5)
    kw = dict(selection_percentage=0.3, importance_selection_percentage=0.6, method="gate")
    a = pipeline(write_shards(pool, tmp_path / "a", seed=2, shard_size=4), tmp_path / "oa", **kw)
    b = pipeline(write_shards(pool, tmp_path / "b", seed=3, shard_size=7), tmp_path / "ob", mode="matrix", **kw)
    assert a == b
    curve_a = pd.read_csv(tmp_path / "oa" / "curve.tsv", sep="\t")
    curve_b = pd.read_csv(tmp_path / "ob" / "curve.tsv", sep="\t")
    pd.testing.assert_frame_equal(curve_a, curve_b)


def test_single_stage_when_importance_not_above_selection_and_ifd_drops(tmp_path):
    pool = make_pool(seed=7)
    paths = write_shards(pool, tmp_path / "a", seed=4)
    build_candidates(paths, tmp_path / "c.h5", tmp_path / "q.tsv", method="ifd", selection_percentage=0.25,
                     importance_selection_percentage=0.25, exclude_ids={"chat:1", "alpaca:2"})
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
    selected = pipeline(write_shards(pool, tmp_path / "a", seed=5), tmp_path / "o", selection_percentage=0.1,
                        importance_selection_percentage=0.5, disable_diversity=True, method="gate")
    ranked = sorted(pool, key=lambda s: (-gate_score(pool[s]), s))
    assert [r["sample_id"] for r in selected] == ranked[: round(0.1 * len(pool))]
    curve = pd.read_csv(tmp_path / "o" / "curve.tsv", sep="\t")
    assert curve["min_distance"].isna().all()


@pytest.mark.parametrize("key, value", [("selection_percentage", 0.0), ("selection_percentage", 1.5),
                                        ("importance_selection_percentage", -0.1), ("importance_selection_percentage", 2)])
def test_percentages_outside_unit_interval_rejected(tmp_path, key, value):
    paths = write_shards(make_pool(), tmp_path / "a", seed=0)
    kw = {"selection_percentage": 0.1, "importance_selection_percentage": None, key: value}
    with pytest.raises(SelectFlowError, match=rf"{key} must be a fraction in \(0, 1\]"):
        build_candidates(paths, tmp_path / "c.h5", tmp_path / "q.tsv", **kw)
    assert not (tmp_path / "c.h5").exists()


def test_corrupt_candidates_rejected(tmp_path):
    path = tmp_path / "c.h5"
    with h5py.File(path, "w") as f:
        f.attrs["layout_version"] = 1
    with pytest.raises(CorruptFileError, match="no completeness marker.*rule candidates rebuilds it"):
        run_fps(path, tmp_path / "curve.tsv")


def test_continue_selection_cli(tmp_path, capsys):
    pool = make_pool(seed=9)
    write_shards(pool, tmp_path / "router_data", seed=6)
    out = tmp_path / "run" / "selected_data.jsonl"
    base = ["--router_data_dir", str(tmp_path / "router_data"), "--output_path", str(out), "--device", "cpu"]
    assert continue_selection(base + ["--selection_percentage", "0.2", "--importance_selection_percentage", "0.5",
                                      "--mode", "matrix", "--distance_batch_size", "4", "--fps_log_interval", "3"]) == 0
    lines = [json.loads(line) for line in open(out)]
    assert len(lines) == round(0.2 * len(pool))
    assert {p.name for p in out.parent.iterdir()} == {"selected_data.jsonl", "quality.tsv", "fps_curve.tsv", "selection_summary.tsv"}
    # same selection in streaming mode
    assert continue_selection(base + ["--selection_percentage", "0.2", "--importance_selection_percentage", "0.5"]) == 0
    assert [json.loads(line) for line in open(out)] == lines

    assert continue_selection(base + ["--selection_percentage", "5"]) == 2
    assert "selection_percentage must be a fraction in (0, 1]" in capsys.readouterr().err
    assert continue_selection(["--router_data_dir", str(tmp_path / "run"), "--output_path", str(out),
                               "--selection_percentage", "0.1"]) == 2
    assert "no *.h5 router-data shards" in capsys.readouterr().err
