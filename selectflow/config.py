"""The validated config as frozen dataclasses, one per section, built once per run.

The schema (``schemas/config.schema.yaml``, ``schemas/train.schema.yaml``) is the only place a
default is written: :func:`build_config` takes a config that Snakemake's ``validate`` (or
:func:`selectflow.data.check.load_config`) has already filled with the schema's defaults and
gives every section a typed, read-only view. A field here and a key in the schema are kept
equal by ``tests/test_config.py``.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any


@dataclass(frozen=True)
class DemoConfig:
    n_records: int
    seed: int
    pretrain_epochs: float


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
    quality_gate_pattern: str | None
    device: str
    dtype: str
    shards_per_job: int


@dataclass(frozen=True)
class SelectionConfig:
    selection_percentage: float
    importance_selection_percentage: float | None
    disable_diversity: bool
    quality_method: str
    routing_strata: int
    quality_field: str | None
    metric: str
    distance_mode: str
    distance_batch_size: int
    fps_log_interval: int
    device: str


@dataclass(frozen=True)
class WarmupConfig:
    enabled: bool
    subset_ratio: float
    quality_loss_weight: float
    trash_expert: str
    gate_init_std: float
    train: dict  # keys of the train section that the warm-up overrides


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


SECTIONS = {
    "demo": DemoConfig, "retry": RetryConfig, "router_dump": RouterDumpConfig, "selection": SelectionConfig,
    "warmup": WarmupConfig, "index": IndexConfig, "retrieve": RetrieveConfig, "decontaminate": DecontaminateConfig,
}


@dataclass(frozen=True)
class Config:
    run: str
    datasets: dict
    model_path: str
    shard_size: int
    gpu_id: int | None
    demo: DemoConfig
    retry: RetryConfig
    router_dump: RouterDumpConfig
    selection: SelectionConfig
    warmup: WarmupConfig
    train: dict  # the raw train section; resolved by selectflow.train.presets
    index: IndexConfig
    retrieve: RetrieveConfig
    decontaminate: DecontaminateConfig


def section(cls: type, values: dict[str, Any]):
    """``cls`` from a validated section: exactly its fields (an unknown or missing key is a bug here)."""
    return cls(**{f.name: values[f.name] for f in fields(cls)})


def build_config(config: dict) -> Config:
    """The typed config of a run from the validated, default-filled config mapping."""
    return Config(
        run=config["run"], datasets=dict(config["datasets"]), model_path=config["model"]["path"],
        shard_size=config["shard_size"], gpu_id=config.get("gpu_id"), train=dict(config["train"]),
        **{name: section(cls, config[name]) for name, cls in SECTIONS.items()},
    )
