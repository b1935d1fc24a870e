"""The validated config as frozen dataclasses, one per section, built once per run.

The schema (``schemas/config.schema.yaml``, ``schemas/train.schema.yaml``) is the only place a
default or an allowed value is written: :func:`load_config` (the CLI) and Snakemake's ``validate``
(``rules/common.smk``) check a config against it and fill in its defaults; :func:`build_config`
gives every section of that mapping a typed, read-only view. A field here and a key in the schema
are kept equal by ``tests/test_config.py``; code that needs a key's allowed values reads them
with :func:`schema_enum`.

The typed sections reach a Snakemake job one way: the rule passes ``as_param(CFG.x)`` as a param
and the script turns it back with :func:`from_param`.

The ``train:`` section is resolved once as well (:class:`TrainConfig`, by
:func:`resolve_train_config`: schema defaults, then the loader preset, then the user's keys); the
warm-up's train settings are the train section with ``warmup.train`` laid over it.

Loader presets follow the GPU-cache loader notes (seed 001): ``basic`` is the device cache alone,
``prefetch`` the prefetching loader alone, ``combined`` both, ``aggressive`` the largest cache
and deepest prefetch (≥24 GB cards), ``minimal`` the least memory (≤12 GB cards: small cache,
prefetch of 1, micro-batch 1). Every preset keeps the effective batch at 8 samples. Where
the notes use ``num_workers=1`` together with the device cache (``combined``) this uses 0:
the cache lives in the process that owns the device, so a worker process could neither see
nor fill it; the prefetch thread does the overlapping instead. ``prefetch`` also uses no
worker process: its thread already overlaps tokenisation with compute, and a worker only
adds the inter-process copy of every batch (``bench/bench_loader.py`` measures it).
``pin_memory`` is off wherever the cache is on (cached tensors are already on the device).
The preset-controlled keys default to ``null`` in the schema ("take it from the preset, else
from :data:`BASE`"), so a config filled with the schema's defaults does not mask the preset.
"""

from __future__ import annotations

import copy
import os
from dataclasses import asdict, dataclass, fields, is_dataclass
from functools import cache
from pathlib import Path
from typing import Any, get_type_hints

import yaml

from selectflow.configdoc import SCHEMAS
from selectflow.layout import Layout
from selectflow.runtime.errors import SelectFlowError
from selectflow.runtime.jobs import JobSettings, RetryConfig

DEMO_POOL = "resources/demo/demo_pool.jsonl"  # rule demo_pool's output (rules/data.smk)


@dataclass(frozen=True)
class DemoConfig:
    n_records: int
    seed: int


@dataclass(frozen=True)
class ProxyConfig:
    seed: int
    vocab_size: int
    n_layers: int
    n_experts: int
    hidden: int
    pretrain_epochs: float
    batch_size: int
    learning_rate: float
    max_length: int


@dataclass(frozen=True)
class RouterDumpConfig:
    batch_size: int
    max_length: int
    ifd: bool
    router_pattern: str
    router_source: str
    softmax_logits: bool
    hidden_states: bool
    quality_gate_pattern: str | None
    device: str
    dtype: str
    shards_per_job: int


@dataclass(frozen=True)
class SelectionConfig:
    selection_percentage: float
    importance_selection_percentage: float | None
    disable_diversity: bool
    diversity: str
    target: str | None
    diversity_neighbors: int
    diversity_clusters: int
    features: str
    quality_method: str
    routing_strata: int
    strata_weight: str
    quality_field: str | None
    quality_cut: str
    quality_cut_z: float
    near_duplicate_threshold: float | None
    dedup_system_turns: bool
    metric: str
    distance_mode: str
    distance_batch_size: int
    fps_log_interval: int
    fps_gpus: int
    device: str


@dataclass(frozen=True)
class LoraConfig:
    enabled: bool
    r: int
    alpha: float
    dropout: float
    target_modules: str | list


@dataclass(frozen=True)
class CpuOffloadConfig:
    enabled: bool
    max_memory: dict


