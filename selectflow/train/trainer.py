"""Supervised fine-tuning of a local causal LM: memory-frugal, attempt-aware and resumable.

:func:`train` fine-tunes the model in ``model_path`` (any ``AutoModelForCausalLM`` folder)
on a JSONL of records (``selected_data.jsonl``); :func:`train_on_pool` does the same on a
random ``subset_ratio`` of a pool file (the warm-up run). Both write to ``out_dir``:

* ``checkpoint/``: the trained model (safetensors, LoRA merged in) and tokenizer;
  with 8-bit loading, the LoRA adapter only;
* ``metrics.tsv``: per optimizer step ``step, epoch, loss, lr, samples_per_s, host_rss_mb,
  gpu_allocated_mb, gpu_reserved_mb, gpu_peak_mb`` (loss: mean over the response tokens
  of the step's samples); with a gate objective (the warm-up) also ``quality_loss`` (the
  weighted gate term, included in ``loss``) and ``p_good`` (mean good-probability);
* ``memory.tsv``: the memory monitor's samples (every ``monitor_interval`` steps);
* ``summary.json``: the returned summary;
* ``resume/`` while running (see :mod:`selectflow.train.checkpoint`), removed at the end.

The loss covers response tokens only (:mod:`selectflow.train.step`). A Snakemake retry runs with a smaller
``micro_batch_size`` (the rule's
attempt-scaled resource, the only place it is computed) and raises the accumulation to
keep the effective batch; a rerun resumes from the last save.
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import resource
import shutil
import sys
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from selectflow.config import TrainConfig, resolve_train_config
from selectflow.data.records import read_dataset
from selectflow.data.tokens import pad_token_id
from selectflow.runtime.device import pick_device, use_expandable_segments
from selectflow.runtime.errors import SelectFlowError
from selectflow.runtime.fsutil import atomic_open
from selectflow.train.checkpoint import save_trained
from selectflow.train.data import load_training_pairs, steps_per_epoch
from selectflow.train.estimate import (
    estimate_training_memory,
    model_shape,
    pick_micro_batch,
    resolve_budget,
)
from selectflow.train.loop import METRIC_COLUMNS, Run, loop, start
from selectflow.train.model import check_levers, load_for_training, resolve_precision
from selectflow.train.monitor import MIB, write_rows

log = logging.getLogger(__name__)


def train(
    model_path,
    data_jsonl,
    out_dir,
    cfg: TrainConfig | dict | None,
    *,
    micro_batch_size: int | None = None,
    attempt: int = 1,
    on_step: Callable[[int], None] | None = None,
) -> dict:
    """Fine-tune ``model_path`` on the records of ``data_jsonl``; return the run summary.

    ``cfg`` is the ``train:`` section (a :class:`~selectflow.config.TrainConfig`, or a mapping
    that is resolved); ``micro_batch_size`` this attempt's micro-batch (the rule's
    attempt-scaled resource; None: the configured one); ``attempt`` the Snakemake attempt
    (logged); ``on_step(step)`` is called after each optimizer step (and its resume save). The
    summary (also ``summary.json``) holds the sizes used (``micro_batch_size``,
    ``gradient_accumulation_steps``, ``effective_batch``), ``steps``, ``resumed_from_step``,
    ``first_loss`` / ``final_loss`` (mean of the last 5 steps), ``samples_per_s``,
    ``train_seconds`` / ``train_cpu_seconds`` (wall / CPU time of the loop, with workers),
    ``estimated_peak_mb`` beside ``measured_peak_mb`` (CUDA) and ``host_peak_rss_mb``, and
    the device-cache counts (``cache``).
    """
    pairs = load_training_pairs(data_jsonl)
    return fit(
        model_path,
        pairs,
        out_dir,
        cfg,
        micro_batch_size=micro_batch_size,
        attempt=attempt,
        on_step=on_step,
        source=str(data_jsonl),
    )


def train_on_pool(
    model_path,
    pool_jsonl,
    out_dir,
    cfg: TrainConfig | dict | None,
    *,
    subset_ratio: float,
    micro_batch_size: int | None = None,
    attempt: int = 1,
    on_step: Callable[[int], None] | None = None,
    objective=None,
) -> dict:
    """Fine-tune on a random ``subset_ratio`` of a pool (the warm-up run).

    ``pool_jsonl`` is one JSONL path or a list of them (Alpaca / ShareGPT / messages, one
    format per file). The subset is drawn with ``train.seed`` over all records and does
    not depend on the attempt, so a retry resumes on the same samples. ``objective`` (a
    :class:`selectflow.train.objective.GateObjective`) makes it Select-MoE's stage 1: only the gates
    and routers train, and the gate loss is added.
    """
    if not 0.0 < float(subset_ratio) <= 1.0:
        raise SelectFlowError(f"subset_ratio must be in (0, 1], got {subset_ratio!r}")
    paths = [pool_jsonl] if isinstance(pool_jsonl, (str, os.PathLike)) else list(pool_jsonl)
    records = [rec for path in paths for rec in read_dataset(path, Path(path).stem)]
    k = max(1, round(float(subset_ratio) * len(records)))
    c = resolve_train_config(cfg)
    chosen = sorted(random.Random(c.seed).sample(range(len(records)), k))
    log.info(
        "warm-up subset: %d of %d records of %s (ratio %g, seed %d)",
        k,
        len(records),
        ", ".join(map(str, paths)),
        subset_ratio,
        c.seed,
    )
    pairs = [(records[i]["sample_id"], records[i]["prompt"], records[i]["response"]) for i in chosen]
    return fit(
        model_path,
        pairs,
        out_dir,
        c,
        micro_batch_size=micro_batch_size,
        attempt=attempt,
        on_step=on_step,
        source=f"{', '.join(map(str, paths))} (subset {subset_ratio:g})",
        objective=objective,
    )


def batch_split(c: TrainConfig, micro_batch_size: int | None = None) -> tuple[int, int, int]:
    """``(micro_batch, accumulation, effective_batch)`` when the micro-batch is ``micro_batch_size``.

    The effective batch (configured micro-batch × accumulation) never changes; a retry's
    smaller micro-batch (None: the configured one) raises the accumulation to cover the
    same samples.
    """
    effective = c.micro_batch_size * c.gradient_accumulation_steps
    micro = micro_batch_size or c.micro_batch_size
    return micro, math.ceil(effective / micro), effective


def _host_peak_rss_mb() -> float:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / MIB if sys.platform == "darwin" else peak / 1024


def _sizes(
    model_path, c: TrainConfig, micro_batch_size: int | None, attempt: int, device: torch.device, precision: str
):
    """Micro-batch split for this attempt, capped by ``gpu_memory_budget``; and its memory estimate."""
    micro, accum, effective = batch_split(c, micro_batch_size)
    lora = c.lora.enabled
    shape = model_shape(model_path, c.lora if lora else None)
    est_kwargs = dict(
        max_length=c.max_length,
        precision=precision,
        gradient_checkpointing=c.gradient_checkpointing,
        lora=lora,
        load_in_8bit=c.load_in_8bit,
    )
    budget = resolve_budget(c.gpu_memory_budget, device)
    if budget is not None:
        fitting = pick_micro_batch(shape, budget, upper=micro, **est_kwargs)
        if fitting < micro:
            log.info(
                "micro-batch %d does not fit train.gpu_memory_budget (%.2f GiB); using %d",
                micro,
                budget / 2**30,
                fitting,
            )
            micro, accum = fitting, math.ceil(effective / fitting)
    estimate = estimate_training_memory(shape, micro_batch=micro, **est_kwargs)
    log.info(
        "attempt %d: micro-batch %d (configured %d) x %d accumulation steps = effective batch %d samples; "
        "max_length %d, precision %s, device %s",
        attempt,
        micro,
        c.micro_batch_size,
        accum,
        effective,
        c.max_length,
        precision,
        device,
    )
    log.info(
        "memory estimate for micro-batch %d: predicted peak %.1f MiB (%s)",
        micro,
        estimate.total / MIB,
        ", ".join(f"{k} {v / MIB:.1f}" for k, v in asdict(estimate).items()),
    )
    return micro, accum, effective, estimate


def _device_and_precision(c: TrainConfig) -> tuple[torch.device, str]:
    """The training device (current for this process) and the resolved precision; levers checked."""
    if c.expandable_segments and torch.cuda.is_available():
        use_expandable_segments()
    device = pick_device(c.device)
    precision = resolve_precision(c.precision, device)
    check_levers(c, device, precision)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    return device, precision


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _tokenizer(model_path):
    """The model's tokenizer and the id that pads its batches."""
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(model_path)
    except OSError as exc:
        raise SelectFlowError(
            f"cannot load a tokenizer from {model_path} ({exc}); the model folder needs its tokenizer files"
        ) from None
    if tokenizer.eos_token_id is None:
        log.warning("tokenizer of %s has no eos token; responses are not closed by one", model_path)
    return tokenizer, pad_token_id(tokenizer)


