"""The typed config: one dataclass field per schema key, built from the schema's defaults."""

from dataclasses import fields

import pytest
import yaml

from selectflow.config import SECTIONS, build_config
from selectflow.configdoc import SCHEMA
from selectflow.data.check import with_defaults

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