@dataclass(frozen=True)
class TrainConfig:
    """The trainer's settings (``schemas/train.schema.yaml``), preset resolved: no key is null
    except ``preset``, ``max_steps``, ``gpu_cache_bytes`` and ``gpu_memory_budget``."""

    preset: str | None
    micro_batch_size: int
    gradient_accumulation_steps: int
    max_length: int
    precision: str
    gradient_checkpointing: bool
    learning_rate: float
    weight_decay: float
    max_grad_norm: float
    epochs: int
    max_steps: int | None
    warmup_ratio: float
    seed: int
    save_every: int
    monitor_interval: int
    empty_cache_every: int
    use_gpu_cache: bool
    gpu_cache_size: int
    gpu_cache_bytes: int | str | None
    use_prefetch: bool
    prefetch_factor: int
    num_workers: int
    pin_memory: bool
    gpu_memory_budget: int | str | None
    expandable_segments: bool
    lora: LoraConfig
    cpu_offload: CpuOffloadConfig
    load_in_8bit: bool
    device: str


NESTED = {"lora": LoraConfig, "cpu_offload": CpuOffloadConfig}


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


def selection_section(values: dict | None = None, **overrides) -> SelectionConfig:
    """The selection section: ``values`` and ``overrides`` over the schema's defaults (not validated)."""
    return section(SelectionConfig, section_values("selection", {**(values or {}), **overrides}))


def train_defaults() -> dict:
    """The trainer's defaults, read from ``schemas/train.schema.yaml`` (nested sections as mappings)."""

    def defaults(node: dict):
        if node.get("type") == "object" and "properties" in node:
            return {k: defaults(v) for k, v in node["properties"].items()}
        return copy.deepcopy(node["default"])

    return defaults(train_schema())


def train_config_of(values: dict[str, Any]) -> TrainConfig:
    """A :class:`TrainConfig` from a complete, checked mapping (``lora`` / ``cpu_offload`` as mappings)."""
    nested = {name: section(cls, values[name]) for name, cls in NESTED.items()}
    return TrainConfig(**{f.name: values[f.name] for f in fields(TrainConfig) if f.name not in NESTED}, **nested)


def lora_settings(lora: LoraConfig | dict) -> LoraConfig:
    """``lora`` as a :class:`LoraConfig`; a partial mapping takes the schema's defaults for missing keys."""
    if isinstance(lora, LoraConfig):
        return lora
    return section(LoraConfig, {**train_defaults()["lora"], **lora})


PRESET_KEYS = (
    "use_gpu_cache",
    "gpu_cache_size",
    "use_prefetch",
    "prefetch_factor",
    "num_workers",
    "pin_memory",
    "micro_batch_size",
    "gradient_accumulation_steps",
)

# the preset-controlled keys when no preset is set
BASE = {
    "use_gpu_cache": False,
    "gpu_cache_size": 5000,
    "use_prefetch": False,
    "prefetch_factor": 2,
    "num_workers": 0,
    "pin_memory": False,
    "micro_batch_size": 4,
    "gradient_accumulation_steps": 2,
}

# train.preset -> its preset-controlled keys (the names: train.schema.yaml's preset enum, a test keeps them equal)
PRESETS = {
    "basic": {
        "use_gpu_cache": True,
        "gpu_cache_size": 5000,
        "use_prefetch": False,
        "prefetch_factor": 2,
        "num_workers": 0,
        "pin_memory": False,
        "micro_batch_size": 4,
        "gradient_accumulation_steps": 2,
    },
    "prefetch": {
        "use_gpu_cache": False,
        "gpu_cache_size": 0,
        "use_prefetch": True,
        "prefetch_factor": 2,
        "num_workers": 0,
        "pin_memory": True,
        "micro_batch_size": 4,
        "gradient_accumulation_steps": 2,
    },
    "combined": {
        "use_gpu_cache": True,
        "gpu_cache_size": 3000,
        "use_prefetch": True,
        "prefetch_factor": 2,
        "num_workers": 0,
        "pin_memory": False,
        "micro_batch_size": 4,
        "gradient_accumulation_steps": 2,
    },
    "aggressive": {
        "use_gpu_cache": True,
        "gpu_cache_size": 10000,
        "use_prefetch": True,
        "prefetch_factor": 3,
        "num_workers": 0,
        "pin_memory": False,
        "micro_batch_size": 8,
        "gradient_accumulation_steps": 1,
    },
    "minimal": {
        "use_gpu_cache": True,
        "gpu_cache_size": 2000,
        "use_prefetch": True,
        "prefetch_factor": 1,
        "num_workers": 0,
        "pin_memory": False,
        "micro_batch_size": 1,
        "gradient_accumulation_steps": 8,
    },
}


