"""The validated config as frozen dataclasses, one per section, built once per run.

The schema (``schemas/config.schema.yaml``, ``schemas/train.schema.yaml``, read by
:mod:`selectflow.schema`) is the only place a default or an allowed value is written; the config
mapping reaching :func:`build_config` is checked against it with its defaults filled in, and
:func:`build_config` gives every section of that mapping a typed, read-only view. A field here and
a key in the schema are kept equal by ``tests/test_config.py``.

The typed sections reach a Snakemake job one way: the rule passes ``as_param(CFG.x)`` as a param
and the script turns it back with :func:`from_param`.

The ``train:`` section is resolved once as well (:class:`TrainConfig`, by
:func:`resolve_train_config`: schema defaults, then the loader preset of
:mod:`selectflow.presets`, then the user's keys); the warm-up's train settings are the train
section with ``warmup.train`` laid over it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, is_dataclass, replace
from pathlib import Path
from typing import Any, get_type_hints

from selectflow.layout import Layout
from selectflow.presets import BASE, PRESET_KEYS, PRESETS
from selectflow.runtime.errors import SelectFlowError
from selectflow.runtime.jobs import JobSettings, RetryConfig
from selectflow.schema import check_against_schema, schema_default, section_values, train_defaults

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


# FPS keys besides fps_weight that another diversity would ignore: their off value, what they do to FPS, and the
# diversities that read them (the hold-backs: stratified too, which draws the held back last)
HOLDING_BACK = ("fps", "stratified")
_UNUSED_WITHOUT_FPS = {
    "fps_quality_hold_back": (0, "holds back candidates from", HOLDING_BACK),
    "fps_relevance_hold_back": (0, "holds back candidates from", HOLDING_BACK),
    "fps_boilerplate_cut_z": (None, "holds back candidates from", HOLDING_BACK),
    "fps_snap": ("none", "snaps the picks of", ("fps",)),
}


@dataclass(frozen=True)
class SelectionConfig:
    selection_percentage: float
    importance_selection_percentage: float | None
    disable_diversity: bool
    diversity: str
    target: str | None
    diversity_neighbors: int
    knn_exact_max: int
    knn_probes: int
    diversity_clusters: int
    features: str
    quality_method: str
    routing_strata: int
    strata_seed: int
    strata_weight: str
    quality_field: str | None
    quality_cut: str
    quality_cut_z: float
    near_duplicate_threshold: float | None
    dedup_system_turns: bool
    shared_answer_min_words: int | None
    shared_answer_max_samples: int | None
    metric: str
    distance_mode: str
    distance_batch_size: int
    fps_log_interval: int
    fps_weight: str
    lof_cut_z: float
    fps_quality_hold_back: float
    fps_relevance_hold_back: float
    fps_boilerplate_cut_z: float | None
    fps_snap: str
    fps_snap_neighbors: int
    fps_gpus: int
    device: str

    def _asked(self, key: str, off) -> bool:
        """Whether ``selection.key`` holds a value other than ``off`` and the schema's default: a setting
        asked for (a default that does not apply is simply not used)."""
        return getattr(self, key) not in (off, schema_default("selection", key))

    def __post_init__(self):
        # a key that would be ignored is a mistake; a default that does not apply (lof_cut, the hold-back and
        # snapping without FPS, the bound without the shared-answer pass) is simply not used
        # (lof_cut, the default, is not asked: diversity stratified reads it as a hold-back, the others not at all)
        if self._asked("fps_weight", "none") and self.diversity != "fps":
            raise SelectFlowError(
                f"selection.fps_weight: {self.fps_weight} weighs farthest-point sampling, and selection.diversity is "
                f"{self.diversity}, which runs no FPS (facility_location weighs its picks by quality rank already): "
                "set fps_weight: none, or diversity: fps"
            )
        if self.shared_answer_min_words is None and self._asked("shared_answer_max_samples", None):
            raise SelectFlowError(
                f"selection.shared_answer_max_samples: {self.shared_answer_max_samples} bounds the shared-answer "
                "pass, which selection.shared_answer_min_words: null turns off: set shared_answer_min_words (e.g. 4), "
                "or shared_answer_max_samples: null"
            )
        for key, (off, does, readers) in _UNUSED_WITHOUT_FPS.items():
            if self._asked(key, off) and self.diversity not in readers:
                written = "null" if off is None else off
                raise SelectFlowError(
                    f"selection.{key}: {getattr(self, key)} {does} farthest-point sampling, and selection.diversity "
                    f"is {self.diversity}, which does not read it: set {key}: {written}, or diversity: "
                    + " or ".join(readers)
                )

    def knn_probes_for(self, m: int) -> int | None:
        """The ``probes`` of :func:`selectflow.select.diversity.knn_graph` for ``m`` candidates:
        ``knn_probes`` above ``knn_exact_max`` (approximate), else None (exact)."""
        return self.knn_probes if m > self.knn_exact_max else None


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


def selection_section(values: dict | None = None, **overrides) -> SelectionConfig:
    """The selection section: ``values`` and ``overrides`` over the schema's defaults (not validated)."""
    return section(SelectionConfig, section_values("selection", {**(values or {}), **overrides}))


