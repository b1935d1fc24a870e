"""The typed config: one dataclass field per schema key, built from the schema's defaults."""

from dataclasses import fields

import pytest
import yaml

from selectflow.config import SECTIONS, build_config, with_defaults
from selectflow.configdoc import SCHEMA
from selectflow.runtime.errors import SelectFlowError

SCHEMA_DOC = yaml.safe_load(SCHEMA.read_text())


@pytest.mark.parametrize("name", sorted(SECTIONS))
def test_each_section_has_exactly_the_schema_keys(name):
    keys = set(SCHEMA_DOC["properties"][name]["properties"])
    assert {f.name for f in fields(SECTIONS[name])} == keys


def test_defaults_come_from_the_schema_and_sections_are_frozen():
    cfg = build_config(with_defaults({"datasets": {"a": "a.jsonl"}, "model": {"path": "m"}}, SCHEMA_DOC))
    sel = SCHEMA_DOC["properties"]["selection"]["properties"]
    assert cfg.selection.selection_percentage == sel["selection_percentage"]["default"]
    assert cfg.retry.factor == SCHEMA_DOC["properties"]["retry"]["properties"]["factor"]["default"]
    with pytest.raises(AttributeError):
        cfg.selection.metric = "l2"  # frozen



def test_train_config_has_exactly_the_train_schema_keys():
    from selectflow.config import NESTED, TrainConfig, train_schema

    keys = train_schema()["properties"]
    assert [f.name for f in fields(TrainConfig)] == list(keys)
    for name, cls in NESTED.items():
        assert [f.name for f in fields(cls)] == list(keys[name]["properties"])


def test_train_sections_are_resolved_once_with_the_warmup_overrides():
    from selectflow.config import TrainConfig

    raw = {"datasets": {"a": "a.jsonl"}, "model": {"path": "m"},
           "train": {"preset": "minimal", "max_steps": 7, "lora": {"r": 4}}, "warmup": {"train": {"max_steps": 2}}}
    cfg = build_config(with_defaults(raw, SCHEMA_DOC))
    train, warmup = cfg.train.settings, cfg.warmup.train
    assert isinstance(train, TrainConfig) and cfg.train.enabled and cfg.train.model_path is None
    assert (train.micro_batch_size, train.gradient_accumulation_steps, train.max_steps, train.lora.r) == (1, 8, 7, 4)
    assert (warmup.max_steps, warmup.micro_batch_size, warmup.lora.r) == (2, 1, 4)
    with pytest.raises(AttributeError):
        train.lora.r = 8  # frozen


def test_a_bad_train_key_is_named():
    from selectflow.runtime.errors import SelectFlowError

    raw = {"datasets": {"a": "a.jsonl"}, "model": {"path": "m"}, "warmup": {"train": {"batch_size": 4}}}
    with pytest.raises(SelectFlowError, match="train.batch_size"):
        build_config(with_defaults(raw, SCHEMA_DOC))


def test_sections_travel_as_plain_params_and_come_back_equal():
    # Snakemake's params rerun trigger compares only builtin values: a section must travel as a mapping
    from selectflow.config import as_param, from_param

    cfg = build_config(with_defaults({"datasets": {"a": "a.jsonl"}, "model": {"path": "m"}}, SCHEMA_DOC))
    for value in (cfg.selection, cfg.index, cfg.compare, cfg.warmup, cfg.train.settings):
        param = as_param(value)
        assert isinstance(param, dict) and "object at 0x" not in repr(param)
        assert from_param(type(value), param) == value


@pytest.mark.parametrize("config, words", [
    ({"datasets": {"a": "a.jsonl"}}, ["'model' is missing", "model:", "path:", "{path: proxy}"]),
    ({"datasets": {"a": "a.jsonl"}, "model": {"path": "m"}, "selection": {"selection_percentag": 0.1}},
     ["'selection.selection_percentag' is not a config key; did you mean 'selection_percentage'?"]),
    ({"datasets": {"a": "a.jsonl"}, "model": {"path": "m"}, "selection": {"routing_strata": "4"}},
     ["'selection.routing_strata' is '4', it must be a whole number"]),
    ({"datasets": {"a": "a.jsonl"}, "model": {"path": "m"}, "selection": {"near_duplicate_threshold": 1.5}},
     ["'selection.near_duplicate_threshold' is 1.5, it must be at most 1"]),
    ({"datasets": {"a": "a.jsonl"}, "model": {"path": "m"}, "selection": {"metric": "cosin"}},
     ["'selection.metric' is 'cosin', it must be one of wasserstein, cosine, l2; did you mean 'cosine'?"]),
    ({"datasets": {"a": "a.jsonl"}, "model": {"path": "m"}, "wramup": {}}, ["'wramup' is not a config key; did you mean 'warmup'?"]),
    ({"datasets": {"a": "a.jsonl"}, "model": {"path": "m"}, "selection": 0.05},
     ["'selection' is 0.05, it must be a mapping"]),
])
def test_config_mistakes_are_named_in_a_few_lines(config, words):
    from selectflow.config import check_against_schema

    with pytest.raises(SelectFlowError) as err:
        check_against_schema(config, "my.yaml")
    text = str(err.value)
    assert text.startswith("my.yaml: 1 config mistake") and len(text.splitlines()) <= 20
    assert all(w in text for w in words), text
    assert "properties" not in text and "$schema" not in text


def test_many_config_mistakes_stay_under_twenty_lines():
    from selectflow.config import check_against_schema

    bad = {"selection": {f"key{i}": i for i in range(30)}, "router_dump": {"batch_size": "x", "max_length": -1},
           "index": {"window_size": 0}, "shard_size": "big"}
    with pytest.raises(SelectFlowError) as err:
        check_against_schema(bad, "my.yaml")
    text = str(err.value)
    assert len(text.splitlines()) <= 20 and "more; fix these and run again" in text, text
    check_against_schema({"datasets": {"a": "a.jsonl"}, "model": {"path": "m"}}, "my.yaml")  # valid: no error