def fit(
    model_path,
    pairs: list[tuple[str, str, str]],
    out_dir,
    cfg: TrainConfig | dict | None,
    *,
    micro_batch_size: int | None = None,
    attempt: int = 1,
    on_step: Callable[[int], None] | None = None,
    source: str = "",
    objective=None,
) -> dict:
    """The training loop behind :func:`train` and :func:`train_on_pool`.

    ``objective`` (e.g. :class:`selectflow.train.objective.GateObjective`) picks the trainable
    parameters (``select_trainable(model)``) and adds a loss term (``recording(model)``
    around the forward pass, then ``loss(captured, attention_mask, n_valid_tokens)``).
    """
    c = resolve_train_config(cfg)
    if objective is not None and c.lora.enabled:
        raise SelectFlowError(
            "the gate warm-up trains the quality gates and routers themselves, not LoRA adapters; "
            "set warmup.train.lora.enabled: false"
        )
    columns = METRIC_COLUMNS + (["quality_loss", "p_good"] if objective is not None else [])
    device, precision = _device_and_precision(c)
    _seed_everything(c.seed)
    micro, accum, effective, estimate = _sizes(model_path, c, micro_batch_size, attempt, device, precision)
    tokenizer, pad_id = _tokenizer(model_path)
    model = load_for_training(model_path, c, device, precision)
    if objective is not None:
        objective.select_trainable(model)
    run = Run(
        c=c,
        out_dir=Path(out_dir),
        device=device,
        precision=precision,
        attempt=attempt,
        micro=micro,
        accum=accum,
        effective=effective,
        estimate=estimate,
        columns=columns,
        model=model,
        objective=objective,
        n=len(pairs),
        spe=steps_per_epoch(len(pairs), effective),
    )
    start(run, model_path, pairs)
    elapsed, cpu_seconds, samples_done, cache = loop(run, pairs, tokenizer, pad_id, on_step)
    return _finish(run, model_path, tokenizer, source, (elapsed, cpu_seconds, samples_done), cache)


