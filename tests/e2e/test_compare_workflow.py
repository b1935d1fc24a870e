"""`snakemake compare` end to end on a small demo: the v2 table, and what the student may not have seen."""

import json

import numpy as np
import pandas as pd
import pytest

from selectflow.data.demotest import TEST_KINDS
from selectflow.data.records import iter_jsonl, read_dataset
from selectflow.report.yardstick import _text_key
from tests.workflow import config_variant, snakemake

pytestmark = pytest.mark.slow

SETTINGS = {
    "clusters": 4,
    "test_per_kind": 3,
    "seeds": 2,
    "full_pool_seeds": 2,
    "student_hidden": 32,
    "student_vocab": 400,
    "train": {"epochs": 2},
}


@pytest.fixture(scope="module")
def compared(tmp_path_factory):
    work = tmp_path_factory.mktemp("compare")
    config = config_variant("small", work, compare=SETTINGS)
    snakemake(work, "compare", "--cores", "2", "--resources", "gpu=1", config=config, timeout=1500)
    return work, work / "results" / "small" / "compare"


def _records(path):
    return [rec for _, rec in iter_jsonl(path)]


def test_the_table_has_every_method_both_measures_and_an_interval(compared):
    _, out = compared
    down = pd.read_csv(out / "downstream.tsv", sep="\t").set_index("method")
    assert list(down.index) == [
        "fps",
        "random",
        "quality",
        "kmeans",
        "score_first",
        "semdedup",
        "full_kept",
        "full_raw",
    ]
    for column in ("macro_loss", "macro_loss_ci95", "macro_accuracy", "macro_accuracy_ci95"):
        assert down[column].notna().all(), column
    assert (down["n_seeds"] == 2).all()
    # random trains on a draw per seed; fps (compare.fps_draws off) and the rest on one selection
    assert down["n_selections"].to_dict() == {m: 2 if m == "random" else 1 for m in down.index}
    assert "one fps selection for its 2 fine-tunes" in (out / "caption.txt").read_text()
    for kind in TEST_KINDS:
        assert down[f"loss:{kind}"].notna().all() and down[f"accuracy:{kind}"].between(0, 1).all()
    # every k-sized selection trains the same steps; a full pool the same epochs over more samples
    sized = down.drop(index=["full_kept", "full_raw"])
    assert sized["size"].nunique() == 1 and sized["steps"].nunique() == 1
    assert down.at["full_raw", "size"] > down.at["full_kept", "size"] > sized["size"].iloc[0]
    assert down.at["full_raw", "steps"] > sized["steps"].iloc[0]
    caption = (out / "caption.txt").read_text()
    assert "macro accuracy" in caption and "fps" in caption and "random" in caption
    assert (out / "compare.png").stat().st_size > 0


def test_the_test_set_is_disjoint_from_the_pool_and_no_student_saw_it(compared):
    work, out = compared
    pool = read_dataset(work / "resources" / "demo" / "demo_pool.jsonl", "demo")
    test = _records(out / "test.jsonl")
    test_keys = {_text_key(r) for r in test}
    assert {r["kind"] for r in test} == set(TEST_KINDS)
    assert not test_keys & {_text_key(r) for r in pool}
    assert not {r["id"] for r in test} & {r["sample_id"] for r in pool}
    # every student's training data: the selections, the random draws, the full pools
    data = sorted(out.glob("*/selected_data.jsonl")) + sorted((out / "random").glob("draw_*.jsonl"))
    assert len(data) == 8 + 1
    pool_ids = {r["sample_id"] for r in pool}
    for path in data:
        recs = _records(path)
        assert {r["sample_id"] for r in recs} <= pool_ids, path
        assert not {_text_key(r) for r in recs} & test_keys, path
    # the random baseline draws anew for each seed
    first, second = (
        {r["sample_id"] for r in _records(p)}
        for p in (out / "random" / "selected_data.jsonl", out / "random" / "draw_1.jsonl")
    )
    assert len(first) == len(second) and first != second
    # the student's weights are its seed's fresh initialisation: it saw no text before its fine-tunes
    from selectflow.train.student import STUDENT_INFO, build_scratch_student

    fresh = build_scratch_student(work / "fresh", seed=0, hidden=32, layers=2, vocab_size=400, max_positions=128)
    student = out / "student"
    assert (student / "model.safetensors").read_bytes() == (fresh / "model.safetensors").read_bytes()
    assert json.loads((student / STUDENT_INFO).read_text())["weights_trained_on"] == []


def test_eval_rows_are_per_seed_and_kind(compared):
    _, out = compared
    table = pd.read_csv(out / "fps" / "eval.tsv", sep="\t")
    assert sorted(table["seed"].unique()) == [0, 1]
    assert len(table) == 2 * len(TEST_KINDS) and (table["n"] == 3).all()
    assert np.isfinite(table["loss"]).all() and table["accuracy"].between(0, 1).all()
