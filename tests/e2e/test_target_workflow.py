"""`selection.target` and compare's method `target` through Snakemake on the small demo."""

import h5py
import numpy as np
import pandas as pd
import pytest

from selectflow.config import selection_section
from selectflow.data.demotest import make_demo_testset
from selectflow.data.records import iter_jsonl, write_jsonl
from selectflow.report.yardstick import _text_key
from selectflow.select.candidates import read_candidates, target_features
from selectflow.stages.select import TARGET_ORDER_SEED
from tests.select.test_target import _reference
from tests.workflow import config_variant, snakemake

pytestmark = pytest.mark.slow

SEL = "results/small/selection"
CMP = "results/small/compare"


@pytest.fixture(scope="module")
def ran(tmp_path_factory):
    work = tmp_path_factory.mktemp("target")
    dev = work / "dev.jsonl"
    write_jsonl(dev, make_demo_testset(2, 7, lambda rec: False))
    config = config_variant(
        "small",
        work,
        selection={"target": str(dev)},
        compare={"methods": ["fps", "target"], "test_per_kind": 3, "full_pools": []},
    )
    snakemake(
        work,
        f"{SEL}/selected_data.jsonl",
        f"{CMP}/target/selected_data.jsonl",
        "--cores",
        "2",
        "--resources",
        "gpu=1",
        config=config,
        timeout=1500,
    )
    return work, dev


def test_the_selection_is_the_reference_round_robin_toward_the_target(ran):
    work, dev = ran
    with h5py.File(work / "results/small/target/router.h5") as f:
        assert f.attrs["complete"] and len(f["sample_id"]) == sum(1 for _ in iter_jsonl(dev))
    cands = read_candidates(work / SEL / "candidates.h5")
    with h5py.File(work / SEL / "candidates.h5") as f:
        feats = f["features"][()]
    targets = target_features(
        work / "results/small/target/router.h5", selection_section({"metric": cands.attrs["metric"]})
    )
    targets = targets[np.random.default_rng(TARGET_ORDER_SEED).permutation(len(targets))]
    curve = pd.read_csv(work / SEL / "fps_curve.tsv", sep="\t")
    want = _reference(targets, feats, int(cands.attrs["k"]), cands.attrs["metric"])
    np.testing.assert_array_equal(curve["candidate_index"], want)
    selected = [rec for _, rec in iter_jsonl(work / SEL / "selected_data.jsonl")]
    assert [r["sample_id"] for r in selected] == list(cands.sample_id[want])
    assert not any(r["sample_id"].startswith("target:") for r in selected)  # never part of the pool


def test_compare_target_set_and_picks_hold_no_test_record(ran):
    work, _ = ran
    test = {_text_key(r) for _, r in iter_jsonl(work / CMP / "test.jsonl")}
    dev = [r for _, r in iter_jsonl(work / CMP / "target_set/dev.jsonl")]
    assert len(dev) == len(test) > 0 and not {_text_key(r) for r in dev} & test
    picks = [r for _, r in iter_jsonl(work / CMP / "target/selected_data.jsonl")]
    assert len(picks) == int(read_candidates(work / CMP / "candidates.h5").attrs["k"])
    assert not {_text_key(r) for r in picks} & test
    assert {r["sample_id"] for r in picks} <= set(read_candidates(work / CMP / "candidates.h5").sample_id)
    table = pd.read_csv(work / CMP / "target/picks.tsv", sep="\t")
    assert list(table.columns) == ["step", "sample_id", "candidate_index", "min_distance"]
