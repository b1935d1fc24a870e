"""Reading the schemas (``schemas/config.schema.yaml``, ``schemas/train.schema.yaml``): defaults,
allowed values, and the check of a config against them with its messages.

The schema is the only place a default or an allowed value is written: :func:`load_config` (the CLI)
and Snakemake's ``validate`` (``rules/common.smk``) check a config against it and fill in its
defaults; code that needs a key's default or allowed values reads them with
:func:`schema_default` / :func:`schema_enum`. :func:`check_against_schema` raises one
:class:`~selectflow.runtime.errors.SelectFlowError` naming every mistake (the key, what is wrong,
what to write instead).
"""

from __future__ import annotations

import copy
import os
from functools import cache
from pathlib import Path
from typing import Any

import yaml

from selectflow.configdoc import SCHEMAS
from selectflow.runtime.errors import SelectFlowError


@cache
def schema(name: str = "config.schema.yaml") -> dict:
    """A schema of ``schemas/``, read once per process."""
    return yaml.safe_load((SCHEMAS / name).read_text())


def with_defaults(config: dict, schema_node: dict) -> dict:
    """``config`` with every missing key of ``schema_node`` (nested sections included) set to its default."""
    out = dict(config)
    for key, sub in schema_node.get("properties", {}).items():
        if key not in out and "default" in sub:
            out[key] = copy.deepcopy(sub["default"])  # the schema is cached: never hand out its objects
        if sub.get("type") == "object" and "properties" in sub:
            out[key] = with_defaults(out.get(key) or {}, sub)
    return out


def section_values(name: str, values: dict | None = None) -> dict:
    """Section ``name`` of the config schema as a mapping: ``values`` over the schema's defaults."""
    return with_defaults(values or {}, schema()["properties"][name])


def _schema_node(section_name: str | None, key: str, name: str) -> dict:
    """Key ``key`` of section ``section_name`` (None: the top level) of schema ``name``."""
    node = schema(name)
    if section_name is not None:
        node = node["properties"][section_name]
    return node["properties"][key]


def schema_default(section_name: str | None, key: str, name: str = "config.schema.yaml") -> Any:
    """The schema's default of ``section_name.key``: for a library's own defaults (e.g. a
    dataclass ``field(default_factory=...)``, a command-line flag), so that no default is written twice."""
    return copy.deepcopy(_schema_node(section_name, key, name)["default"])


def schema_enum(section_name: str | None, key: str, name: str = "config.schema.yaml") -> tuple:
    """The values the schema allows for ``section_name.key`` (a list's items for a list key), in its order."""
    node = _schema_node(section_name, key, name)
    return tuple(node.get("items", node)["enum"])


def train_schema() -> dict:
    return schema("train.schema.yaml")


def train_defaults() -> dict:
    """The trainer's defaults, read from ``schemas/train.schema.yaml`` (nested sections as mappings)."""

    def defaults(node: dict):
        if node.get("type") == "object" and "properties" in node:
            return {k: defaults(v) for k, v in node["properties"].items()}
        return copy.deepcopy(node["default"])

    return defaults(train_schema())


def load_config(configfile: str | os.PathLike) -> dict:
    """The config file, checked against the schema (:func:`check_against_schema`) with its defaults filled in:
    the one way a command of the CLI reads a config."""
    path = Path(configfile)
    if not path.is_file():
        raise SelectFlowError(f"config file {path} does not exist")
    try:
        config = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise SelectFlowError(f"{path}: not valid YAML ({exc})") from None
    check_against_schema(config, str(path))
    return with_defaults(config, schema())


MAX_PROBLEMS = 5  # config mistakes shown at once (each in at most 3 lines): the message stays under 20 lines
MODEL_HINT = (
    "add a model section:\n    model:\n      path: /path/to/a/local/hf/moe-model\n"
    "  or a small MoE built on your own datasets (rule proxy_model, no download): model: {path: proxy}"
)


