"""The junk suite and the real-text pool: every kind changes the record, is seeded, and keeps the format."""

import collections
import json
import random

import pytest

from selectflow.data.junk import HELD_BACK_KINDS, JUNK_KINDS, TUNING_KINDS, make_junk, plant_junk
from selectflow.data.realtext import (
    FORMATS,
    candidate_records,
    in_format,
    make_realtext_pool,
    make_realtext_testset,
    write_realtext_pool,
)
from selectflow.data.records import read_dataset, record_prompt_response, write_jsonl

CLEAN = {
    "id": "c1",
    "instruction": "Explain what a dictionary is in Python.",
    "input": "",
    "output": "A dictionary maps keys to values. Looking a key up takes constant time on average.",
    "planted": "clean",
}
DONOR = {
    "id": "c2",
    "instruction": "Name the capital of Peru.",
    "input": "",
    "output": "The capital of Peru is Lima.",
    "planted": "clean",
}


def test_the_split_is_fixed_and_covers_every_kind():
    # written down before anything was tuned: random.Random(23).shuffle of the sorted names, halves
    kinds = sorted(JUNK_KINDS)
    random.Random(23).shuffle(kinds)
    assert (TUNING_KINDS, HELD_BACK_KINDS) == (tuple(kinds[:5]), tuple(kinds[5:]))
    assert len(JUNK_KINDS) >= 10 and set(TUNING_KINDS) | set(HELD_BACK_KINDS) == set(JUNK_KINDS)


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("kind", JUNK_KINDS)
def test_each_kind_changes_the_response_deterministically_and_stays_readable(tmp_path, kind, fmt):
    clean, donor = in_format(CLEAN, fmt), in_format(DONOR, fmt)
    junk = make_junk(clean, kind, seed=7, donor=donor)
    assert junk == make_junk(clean, kind, seed=7, donor=donor)
    assert junk["planted"] == f"junk_{kind}" and junk["id"] == "c1"
    write_jsonl(tmp_path / "j.jsonl", [clean, junk])
    (before, after) = read_dataset(tmp_path / "j.jsonl", fmt)
    assert after["prompt"] == before["prompt"]
    assert after["response"] != before["response"]
    assert clean == in_format(CLEAN, fmt)  # the input record is not modified


def test_what_each_kind_does():
    out = {k: make_junk(CLEAN, k, seed=1, donor=DONOR)["output"] for k in JUNK_KINDS}
    assert out["other_answer"] == DONOR["output"]
    assert out["echo"] == CLEAN["instruction"]
    assert CLEAN["output"].startswith(out["truncated"]) and len(out["truncated"]) < len(CLEAN["output"])
    cut = len(out["truncated"])
    assert CLEAN["output"][cut - 1].isalnum() and CLEAN["output"][cut].isalnum()  # mid-word
    assert out["empty"] == ""
    assert not set(out["wrong_language"].lower().split()) & set(CLEAN["output"].lower().split())
    assert len(out["loop"].split()) >= 45 and len(set(out["loop"].split())) <= 6
    words = [w.strip(",") for w in out["keywords"].split()]
    assert set(words) <= {w.strip(".").lower() for w in CLEAN["output"].split()}
    assert out["refusal"] != out["filler"] and "dictionary" not in out["filler"]
    assert make_junk(in_format(CLEAN, "messages"), "empty", 1)["messages"][-1]["content"].strip()


def test_seed_changes_the_seeded_kinds():
    for kind in ("truncated", "char_noise", "loop", "keywords", "filler"):
        outs = {make_junk(CLEAN, kind, seed=s)["output"] for s in range(6)}
        assert len(outs) > 1, kind


def test_plant_junk_rate_kinds_and_donors():
    pool = [
        {**CLEAN, "id": f"r{i}", "output": f"Answer number {i} says something true about item {i}."} for i in range(400)
    ]
    planted = plant_junk(pool, 0.2, seed=3)
    assert planted == plant_junk(pool, 0.2, seed=3) and planted != plant_junk(pool, 0.2, seed=4)
    kinds = collections.Counter(r["planted"] for r in planted)
    assert kinds["clean"] == 320 and all(kinds[f"junk_{k}"] == 8 for k in JUNK_KINDS)
    outputs = {r["output"] for r in pool}
    for old, new in zip(pool, planted):
        if new["planted"] == "junk_other_answer":
            assert new["output"] in outputs and new["output"] != old["output"]


