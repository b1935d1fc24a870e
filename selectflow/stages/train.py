"""The stage functions of rules/train.smk: convert (Select-MoE stage 0), warmup (stage 1), train.

Each takes paths and the typed train settings (:class:`selectflow.config.TrainConfig`, built
once per run) and writes its outputs; ``micro_batch_size`` is the rule's attempt-scaled
resource, the one place a retry shrinks it.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from selectflow.config import TrainConfig
from selectflow.router.gate import convert_model
from selectflow.train import train as train_model
from selectflow.train import train_on_pool
from selectflow.train.objective import GateObjective


def convert(
    model: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    trash: str,
    init_std: float,
    seed: int,
    router_pattern: str | None,
) -> None:
    """The base model plus a fresh quality gate at every MoE block, in ``out_dir``."""
    convert_model(model, out_dir, trash=trash, init_std=init_std, seed=seed, router_pattern=router_pattern)


def warmup(
    model: str | os.PathLike,
    pools: Sequence[str | os.PathLike],
    out_dir: str | os.PathLike,
    settings: TrainConfig,
    *,
    subset_ratio: float,
    quality_loss_weight: float,
    router_pattern: str | None,
    gate_objective: str,
    micro_batch_size: int,
    attempt: int,
) -> None:
    """Train only the gates and routers of the converted ``model`` on a seeded share of the pools."""
    objective = GateObjective(quality_loss_weight, router_pattern, gate_objective)
    train_on_pool(
        model,
        list(pools),
        out_dir,
        settings,
        subset_ratio=subset_ratio,
        micro_batch_size=micro_batch_size,
        attempt=attempt,
        objective=objective,
    )


def train(
    model: str | os.PathLike,
    data: str | os.PathLike,
    out_dir: str | os.PathLike,
    settings: TrainConfig,
    *,
    micro_batch_size: int,
    attempt: int,
) -> None:
    """Fine-tune ``model`` on the selected records in ``data``; checkpoint and tables in ``out_dir``."""
    train_model(model, data, out_dir, settings, micro_batch_size=micro_batch_size, attempt=attempt)
