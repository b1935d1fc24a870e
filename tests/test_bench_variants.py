"""bench/bench_variants.py's bookkeeping: which pools a run draws, how variants parse, the pooled counts."""

import json
import math
import shutil
import sys

import pandas as pd
import pytest
import yaml

from selectflow.data.realtext import make_realtext_testset
from tests.workflow import REPO

sys.path.insert(0, str(REPO / "bench"))
import bench_variants as bv  # noqa: E402


def test_pool_runs_draw_the_given_seeds_and_name_only_other_seeds():
    runs = bv.pool_runs(["demo", "junksuite", "realtext"], {"realtext": [0, 1, 2]})
    assert runs == [("demo", None), ("junksuite", 3), ("realtext", 0), ("realtext", 1), ("realtext", 2)]
    assert [bv.run_name(p, s) for p, s in runs] == ["demo", "junksuite", "realtext", "realtext_s1", "realtext_s2"]


def test_a_variant_sets_selection_keys_or_any_sections_keys_checked_against_the_schema():
    assert bv.parse_variant("d:fps_weight=density,proxy.pretrain_epochs=3") == (
        "d",
        {"selection": {"fps_weight": "density"}, "proxy": {"pretrain_epochs": 3}},
    )
    assert bv.parse_variant("plain") == ("plain", {})
    with pytest.raises(SystemExit, match="not KEY=VALUE with a key of"):
        bv.parse_variant("x:no_such_key=1")


def _row(pool, variant, loss, loss_half, acc=math.nan, acc_half=math.nan):
    return {
        "pool": pool,
        "variant": variant,
        "loss_minus_random": loss,
        "loss_minus_random_ci95": loss_half,
        "accuracy_minus_random": acc,
        "accuracy_minus_random_ci95": acc_half,
    }


def test_pooled_counts_pools_below_and_above_random_per_recipe_and_variant():
    table = pd.DataFrame(
        [
            _row("realtext", "default", -0.4, 0.3),  # below, beyond
            _row("realtext_s1", "default", -0.1, 0.3),  # below, within
            _row("realtext_s2", "default", 0.2, 0.1),  # above, beyond
            _row("junksuite", "default", -0.2, 0.1, 0.05, 0.01),  # one pool of its recipe: no line
        ]
    )
    lines = bv.pooled(table)
    assert lines == [
        "realtext   default        loss over 3 pools: fps below random on 2 (1 beyond), above on 1 (1 beyond), "
        "mean -0.100"
    ]


def test_realclean_is_realtexts_pool_tested_on_fresh_clean_records(tmp_path):
    (tmp_path / "config").mkdir()
    shutil.copy2(REPO / "config" / "config.yaml", tmp_path / "config" / "config.yaml")
    configs = bv.write_pools(tmp_path, [("realtext", 4), ("realclean", 4)])
    text, clean = (yaml.safe_load(configs[r].read_text()) for r in ("realtext_s4", "realclean_s4"))
    for fmt in text["datasets"]:
        assert (tmp_path / text["datasets"][fmt]).read_bytes() == (tmp_path / clean["datasets"][fmt]).read_bytes()
    assert text["compare"]["eval"] != clean["compare"]["eval"]
    test = [json.loads(line) for line in (tmp_path / clean["compare"]["eval"]).read_text().splitlines()]
    assert test == make_realtext_testset(20, 2000, 4)
    assert bv.POOLS[:3] == tuple(bv.DEFAULT_POOLS) and "realclean" not in bv.DEFAULT_POOLS


def test_a_baselines_difference_is_printed_with_its_verdict_and_nan_measures_skipped():
    row = {
        "pool": "realclean_s1",
        "variant": "default",
        "baselines": "longest",
        "picks": 100,
        "junk_tuning": 3,
        "junk_held_back": 1,
        **{f"{m}_accuracy": math.nan for m in ("fps", "random", "longest")},
        "fps_loss": 6.5,
        "fps_loss_ci95": 0.1,
        "random_loss": 6.8,
        "random_loss_ci95": 0.1,
        **_row("realclean_s1", "default", -0.3, 0.12),
        "loss_minus_longest": 0.2,
        "loss_minus_longest_ci95": 0.25,
        "accuracy_minus_longest": math.nan,
        "accuracy_minus_longest_ci95": math.nan,
    }
    text = bv.line(row)
    assert "(-0.300 ± 0.120, beyond)" in text
    assert "loss fps − longest +0.200 ± 0.250 (within)" in text and "accuracy fps − longest" not in text
    assert text.endswith("junk 3 + 1 of 100 (4.0%)")
    assert "fps − longest" not in bv.line({**row, "baselines": ""})


def test_junk_in_counts_the_picks_of_every_selection_given(tmp_path):
    # with compare.fps_draws fps trains on a selection per fine-tune: the junk of all of them counts
    pool = tmp_path / "pool.jsonl"
    kinds = {"a": "", "b": "junk_loop", "c": "junk_char_noise", "d": ""}
    pool.write_text("".join(json.dumps({"id": i, "planted": k}) + "\n" for i, k in kinds.items()))
    draws = []
    for name, ids in (("selected_data.jsonl", ["a", "b"]), ("draw_1.jsonl", ["demo:b", "c", "d"])):
        draws.append(tmp_path / name)
        draws[-1].write_text("".join(json.dumps({"sample_id": i}) + "\n" for i in ids))
    assert "loop" in bv.TUNING_KINDS and "char_noise" in bv.HELD_BACK_KINDS
    assert bv.junk_in(draws[:1], [pool]) == {"picks": 2, "junk_tuning": 1, "junk_held_back": 0}
    assert bv.junk_in(draws, [pool]) == {"picks": 5, "junk_tuning": 2, "junk_held_back": 1}