def test_realtext_pool_is_seeded_labelled_and_readable(tmp_path):
    a, b = make_realtext_pool(600, seed=5), make_realtext_pool(600, seed=5)
    assert a == b and a != make_realtext_pool(600, seed=6)
    assert len(a) == 600 and len({r["id"] for r in a}) == 600
    by_id = {r["id"]: r for r in a}
    dups = [r for r in a if r["planted"] == "near_duplicate"]
    # the junk is planted after the duplicates: an original may have become junk since
    assert dups and all(
        by_id[r["duplicate_of"]]["planted"] in ("clean", *(f"junk_{k}" for k in JUNK_KINDS)) for r in dups
    )
    for r in dups:
        src = by_id[r["duplicate_of"]]
        assert r["instruction"] == src["instruction"]
        if src["planted"] != "clean":
            continue
        assert r["output"] != src["output"]
        assert len(set(r["output"].split()) ^ set(src["output"].split())) <= 6
    assert {r["kind"] for r in a} >= {"explain", "signature", "explain_class", "summarise_module", "list_functions"}
    assert not any(
        "`_" in r["instruction"] or "._" in r["instruction"].split("`")[1] for r in a if "`" in r["instruction"]
    )
    paths = write_realtext_pool(tmp_path, 900, seed=1, junk_rate=0.2)
    ids = []
    for fmt, path in paths.items():
        recs = read_dataset(path, fmt)
        assert len(recs) == 300 and {r["record"]["planted"] for r in recs} > {"clean"}
        assert all(r["sample_id"] == r["record"]["id"] for r in recs)
        ids += [r["sample_id"] for r in recs]
        first = json.loads(path.read_text().splitlines()[0])
        assert {"alpaca": "instruction", "sharegpt": "conversations", "messages": "messages"}[fmt] in first
    assert len(set(ids)) == 900
    assert sum(
        r["record"]["planted"].startswith("junk_") for p in paths.values() for r in read_dataset(p, "x")
    ) == pytest.approx(180, abs=3)


def test_realtext_testset_is_clean_seeded_and_asks_nothing_the_written_pool_asks(tmp_path):
    paths = write_realtext_pool(tmp_path, 900, seed=2, junk_rate=0.2)
    pool = [r["record"] for p in paths.values() for r in read_dataset(p, "x")]
    asked = {record_prompt_response(r)[0] for r in pool}
    test = make_realtext_testset(7, 900, seed=2)
    assert test == make_realtext_testset(7, 900, seed=2) != make_realtext_testset(7, 900, seed=3)
    assert not asked & {record_prompt_response(r)[0] for r in test}
    assert {r["planted"] for r in test} == {"clean"} and len({r["id"] for r in test}) == len(test)
    # a candidate record each, unchanged, and per_kind of every kind (900 records leave enough fresh ones)
    cands = {(c["instruction"], c["output"], c["kind"]) for c in candidate_records()}
    assert all((r["instruction"], r["output"], r["kind"]) in cands for r in test)
    counts = collections.Counter(r["kind"] for r in test)
    assert counts == {kind: 7 for kind in {c[2] for c in cands}}


def test_realtext_records_do_not_depend_on_what_the_caller_imported(monkeypatch):
    # libraries patch standard modules on import (transformers adds logging.Logger.warning_once;
    # a replaced inspect.getfile has another __module__): read in this process, the records change
    import inspect
    import logging

    from selectflow.data import realtext

    realtext.candidate_records.cache_clear()
    # (pytest itself replaces sys hooks: even here the records would differ from a plain interpreter's)
    before, here = realtext.candidate_records(), realtext.records_here()

    def getfile(obj):  # a wrapper defined here: its __module__ is this test's
        return inspect.getsourcefile(obj)

    monkeypatch.setattr(logging.Logger, "warning_twice", lambda self, msg: None, raising=False)
    monkeypatch.setattr(inspect, "getfile", getfile)
    assert realtext.records_here() != here
    realtext.candidate_records.cache_clear()
    assert realtext.candidate_records() == before


def test_real_text_pool_command(tmp_path):
    from selectflow.cli import main

    assert main(["real-text-pool", "--out", str(tmp_path), "--n_records", "90", "--junk-rate", "0.2"]) == 0
    recs = [r for fmt in FORMATS for r in read_dataset(tmp_path / f"{fmt}.jsonl", fmt)]
    assert len(recs) == 90 and sum(r["record"]["planted"].startswith("junk_") for r in recs) == 18