def train_config_of(values: dict[str, Any]) -> TrainConfig:
    """A :class:`TrainConfig` from a complete, checked mapping (``lora`` / ``cpu_offload`` as mappings)."""
    nested = {name: section(cls, values[name]) for name, cls in NESTED.items()}
    return TrainConfig(**{f.name: values[f.name] for f in fields(TrainConfig) if f.name not in NESTED}, **nested)


def lora_settings(lora: LoraConfig | dict) -> LoraConfig:
    """``lora`` as a :class:`LoraConfig`; a partial mapping takes the schema's defaults for missing keys."""
    if isinstance(lora, LoraConfig):
        return lora
    return section(LoraConfig, {**train_defaults()["lora"], **lora})


def resolve_train_config(cfg: dict | TrainConfig | None) -> TrainConfig:
    """The complete ``train:`` section: schema defaults, then preset, then the user's non-null keys.

    A :class:`TrainConfig` (already resolved) is returned as it is. The user's keys are checked
    against ``schemas/train.schema.yaml`` (:func:`~selectflow.schema.check_against_schema`): a
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
    fps_draws: bool
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


# the selection keys only the diversity step reads (selectflow.select.candidates.fps_options,
# stages.select.run_fps: rules fps and compare_fps); the rules before it take the section with these at
# their defaults
FPS_ONLY_KEYS = (
    "diversity",
    "diversity_neighbors",
    "diversity_clusters",
    "fps_log_interval",
    "fps_weight",
    "lof_cut_z",
    "fps_quality_hold_back",
    "fps_relevance_hold_back",
    "fps_boilerplate_cut_z",
    "fps_snap",
    "fps_snap_neighbors",
    "fps_gpus",
    "knn_exact_max",
    "knn_probes",
)
# compare baselines matched to the lengths of fps's picks (they take its picks.tsv: rules/compare.smk)
LENGTH_MATCHED = ("random_length", "random_matched")


def param_before_fps(sel: SelectionConfig) -> dict:
    """:func:`as_param` of the selection section for a rule before FPS (candidates, distance blocks,
    compare's candidates, pool and target): :data:`FPS_ONLY_KEYS` at the schema's defaults, so that
    changing one reruns FPS and what follows it, not the candidates nor compare's baselines."""
    return as_param(replace(sel, **{key: schema_default("selection", key) for key in FPS_ONLY_KEYS}))


def param_of_compare(cmp: CompareConfig) -> dict:
    """:func:`as_param` of the compare section for its rules: ``fps_draws`` (which files fps's fine-tunes
    train on: an input, rules/common.smk ``compare_training_data``) at the schema's default, so that changing
    it reruns fps's draws and fine-tunes, not the student, the test set, the pool nor the baselines."""
    return as_param(replace(cmp, fps_draws=schema_default("compare", "fps_draws")))


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