def _finish(run: Run, model_path, tokenizer, source: str, timing: tuple[float, float, int], cache) -> dict:
    """Save the checkpoint, the tables and ``summary.json``; drop the resume state; return the summary."""
    elapsed, cpu_seconds, samples_done = timing
    out_dir, device, total_steps = run.out_dir, run.device, run.total_steps
    if not run.monitor.rows or run.monitor.rows[-1]["step"] != total_steps:
        run.monitor.sample(total_steps)
    if cache is not None:
        cache.log_stats("end")
    kind = save_trained(run.model, tokenizer, out_dir / "checkpoint", run.c)
    write_rows(out_dir / "metrics.tsv", run.metrics, run.columns)
    run.monitor.write(out_dir / "memory.tsv")
    measured_peak = torch.cuda.max_memory_allocated(device) / MIB if device.type == "cuda" else None
    losses = [m["loss"] for m in run.metrics]
    summary = {
        "source": source,
        "model_path": str(model_path),
        "out_dir": str(out_dir),
        "n_samples": run.n,
        "steps": total_steps,
        "resumed_from_step": run.start,
        "attempt": run.attempt,
        "epochs": total_steps / run.spe,
        "micro_batch_size": run.micro,
        "gradient_accumulation_steps": run.accum,
        "effective_batch": run.effective,
        "precision": run.precision,
        "device": str(device),
        "lora": run.c.lora.enabled,
        "checkpoint": str(out_dir / "checkpoint"),
        "checkpoint_kind": kind,
        "first_loss": losses[0] if losses else None,
        "final_loss": float(np.mean(losses[-5:])) if losses else None,
        "samples_per_s": samples_done / elapsed if elapsed > 0 else None,
        "train_seconds": elapsed,
        "train_cpu_seconds": cpu_seconds,
        "estimated_peak_mb": run.estimate.total / MIB,
        "measured_peak_mb": measured_peak,
        "host_peak_rss_mb": _host_peak_rss_mb(),
        "cache": cache.stats() if cache is not None else None,
    }
    with atomic_open(out_dir / "summary.json", "w", encoding="utf-8") as fh:
        json.dump(summary, fh, indent=2)
    shutil.rmtree(out_dir / "resume", ignore_errors=True)
    log.info(
        "trained %d steps (%d resumed) on %d samples in %.1f s: loss %s -> %s; checkpoint %s",
        total_steps,
        run.start,
        run.n,
        elapsed,
        summary["first_loss"],
        summary["final_loss"],
        summary["checkpoint"],
    )
    return summary
