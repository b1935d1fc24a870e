"""The validated config as frozen dataclasses, one per section, built once per run.

The schema (``schemas/config.schema.yaml``, ``schemas/train.schema.yaml``) is the only place a
default is written: :func:`build_config` takes a config that Snakemake's ``validate`` (or
:func:`selectflow.data.check.load_config`) has already filled with the schema's defaults and
gives every section a typed, read-only view. A field here and a key in the schema are kept
equal by ``tests/test_config.py``.

The ``train:`` section is resolved once as well (:class:`TrainConfig`, with its loader preset
applied by :func:`selectflow.train.presets.resolve_train_config`); the warm-up's train
settings are the train section with ``warmup.train`` laid over it.
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass, fields, is_dataclass
from functools import cache
from pathlib import Path
from typing import Any, get_type_hints

import yaml

from selectflow.configdoc import SCHEMAS
from selectflow.layout import Layout

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
class RetryConfig:
    factor: float
    adaptive_chunks: bool
    job_memory_budget_mb: float | None


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


def retry_section(config: dict) -> RetryConfig:
    """The retry section of a job's config; keys it lacks take the schema's defaults."""
    return section(RetryConfig, section_values("retry", config.get("retry")))


def schema_default(section_name: str, key: str) -> Any:
    """The schema's default of ``section_name.key``: for a library's own defaults (e.g. a
    dataclass ``field(default_factory=...)``), so that no default is written twice."""
    return copy.deepcopy(schema()["properties"][section_name]["properties"][key]["default"])


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
    "demo": DemoConfig, "proxy": ProxyConfig, "retry": RetryConfig, "router_dump": RouterDumpConfig, "selection": SelectionConfig,
    "warmup": WarmupConfig, "index": IndexConfig, "retrieve": RetrieveConfig, "decontaminate": DecontaminateConfig,
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
    from selectflow.train.presets import resolve_train_config

    train = config["train"]
    warmup = {**config["warmup"], "train": resolve_train_config(trainer_keys({**train, **config["warmup"]["train"]}))}
    sections = {name: section(cls, config[name]) for name, cls in SECTIONS.items() if name not in ("warmup", "compare")}
    return Config(
        run=config["run"], datasets=dict(config["datasets"]), model_path=model_path_of(config),
        shard_size=config["shard_size"], gpu_id=config.get("gpu_id"),
        train=TrainSection(enabled=train["enabled"], model_path=train["model_path"],
                           settings=resolve_train_config(trainer_keys(train))),
        warmup=section(WarmupConfig, warmup), compare=compare_section(config, train), **sections,
    )


def compare_section(config: dict, train: dict) -> CompareConfig:
    """The compare section: methods with ``fps`` first (always in), its train overrides resolved."""
    from selectflow.train.presets import resolve_train_config

    cmp = config["compare"]
    methods = ("fps", *[m for m in cmp["methods"] if m != "fps"])
    test = cmp["eval"]
    if test == "auto":  # the demo's own test set when the demo pool is selected from, else a held-out slice
        test = "demo" if any(Path(p).as_posix().endswith(DEMO_POOL) for p in config["datasets"].values()) else "heldout"
    # the comparison's own training defaults stay under the keys a config sets (compare.train: {epochs: 2}
    # keeps max_steps: null and the learning rate), over the train section
    settings = resolve_train_config(trainer_keys({**train, **schema_default("compare", "train"), **cmp["train"]}))
    if "target" in methods and test not in ("demo", "heldout") and not cmp.get("target"):
        from selectflow.runtime.errors import SelectFlowError

        raise SelectFlowError(
            f"compare.methods has target and compare.eval is your own test set ({test}): set compare.target to a "
            "JSONL of target records (e.g. the task's dev set) that shares no record with it"
        )
    return section(CompareConfig, {**cmp, "methods": methods, "eval": test, "full_pools": tuple(cmp["full_pools"]),
                                   "train": settings})


MAX_PROBLEMS = 5  # config mistakes shown at once (each in at most 3 lines): the message stays under 20 lines
MODEL_HINT = ("add a model section:\n    model:\n      path: /path/to/a/local/hf/moe-model\n"
              "  or a small MoE built on your own datasets (rule proxy_model, no download): model: {path: proxy}")


def check_against_schema(config: Any, source: str, name: str = "config.schema.yaml", prefix: str = "") -> None:
    """Raise one :class:`~selectflow.runtime.errors.SelectFlowError` naming every mistake of ``config``
    against schema ``name`` (at most :data:`MAX_PROBLEMS`, each with its key, what is wrong and what to
    write instead); nothing when it is valid. ``source`` names the config file(s); ``prefix`` the section
    ``config`` is (``train``), for the key names. No schema dump, no traceback."""
    from jsonschema import Draft202012Validator

    from selectflow.runtime.errors import SelectFlowError

    errors = sorted(Draft202012Validator(schema(name)).iter_errors(config), key=lambda e: [str(p) for p in e.path])
    if not errors:
        return
    lines = [f"{source}: {len(errors)} config mistake{'s' if len(errors) > 1 else ''} "
             f"(every key: config/README.md)"]
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


_TYPE_NAMES = {"object": "a mapping (key: value lines)", "array": "a list", "string": "a string", "number": "a number",
               "integer": "a whole number", "boolean": "true or false", "null": "null"}


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
            parts.append(f"'{_key([*error.absolute_path, k], prefix)}' is not a config key; "
                         + (f"did you mean '{near[0]}'?" if near else f"valid keys here: {', '.join(allowed)[:200]}"))
        return "\n  ".join(parts)
    if rule == "type":
        kinds = error.validator_value if isinstance(error.validator_value, list) else [error.validator_value]
        want = " or ".join(_TYPE_NAMES.get(k, k) for k in kinds)
        return f"'{key}' is {_shown(error.instance)}, it must be {want}{what}"
    if rule in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"):
        bound = {"minimum": "at least", "maximum": "at most", "exclusiveMinimum": "more than",
                 "exclusiveMaximum": "less than"}[rule]
        return f"'{key}' is {_shown(error.instance)}, it must be {bound} {error.validator_value}{what}"
    if rule == "enum":
        near = difflib.get_close_matches(str(error.instance), [str(v) for v in error.validator_value], n=1, cutoff=0.5)
        return (f"'{key}' is {_shown(error.instance)}, it must be one of {', '.join(map(str, error.validator_value))}"
                + (f"; did you mean '{near[0]}'?" if near else ""))
    if rule == "pattern":
        return f"'{key}' is {_shown(error.instance)}, which does not match {error.validator_value}{what}"
    if rule in ("minProperties", "minItems"):
        return f"'{key}' is empty, it needs at least {error.validator_value} entr{'y' if error.validator_value == 1 else 'ies'}{what}"
    if rule == "uniqueItems":
        return f"'{key}' lists an item twice ({_shown(error.instance)}); name each once"
    return f"'{key}': {error.message[:200]}"
