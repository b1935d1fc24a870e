"""The typed config: one dataclass field per schema key, built from the schema's defaults."""

from dataclasses import fields

import pytest
import yaml

from selectflow.config import SECTIONS, build_config, with_defaults
from selectflow.configdoc import SCHEMA

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