def resolve_train_config(cfg: dict | TrainConfig | None) -> TrainConfig:
    """The complete ``train:`` section: schema defaults, then preset, then the user's non-null keys.

    A :class:`TrainConfig` (already resolved) is returned as it is. The user's keys are checked
    against ``schemas/train.schema.yaml`` (:func:`check_against_schema`): a
    :class:`~selectflow.runtime.errors.SelectFlowError` names every bad key.
    """
    if isinstance(cfg, TrainConfig):
        return cfg
    cfg = dict(cfg or {})
    out = train_defaults()
    for name in NESTED:
        given = cfg.pop(name, None) or {}
        if isinstance(given, dict):
            out[name].update({k: v for k, v in given.items() if v is not None or k not in out[name]})
        else:
            out[name] = given  # not a mapping: the schema check names it
    # null means "not set", except for a key the schema does not know: the check names it
    out.update({k: v for k, v in cfg.items() if v is not None or k not in out})
    check_against_schema(out, "the train settings", "train.schema.yaml", "train")
    source = PRESETS[out["preset"]] if out["preset"] else BASE
    for key in PRESET_KEYS:
        if out[key] is None:
            out[key] = source[key]
    return train_config_of(out)


@dataclass(frozen=True)
class WarmupConfig:
    enabled: bool
    subset_ratio: float
    quality_loss_weight: float
    gate_objective: str
    trash_expert: str
    gate_init_std: float
    train: TrainConfig  # the train section with the warm-up's overrides, resolved


@dataclass(frozen=True)
class TrainSection:
    enabled: bool
    model_path: str | None
    settings: TrainConfig  # the trainer's keys, resolved


@dataclass(frozen=True)
class IndexConfig:
    enabled: bool
    window_size: int
    index_type: str
    encoder: str | None
    batch_size: int
    windows_per_job: int
    max_length: int
    max_open: int
    min_free_gb: float
    device: str
    sequences: dict


@dataclass(frozen=True)
class RetrieveConfig:
    k: int
    queries: str | None


@dataclass(frozen=True)
class DecontaminateConfig:
    eval_set: str | None
    threshold: float
    encoder: str | None


@dataclass(frozen=True)
class CompareConfig:
    """``eval`` is resolved: ``demo``, ``heldout`` or the path of the user's test set."""

    methods: tuple
    seed: int
    heldout_fraction: float
    eval: str
    target: str | None
    test_per_kind: int
    test_seed: int
    student: str
    student_hidden: int
    student_layers: int
    student_vocab: int
    seeds: int
    full_pools: tuple
    full_pool_seeds: int
    clusters: int
    near_duplicate_quantile: float
    train: TrainConfig  # the train section with the comparison's overrides, resolved


SECTIONS = {
    "demo": DemoConfig,
    "proxy": ProxyConfig,
    "retry": RetryConfig,
    "router_dump": RouterDumpConfig,
    "selection": SelectionConfig,
    "warmup": WarmupConfig,
    "index": IndexConfig,
    "retrieve": RetrieveConfig,
    "decontaminate": DecontaminateConfig,
    "compare": CompareConfig,
}


@dataclass(frozen=True)
class Config:
    run: str
    datasets: dict
    model_path: str
    shard_size: int
    gpu_id: int | None
    demo: DemoConfig
    proxy: ProxyConfig
    retry: RetryConfig
    router_dump: RouterDumpConfig
    selection: SelectionConfig
    warmup: WarmupConfig
    train: TrainSection
    index: IndexConfig
    retrieve: RetrieveConfig
    decontaminate: DecontaminateConfig
    compare: CompareConfig

    @property
    def job(self) -> JobSettings:
        """What every job's :func:`~selectflow.runtime.jobs.run_job` needs: the rule param ``job=CFG.job``."""
        return JobSettings(retry=self.retry, gpu_id=self.gpu_id)


