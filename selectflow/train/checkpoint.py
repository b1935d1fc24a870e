"""Resume state of a training run: ``out_dir/resume/``, replaced whole at each save.

=========================  ==========================================================
file                       content
=========================  ==========================================================
``trainable.safetensors``  the trainable parameters (all of them, or the LoRA adapters)
``optimizer.pt``           optimizer, LR-scheduler and GradScaler state dicts
                           (``torch.save``; read back with ``weights_only=True``)
``rng.pt``                 torch CPU and CUDA generator states
``rng.json``               Python ``random`` and NumPy global generator states
``state.json``             ``step`` (optimizer steps done), ``epoch``, ``position`` (samples
                           of that epoch consumed), ``order`` (that epoch's sample order),
                           the micro-batch split used, and ``fingerprint`` (settings the
                           result depends on)
``metrics.tsv``            training metrics rows up to ``step``
``memory.tsv``             memory monitor rows up to ``step``
=========================  ==========================================================

The data position is counted in samples, so a resumed run may use another micro-batch
size (a Snakemake retry shrinks it) and still see the same samples per optimizer step. A
state whose fingerprint differs from the current run (other data, learning rate, …) is
ignored with a warning and the run starts over. :func:`save_trained` writes the finished
model (``out_dir/checkpoint/``).
"""

from __future__ import annotations

import json
import logging
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from safetensors.torch import load_file, save_file

from selectflow.config import TrainConfig
from selectflow.router.gate import quality_gates, save_converted
from selectflow.runtime.fsutil import atomic_dir
from selectflow.train.monitor import MEMORY_COLUMNS, write_rows

log = logging.getLogger(__name__)


@dataclass
class ResumeState:
    step: int
    epoch: int
    position: int
    order: list[int]
    metrics: list[dict]
    memory: list[dict]


def _trainable(model) -> dict[str, torch.nn.Parameter]:
    return {name: p for name, p in model.named_parameters() if p.requires_grad}


def save_resume(
    resume_dir: str | Path,
    *,
    model,
    optimizer,
    scheduler,
    scaler,
    step: int,
    epoch: int,
    position: int,
    order: list[int],
    fingerprint: dict,
    micro_batch_size: int,
    gradient_accumulation_steps: int,
    metrics: list[dict],
    metric_columns: list[str],
    memory: list[dict],
) -> None:
    """Write the resume state after optimizer step ``step`` (replacing the previous one)."""
    with atomic_dir(resume_dir) as tmp:
        tmp = Path(tmp)
        save_file(
            {n: p.detach().to("cpu").contiguous() for n, p in _trainable(model).items()},
            str(tmp / "trainable.safetensors"),
        )
        torch.save(
            {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict()},
            tmp / "optimizer.pt",
        )
        torch.save(
            {
                "torch": torch.get_rng_state(),
                "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            },
            tmp / "rng.pt",
        )
        py_version, py_state, py_gauss = random.getstate()
        np_kind, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
        (tmp / "rng.json").write_text(
            json.dumps(
                {
                    "python": [py_version, list(py_state), py_gauss],
                    "numpy": [np_kind, np_keys.tolist(), int(np_pos), int(np_has_gauss), float(np_gauss)],
                }
            )
        )
        (tmp / "state.json").write_text(
            json.dumps(
                {
                    "step": step,
                    "epoch": epoch,
                    "position": position,
                    "order": order,
                    "fingerprint": fingerprint,
                    "micro_batch_size": micro_batch_size,
                    "gradient_accumulation_steps": gradient_accumulation_steps,
                }
            )
        )
        write_rows(tmp / "metrics.tsv", metrics, metric_columns)
        write_rows(tmp / "memory.tsv", memory, MEMORY_COLUMNS)
    log.info(
        "resume state saved at step %d (epoch %d, sample %d of the epoch) -> %s", step, epoch, position, resume_dir
    )


def load_resume(
    resume_dir: str | Path, fingerprint: dict, *, model, optimizer, scheduler, scaler
) -> ResumeState | None:
    """Restore a saved state into the given objects; ``None`` when there is none (or it is stale)."""
    resume_dir = Path(resume_dir)
    state_path = resume_dir / "state.json"
    if not state_path.is_file():
        return None
    state = json.loads(state_path.read_text())
    saved = state["fingerprint"]
    if saved != fingerprint:
        changed = sorted(k for k in set(saved) | set(fingerprint) if saved.get(k) != fingerprint.get(k))
        log.warning(
            "resume state in %s was written with other settings (%s changed); starting over",
            resume_dir,
            ", ".join(changed),
        )
        return None
    weights = load_file(str(resume_dir / "trainable.safetensors"))
    params = _trainable(model)
    if set(weights) != set(params):
        log.warning("resume state in %s holds other trainable parameters than the model; starting over", resume_dir)
        return None
    with torch.no_grad():
        for name, p in params.items():
            p.copy_(weights[name].to(p.device, p.dtype))
    opt = torch.load(resume_dir / "optimizer.pt", map_location="cpu", weights_only=True)
    optimizer.load_state_dict(opt["optimizer"])
    scheduler.load_state_dict(opt["scheduler"])
    if opt["scaler"]:
        scaler.load_state_dict(opt["scaler"])
    rng = torch.load(resume_dir / "rng.pt", map_location="cpu", weights_only=True)
    torch.set_rng_state(rng["torch"])
    if rng["cuda"] and torch.cuda.is_available() and len(rng["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(rng["cuda"])
    host = json.loads((resume_dir / "rng.json").read_text())
    py_version, py_state, py_gauss = host["python"]
    random.setstate((py_version, tuple(py_state), py_gauss))
    kind, keys, pos, has_gauss, gauss = host["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, gauss))
    log.info(
        "resuming from %s at step %d (epoch %d, sample %d of the epoch; saved with micro-batch %d x %d)",
        resume_dir,
        state["step"],
        state["epoch"],
        state["position"],
        state["micro_batch_size"],
        state["gradient_accumulation_steps"],
    )
    return ResumeState(
        step=state["step"],
        epoch=state["epoch"],
        position=state["position"],
        order=state["order"],
        metrics=_rows(resume_dir / "metrics.tsv"),
        memory=_rows(resume_dir / "memory.tsv"),
    )


def _rows(path: Path) -> list[dict]:
    return pd.read_csv(path, sep="\t").to_dict("records") if path.is_file() and path.stat().st_size else []


def save_trained(model, tokenizer, path: Path, c: TrainConfig) -> str:
    """Save the trained model atomically; LoRA is merged unless the base is 8-bit (adapter only)."""
    kind = "full"
    if c.lora.enabled:
        if c.load_in_8bit:
            kind = "lora_adapter"
        else:
            model = model.merge_and_unload()
            kind = "full (LoRA merged)"
    with atomic_dir(path) as tmp:
        if quality_gates(model):  # a converted model: base weights + the gate files (selectflow.router.gate)
            save_converted(model, tmp, tokenizer)
        else:
            model.save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)
    return kind
