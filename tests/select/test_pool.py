"""The streamed pool (selectflow.select.pool) against the whole-pool reference (tests/pool_reference.py):
the same per-sample arrays and keys, the same quality, duplicates and candidates, on small pools of
several shards with exact, routing and near duplicates, hidden states and a record field."""

import dataclasses
import json

import h5py
import numpy as np
import pytest

from selectflow.config import selection_section
from selectflow.router.routerfile import RouterShard, write_router_shard
from selectflow.select.dedup import drop_duplicates
from selectflow.select.pool import scan_pool
from selectflow.select.quality import assess
from selectflow.stages.select import build_candidates
from tests.pool_reference import build_candidates_whole, whole_pool

L, E, H = 2, 4, 6
WORDS = (
    "rice water salt pan lid heat boil stir drain serve warm butter pepper onion garlic oil slow fast "
    "minute hour cup spoon fork plate bowl green red small large fresh"
).split()


def sentence(rng, n=18):
    return " ".join(rng.choice(WORDS, size=n))


def make_samples(seed=0, n=56):
    """sample_id -> (normalised record, routing [L, E], hidden [H], nll, alone, eos, gate logits), with
    planted copies: exact text (case and punctuation), near text (a word changed), identical routing,
    an empty and a looping answer."""
    rng = np.random.default_rng(seed)
    samples = {}
    for i in range(n):
        sid = f"{'abc'[i % 3]}:{i}"
        question, answer = sentence(rng), sentence(rng, 12)
        samples[sid] = {
            "question": question,
            "answer": answer,
            "dataset": "abc"[i % 3],
            "probs": rng.dirichlet(np.ones(E), size=L).astype(np.float32),
            "hidden": rng.normal(size=H).astype(np.float16).astype(np.float32),
            "nll": float(rng.uniform(0.5, 1.5)),
            "alone": float(rng.uniform(1.6, 3.0)),
            "eos": float(rng.uniform(0.1, 1.0)),
            "logits": rng.normal(size=(L, 2)).astype(np.float32),
            "score": float(rng.normal()),
        }
    ids = list(samples)
    for src, dst in ((0, 10), (1, 20), (2, 40)):  # exact copies: the same words, other case and punctuation
        samples[ids[dst]].update(
            question=samples[ids[src]]["question"].upper() + "?", answer=samples[ids[src]]["answer"] + "!"
        )
    for src, dst in ((3, 13), (4, 33), (5, 50)):  # near copies: one word of the question changed
        words = samples[ids[src]]["question"].split()
        words[9] = "zucchini"
        samples[ids[dst]].update(question=" ".join(words), answer=samples[ids[src]]["answer"])
    for src, dst in ((6, 16), (7, 47)):  # routing copies
        samples[ids[dst]]["probs"] = samples[ids[src]]["probs"].copy()
    samples[ids[8]]["answer"] = "   "
    samples[ids[9]]["answer"] = "so so so so so so so so so so so so"
    for i, dst in enumerate((11, 12)):  # a chat copy of 1 under another system turn: a copy unless system turns count
        samples[ids[dst]].update(
            question=samples[ids[1]]["question"],
            answer=samples[ids[1]]["answer"],
            system=f"you are assistant number {i}",
        )
    return samples


def record(s):
    """The normalised record of sample ``s``: Alpaca, or messages with a system turn."""
    if "system" in s:
        original = {
            "messages": [
                {"role": "system", "content": s["system"]},
                {"role": "user", "content": s["question"]},
                {"role": "assistant", "content": s["answer"]},
            ],
            "score": s["score"],
        }
        prompt = f"### System:\n{s['system']}\n\n### User:\n{s['question']}\n\n### Assistant:\n"
    else:
        original, prompt = {"instruction": s["question"], "output": s["answer"], "score": s["score"]}, s["question"]
    return json.dumps(
        {
            "sample_id": s["sample_id"],
            "dataset": s["dataset"],
            "prompt": prompt,
            "response": s["answer"],
            "record": original,
        }
    )


def write_samples(samples, root, seed, shard_size=7, without_records=()):
    """Shuffled into shards of ``shard_size`` under two folders; shards ``without_records`` have no records."""
    ids = list(samples)
    np.random.default_rng(seed).shuffle(ids)
    paths = []
    for k, lo in enumerate(range(0, len(ids), shard_size)):
        part = [samples[s] | {"sample_id": s} for s in ids[lo : lo + shard_size]]
        records = [record(s) for s in part]
        paths.append(root / f"group{k % 2}" / f"shard_{k:05d}.h5")
        write_router_shard(
            paths[-1],
            RouterShard(
                sample_id=np.array([s["sample_id"] for s in part], dtype=object),
                moe_probs=np.stack([s["probs"] for s in part]),
                nll_response=np.array([s["nll"] for s in part], dtype=np.float32),
                n_tokens=np.full(len(part), 30, dtype=np.int32),
                n_response_tokens=np.full(len(part), 12, dtype=np.int32),
                quality_logits=np.stack([s["logits"] for s in part]),
                nll_response_alone=np.array([s["alone"] for s in part], dtype=np.float32),
                nll_eos=np.array([s["eos"] for s in part], dtype=np.float32),
                record=None if k in without_records else np.array(records, dtype=object),
                hidden=np.stack([s["hidden"] for s in part]),
            ),
        )
    return paths


def section(**kw):
    return selection_section({"device": "cpu", "near_duplicate_threshold": 0.6, **kw})