def as_param(value):
    """A config section as a rule param: a plain mapping. Snakemake's params rerun trigger
    compares only builtin values (a dataclass would be "unrepresentable" and never trigger a
    rerun); the script turns it back with :func:`from_param`."""
    return asdict(value)


def from_param(cls: type, values: dict[str, Any]):
    """The section ``cls`` from its :func:`as_param` mapping, nested sections included."""
    hints = get_type_hints(cls)
    kwargs = {}
    for f in fields(cls):
        value, kind = values[f.name], hints[f.name]
        kwargs[f.name] = from_param(kind, value) if is_dataclass(kind) and isinstance(value, dict) else value
    return cls(**kwargs)


def section(cls: type, values: dict[str, Any]):
    """``cls`` from a validated section: exactly its fields (an unknown or missing key is a bug here)."""
    return cls(**{f.name: values[f.name] for f in fields(cls)})


PROXY = "proxy"  # model.path that asks for the proxy scorer (rule proxy_model)


def proxy_model_dir(run: str) -> str:
    """Where rule proxy_model writes the proxy of run ``run``'s datasets."""
    return Layout(run).proxy_model


def model_path_of(config: dict) -> str:
    """The model folder a run loads: ``model.path``, or the proxy's folder when it is ``proxy``."""
    path = config["model"]["path"]
    return proxy_model_dir(config["run"]) if path == PROXY else path


WORKFLOW_TRAIN_KEYS = ("enabled", "model_path")  # keys of the train section that are not the trainer's


def trainer_keys(train: dict) -> dict:
    """The train section less the workflow's own keys (:data:`WORKFLOW_TRAIN_KEYS`)."""
    return {k: v for k, v in train.items() if k not in WORKFLOW_TRAIN_KEYS}


def build_config(config: dict) -> Config:
    """The typed config of a run from the validated, default-filled config mapping.

    Raises :class:`~selectflow.runtime.errors.SelectFlowError` for a bad train key.
    """
    train = config["train"]
    warmup = {**config["warmup"], "train": resolve_train_config(trainer_keys({**train, **config["warmup"]["train"]}))}
    sections = {name: section(cls, config[name]) for name, cls in SECTIONS.items() if name not in ("warmup", "compare")}
    return Config(
        run=config["run"],
        datasets=dict(config["datasets"]),
        model_path=model_path_of(config),
        shard_size=config["shard_size"],
        gpu_id=config.get("gpu_id"),
        train=TrainSection(
            enabled=train["enabled"], model_path=train["model_path"], settings=resolve_train_config(trainer_keys(train))
        ),
        warmup=section(WarmupConfig, warmup),
        compare=compare_section(config, train),
        **sections,
    )


def compare_section(config: dict, train: dict) -> CompareConfig:
    """The compare section: methods with ``fps`` first (always in), its train overrides resolved."""
    cmp = config["compare"]
    methods = ("fps", *[m for m in cmp["methods"] if m != "fps"])
    test = cmp["eval"]
    if test == "auto":  # the demo's own test set when the demo pool is selected from, else a held-out slice
        test = "demo" if any(Path(p).as_posix().endswith(DEMO_POOL) for p in config["datasets"].values()) else "heldout"
    # the comparison's own training defaults stay under the keys a config sets (compare.train: {epochs: 2}
    # keeps max_steps: null and the learning rate), over the train section
    settings = resolve_train_config(trainer_keys({**train, **schema_default("compare", "train"), **cmp["train"]}))
    if "target" in methods and test not in ("demo", "heldout") and not cmp.get("target"):
        raise SelectFlowError(
            f"compare.methods has target and compare.eval is your own test set ({test}): set compare.target to a "
            "JSONL of target records (e.g. the task's dev set) that shares no record with it"
        )
    return section(
        CompareConfig,
        {**cmp, "methods": methods, "eval": test, "full_pools": tuple(cmp["full_pools"]), "train": settings},
    )


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
