"""Render the config keys table (config/README.md) from selectflow/schemas/config.schema.yaml.

The schema is the single source of truth for keys, types, defaults and meanings; the
table is regenerated with ``python -m selectflow config-doc > config/README.md`` and a
test checks that the committed file is current.
"""

from __future__ import annotations

import json
from pathlib import Path

import yaml

SCHEMAS = Path(__file__).resolve().parent / "schemas"  # package data: a wheel install has them too
SCHEMA = SCHEMAS / "config.schema.yaml"

HEADER = """# Configuration keys

`config/config.yaml` is validated against `selectflow/schemas/config.schema.yaml` when the workflow
starts; an unknown key or a wrong type stops the run with a message naming the key.
Missing keys take the defaults below. Generated from the schema by
`python -m selectflow config-doc > config/README.md` (a test keeps it current).

| key | type | default | meaning |
|---|---|---|---|
"""


def _type(node: dict) -> str:
    t = node.get("type", "object")
    text = " or ".join(t) if isinstance(t, list) else t
    if "enum" in node:
        # YAML null is Python None: show it as the config spells it, and once (the type says "or null")
        text += ": " + ", ".join(f"`{v}`" for v in node["enum"] if v is not None)
    return text


def _one_line(text: str) -> str:
    """A description as one table cell: folded YAML blocks end in a newline that would end the row."""
    return " ".join(str(text).split())


def _rows(node: dict, prefix: str = ""):
    for key, sub in node.get("properties", {}).items():
        name = f"{prefix}{key}"
        if sub.get("type") == "object" and "properties" in sub:
            if sub.get("description"):
                yield name, "section", "", sub["description"]
            yield from _rows(sub, name + ".")
        else:
            if "default" in sub:
                value = sub["default"]
                shown = f"`{value if isinstance(value, str) else json.dumps(value)}`"
            else:
                shown = "(required)" if key in node.get("required", []) else ""
            yield name, _type(sub), shown, sub.get("description", "")


def render(schema_path: Path = SCHEMA) -> str:
    schema = yaml.safe_load(schema_path.read_text())
    # the trainer's keys live in their own schema (checked by the train package)
    train = yaml.safe_load((SCHEMAS / "train.schema.yaml").read_text())
    schema["properties"]["train"]["properties"].update(train["properties"])
    cell = lambda text: text.replace("|", "\\|")  # noqa: E731 - a pipe would end the table cell
    lines = [f"| `{k}` | {cell(t)} | {cell(d)} | {cell(_one_line(m))} |" for k, t, d, m in _rows(schema)]
    return HEADER + "\n".join(lines) + "\n"