CASES = {
    "combined_near_strata": dict(quality_method="combined", selection_percentage=0.2, routing_strata=3),
    "hidden_strata": dict(
        quality_method="combined",
        features="hidden",
        selection_percentage=0.25,
        importance_selection_percentage=0.6,
        routing_strata=2,
    ),
    "field": dict(quality_method="field", quality_field="score", selection_percentage=0.3, routing_strata=1),
    "gate_two_stage_fixed_cut": dict(
        quality_method="gate",
        quality_cut="fixed",
        selection_percentage=0.2,
        importance_selection_percentage=0.5,
        routing_strata=1,
    ),
    "perplexity_no_near_system_turns": dict(
        quality_method="perplexity",
        near_duplicate_threshold=None,
        dedup_system_turns=True,
        selection_percentage=0.2,
        disable_diversity=True,
    ),
}


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    return write_samples(make_samples(), tmp_path_factory.mktemp("shards"), seed=1)


def equal(a, b):
    if a is None or b is None:
        return a is None and b is None
    return a.dtype == b.dtype and a.shape == b.shape and np.array_equal(a, b, equal_nan=a.dtype.kind == "f")


def assert_same_pool(got, want):
    for f in dataclasses.fields(got):
        if f.name == "near":
            assert got.near.keys() == want.near.keys()
            assert all(equal(got.near[k], want.near[k]) for k in got.near), "near keys differ"
        elif f.name != "rows":
            assert equal(getattr(got, f.name), getattr(want, f.name)), f.name


@pytest.mark.parametrize("case", list(CASES))
def test_the_streamed_pool_holds_what_the_whole_pool_computes(shards, case):
    sel = section(**CASES[case])
    got, want = scan_pool(shards, sel), whole_pool(shards, sel)
    assert len(got.rows.paths) == len(shards) > 1 and len(got) == 56
    assert_same_pool(got, want)
    assert (got.near != {}) == (sel.near_duplicate_threshold is not None)
    assert set(got.dataset) == {"a", "b", "c"} and (got.field_value is not None) == (case == "field")
    # rows read back from their shards, in any order, are the whole pool's rows
    rows = np.random.default_rng(0).permutation(len(got))[:30]
    assert (got.rows.records(rows) == want.rows.records(rows)).all()
    for hidden in (False, True):
        np.testing.assert_array_equal(
            got.rows.vectors(rows, hidden, lambda v: v * 2), want.rows.vectors(rows, hidden, lambda v: v * 2)
        )


@pytest.mark.parametrize("case", list(CASES))
def test_quality_and_duplicates_of_the_streamed_pool_are_the_whole_pools(shards, case):
    sel = section(**CASES[case])
    results = []
    for pool in (scan_pool(shards, sel), whole_pool(shards, sel)):
        a = assess(pool, sel.quality_method, sel.quality_field, sel.quality_cut, sel.quality_cut_z)
        keep, reason, similarity = a.keep.copy(), a.reason.copy(), np.full(len(pool), np.nan)
        n = drop_duplicates(
            pool,
            a.score,
            keep,
            reason,
            similarity,
            near_threshold=sel.near_duplicate_threshold,
            system_turns=sel.dedup_system_turns,
        )
        assert pool.near == {}  # spent
        results.append((a, n, keep, reason, similarity))
    (a, n, keep, reason, similarity), (b, m, keep_b, reason_b, similarity_b) = results
    np.testing.assert_array_equal(a.score, b.score)
    assert (a.keep == b.keep).all() and (a.reason == b.reason).all()
    assert a.inputs.keys() == b.inputs.keys() and all(equal(a.inputs[k], b.inputs[k]) for k in a.inputs)
    assert n == m and (keep == keep_b).all() and (reason == reason_b).all()
    np.testing.assert_array_equal(similarity, similarity_b)
    # the planted copies are found: 3 text, 2 routing and (system turns not counted) 2 chat copies; 3 near ones
    assert int((similarity == 1).sum()) == (5 if sel.dedup_system_turns else 7)
    assert int(((similarity < 1) & (similarity > 0)).sum()) == (0 if sel.near_duplicate_threshold is None else 3)


def h5_contents(path):
    with h5py.File(path) as f:
        return {name: f[name][()] for name in f}, dict(f.attrs)


@pytest.mark.parametrize("case", list(CASES))
def test_candidates_of_the_streamed_pool_are_the_whole_pools(shards, tmp_path, case):
    sel = section(**CASES[case])
    k = build_candidates(shards, tmp_path / "s.h5", tmp_path / "s.tsv", sel, exclude_ids={"b:1"})
    assert k == build_candidates_whole(shards, tmp_path / "w.h5", tmp_path / "w.tsv", sel, exclude_ids={"b:1"})
    (got, got_attrs), (want, want_attrs) = h5_contents(tmp_path / "s.h5"), h5_contents(tmp_path / "w.h5")
    assert got.keys() == want.keys() and all(equal(got[name], want[name]) for name in got)
    assert got_attrs == want_attrs
    assert (tmp_path / "s.tsv").read_bytes() == (tmp_path / "w.tsv").read_bytes()
    assert got["features"].shape[1] == (H if sel.features == "hidden" else L * E)


def test_a_shard_without_records_gives_the_pool_no_record_values(tmp_path):
    paths = write_samples(make_samples(seed=3), tmp_path, seed=2, without_records=(2,))
    sel = section(quality_method="combined", selection_percentage=0.2, routing_strata=1)
    got = scan_pool(paths, sel)
    assert_same_pool(got, whole_pool(paths, sel))
    assert got.text_key is None and got.empty_response is None and got.near == {} and set(got.dataset) == {""}
    build_candidates(paths, tmp_path / "s.h5", tmp_path / "s.tsv", sel)
    build_candidates_whole(paths, tmp_path / "w.h5", tmp_path / "w.tsv", sel)
    assert (tmp_path / "s.tsv").read_bytes() == (tmp_path / "w.tsv").read_bytes()
