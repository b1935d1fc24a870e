"""bench/bench_target_task.py's real-text tasks: which records test a task and which are its target."""

import sys

import pytest
import yaml

from selectflow.data.realtext import make_realtext_pool
from tests.workflow import REPO

sys.path.insert(0, str(REPO / "bench"))
import bench_target_task as btt  # noqa: E402


def test_a_real_text_task_is_tested_and_targeted_on_fresh_records_of_its_kinds_apart():
    test, target = btt.real_text_task_sets(["explain_class", "methods"], 1, 2000)
    asked = {rec["instruction"] for rec in make_realtext_pool(2000, 1)}
    assert 0 < len(test) == len(target) <= btt.REAL_TEXT_TASK_SIZE
    assert {rec["kind"] for rec in test + target} == {"explain_class", "methods"}
    # no question of the pool, none in both sets, labels clean, target ids apart from test ids
    assert not asked & {rec["instruction"] for rec in test + target}
    assert not {rec["instruction"] for rec in test} & {rec["instruction"] for rec in target}
    assert {rec["planted"] for rec in test + target} == {"clean"}
    assert all(rec["id"].startswith("rt-test-") for rec in test)
    assert all(rec["id"].startswith("rt-target-") for rec in target)
    # seeded: the same sets again, other ones for another pool
    assert btt.real_text_task_sets(["explain_class", "methods"], 1, 2000) == (test, target)
    assert btt.real_text_task_sets(["explain_class", "methods"], 2, 2000)[0] != test


def test_a_small_task_is_halved_and_an_unknown_one_refused():
    # summarise_module has a handful of fresh records: halved, not capped
    test, target = btt.real_text_task_sets(["summarise_module"], 0, 2000)
    assert 1 <= len(test) == len(target) < btt.REAL_TEXT_TASK_SIZE
    with pytest.raises(SystemExit, match="no_such_kind: 0 fresh real-text records"):
        btt.real_text_task_sets(["no_such_kind"], 0, 2000)


def test_seed_without_the_real_text_pool_is_refused():
    with pytest.raises(SystemExit, match="give --pool realtext"):
        btt.main(["--task", "signature", "--seed", "1"])


def test_a_variant_adds_its_sections_beside_the_bench_s_compare_section():
    keys = btt.parse_variant("hidden:features=hidden,router_dump.hidden_states=true")[1]
    config = yaml.safe_load(btt.compare_yaml(keys, eval="t.jsonl", target="d.jsonl"))
    assert config == {
        "selection": {"features": "hidden"},
        "router_dump": {"hidden_states": True},
        "compare": {"methods": list(btt.METHODS), "full_pools": [], "eval": "t.jsonl", "target": "d.jsonl"},
    }
    assert yaml.safe_load(btt.compare_yaml()) == {"compare": {"methods": list(btt.METHODS), "full_pools": []}}
    with pytest.raises(SystemExit, match="the compare section is the bench's own"):
        btt.main(["--task", "signature", "--variant", "x:compare.seeds=3"])