def check_against_schema(
    config: Any, source: str, name: str = "config.schema.yaml", prefix: str = "", section_name: str | None = None
) -> None:
    """Raise one :class:`~selectflow.runtime.errors.SelectFlowError` naming every mistake of ``config``
    against schema ``name`` (at most :data:`MAX_PROBLEMS`, each with its key, what is wrong and what to
    write instead); nothing when it is valid. ``source`` names the config file(s) or flags; ``prefix`` the
    section ``config`` is (``train``), for the key names; ``section_name``: ``config`` is that section of the
    schema (its name is the prefix). No schema dump, no traceback."""
    from jsonschema import Draft202012Validator

    node = schema(name) if section_name is None else schema(name)["properties"][section_name]
    prefix = prefix or section_name or ""
    errors = sorted(Draft202012Validator(node).iter_errors(config), key=lambda e: [str(p) for p in e.path])
    if not errors:
        return
    lines = [f"{source}: {len(errors)} config mistake{'s' if len(errors) > 1 else ''} (every key: config/README.md)"]
    for error in errors[:MAX_PROBLEMS]:
        lines.append("- " + _explain(error, prefix))
    if len(errors) > MAX_PROBLEMS:
        lines.append(f"- and {len(errors) - MAX_PROBLEMS} more; fix these and run again to see them")
    raise SelectFlowError("\n".join(lines))


def _key(path, prefix: str = "") -> str:
    return ".".join([prefix] * bool(prefix) + [str(p) for p in path]) or "(top level)"


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


_TYPE_NAMES = {
    "object": "a mapping (key: value lines)",
    "array": "a list",
    "string": "a string",
    "number": "a number",
    "integer": "a whole number",
    "boolean": "true or false",
    "null": "null",
}


def _about(spec: Any) -> str:
    """`` (what the key is)``: its schema description, cut at a word near 100 characters."""
    text = spec.get("description", "") if isinstance(spec, dict) else ""
    if len(text) > 100:
        text = text[:100].rsplit(" ", 1)[0] + " …"
    return f" ({text})" if text else ""


def _explain(error, prefix: str) -> str:
    """One config mistake in words: the key, what is wrong, what to write instead."""
    import difflib

    key, rule, spec = _key(error.absolute_path, prefix), error.validator, error.schema
    what = _about(spec)
    if rule == "required":
        missing = next((k for k in error.validator_value if k not in error.instance), error.validator_value[0])
        full = _key([*error.absolute_path, missing], prefix)
        if full == "model":
            return f"'model' is missing: the run needs the MoE model whose routing it reads; {MODEL_HINT}"
        return f"'{full}' is missing{_about(spec.get('properties', {}).get(missing, {}))}; add it"
    if rule == "additionalProperties":
        allowed = sorted(spec.get("properties", {}))
        extra = [k for k in error.instance if k not in allowed]
        parts = []
        for k in extra:
            near = difflib.get_close_matches(str(k), allowed, n=1, cutoff=0.6)
            parts.append(
                f"'{_key([*error.absolute_path, k], prefix)}' is not a config key; "
                + (f"did you mean '{near[0]}'?" if near else f"valid keys here: {', '.join(allowed)[:200]}")
            )
        return "\n  ".join(parts)
    if rule == "type":
        kinds = error.validator_value if isinstance(error.validator_value, list) else [error.validator_value]
        want = " or ".join(_TYPE_NAMES.get(k, k) for k in kinds)
        return f"'{key}' is {_shown(error.instance)}, it must be {want}{what}"
    if rule in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"):
        bound = {
            "minimum": "at least",
            "maximum": "at most",
            "exclusiveMinimum": "more than",
            "exclusiveMaximum": "less than",
        }[rule]
        return f"'{key}' is {_shown(error.instance)}, it must be {bound} {error.validator_value}{what}"
    if rule == "enum":
        near = difflib.get_close_matches(str(error.instance), [str(v) for v in error.validator_value], n=1, cutoff=0.5)
        return (
            f"'{key}' is {_shown(error.instance)}, it must be one of {', '.join(map(str, error.validator_value))}"
            + (f"; did you mean '{near[0]}'?" if near else "")
        )
    if rule == "pattern":
        return f"'{key}' is {_shown(error.instance)}, which does not match {error.validator_value}{what}"
    if rule in ("minProperties", "minItems"):
        entries = "entry" if error.validator_value == 1 else "entries"
        return f"'{key}' is empty, it needs at least {error.validator_value} {entries}{what}"
    if rule == "uniqueItems":
        return f"'{key}' lists an item twice ({_shown(error.instance)}); name each once"
    return f"'{key}': {error.message[:200]}"
