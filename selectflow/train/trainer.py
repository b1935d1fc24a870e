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
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, is_dataclass
from functools import partial
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from selectflow.config import TrainConfig, resolve_train_config
from selectflow.data.records import read_dataset
from selectflow.data.tokens import pad_token_id
from selectflow.runtime.device import pick_device, use_expandable_segments
from selectflow.runtime.errors import SelectFlowError
from selectflow.runtime.fsutil import atomic_open
from selectflow.runtime.oom import is_oom
from selectflow.train.checkpoint import load_resume, save_resume, save_trained
from selectflow.train.data import (
    TokenizedDataset,
    data_digest,
    load_training_pairs,
    plan_steps,
    split_micro,
    steps_per_epoch,
)
from selectflow.train.estimate import (
    estimate_training_memory,
    model_shape,
    pick_micro_batch,
    resolve_budget,
)
from selectflow.train.loader import BatchStream
from selectflow.train.model import (
    check_levers,
    compute_dtype,
    load_for_training,
    resolve_precision,
)
from selectflow.train.monitor import MIB, MemoryMonitor, memory_snapshot, write_rows
from selectflow.train.step import lr_lambda, optimizer_step

log = logging.getLogger(__name__)

METRIC_COLUMNS = [
    "step",
    "epoch",
    "loss",
    "lr",
    "samples_per_s",
    "host_rss_mb",
    "gpu_allocated_mb",
    "gpu_reserved_mb",
    "gpu_peak_mb",
]


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


@dataclass
class _Run:
    """One training run between its setup, its loop and its end."""

    c: TrainConfig
    out_dir: Path
    device: torch.device
    precision: str
    attempt: int
    micro: int
    accum: int
    effective: int
    estimate: object
    columns: list[str]
    model: object
    objective: object
    n: int
    spe: int
    total_steps: int = 0
    params: list = None
    optimizer: object = None
    scheduler: object = None
    scaler: object = None
    fingerprint: dict = None
    start: int = 0
    orders: dict = None
    metrics: list = None
    monitor: MemoryMonitor = None
    steps: list = None


def _fingerprint_value(value):
    return asdict(value) if is_dataclass(value) else value


def _start(run: _Run, model_path, pairs) -> None:
    """Optimizer, schedule and scaler of ``run``; its resume state; the sample plan of its remaining steps."""
    c = run.c
    run.total_steps = c.max_steps or c.epochs * run.spe
    run.params = [p for p in run.model.parameters() if p.requires_grad]
    run.optimizer = torch.optim.AdamW(run.params, lr=float(c.learning_rate), weight_decay=float(c.weight_decay))
    run.scheduler = torch.optim.lr_scheduler.LambdaLR(run.optimizer, lr_lambda(run.total_steps, float(c.warmup_ratio)))
    run.scaler = torch.amp.GradScaler(run.device.type, enabled=run.precision == "fp16")
    run.fingerprint = {
        "model_path": str(Path(model_path).resolve()),
        "data": data_digest(pairs),
        "n_samples": run.n,
        "effective_batch": run.effective,
        "total_steps": run.total_steps,
        "precision": run.precision,
        **{
            k: _fingerprint_value(getattr(c, k))
            for k in (
                "learning_rate",
                "weight_decay",
                "max_grad_norm",
                "warmup_ratio",
                "seed",
                "max_length",
                "lora",
                "load_in_8bit",
            )
        },
        **({"objective": run.objective.fingerprint()} if run.objective is not None else {}),
    }
    state = load_resume(
        run.out_dir / "resume",
        run.fingerprint,
        model=run.model,
        optimizer=run.optimizer,
        scheduler=run.scheduler,
        scaler=run.scaler,
    )
    run.start = state.step if state else 0
    run.orders = {state.epoch: state.order} if state else {}
    run.metrics = list(state.metrics) if state else []
    run.monitor = MemoryMonitor(run.device, c.monitor_interval, c.empty_cache_every, state.memory if state else None)
    run.steps = [
        split_micro(idx, run.micro)
        for idx in plan_steps(run.orders, run.n, run.effective, c.seed, run.start, run.total_steps)
    ]


def _record_step(
    run: _Run, step: int, loss: float, lr: float, n_step_samples: int, seconds: float, extra: dict
) -> None:
    """Append step ``step``'s metrics row; after the first step of this run, compare memory to the estimate."""
    snap = memory_snapshot(run.device)
    run.metrics.append(
        {
            "step": step + 1,
            "epoch": (step + 1) / run.spe,
            "loss": loss,
            "lr": lr,
            "samples_per_s": n_step_samples / seconds,
            **{k: snap[k] for k in METRIC_COLUMNS if k in snap},
            **extra,
        }
    )
    if step == run.start:
        cuda = run.device.type == "cuda"
        measured = snap["gpu_peak_mb"] if cuda else snap["host_rss_mb"]
        log.info(
            "after the first step: predicted peak %.1f MiB, measured %s %.1f MiB",
            run.estimate.total / MIB,
            "device peak" if cuda else "host RSS",
            measured,
        )


def _after_step(run: _Run, done: int, lr: float, cache) -> None:
    """Memory sample, progress log and tables, and the resume save that fall on step ``done``."""
    c = run.c
    run.monitor.after_step(done)
    if c.monitor_interval and done % c.monitor_interval == 0:
        log.info(
            "step %d/%d: loss %.4f, lr %.3g, %.1f samples/s",
            done,
            run.total_steps,
            run.metrics[-1]["loss"],
            lr,
            run.metrics[-1]["samples_per_s"],
        )
        write_rows(run.out_dir / "metrics.tsv", run.metrics, run.columns)
        run.monitor.write(run.out_dir / "memory.tsv")
        if cache is not None:
            cache.log_stats(f"step {done}")
    if c.save_every and done % c.save_every == 0 and done < run.total_steps:
        epoch, k = divmod(done, run.spe)
        save_resume(
            run.out_dir / "resume",
            model=run.model,
            optimizer=run.optimizer,
            scheduler=run.scheduler,
            scaler=run.scaler,
            step=done,
            epoch=epoch,
            position=k * run.effective,
            order=run.orders[epoch],
            fingerprint=run.fingerprint,
            micro_batch_size=run.micro,
            gradient_accumulation_steps=run.accum,
            metrics=run.metrics,
            metric_columns=run.columns,
            memory=run.monitor.rows,
        )


def _loop(run: _Run, pairs, tokenizer, pad_id: int, on_step) -> tuple[float, float, int, object]:
    """Run the remaining optimizer steps; return wall and CPU seconds, samples trained and the device cache."""
    c = run.c
    stream = BatchStream(
        TokenizedDataset(pairs, tokenizer, c.max_length),
        [mb for step in run.steps for mb in step],
        c,
        run.device,
        pad_id,
    )
    cache = stream.cache
    autocast = partial(
        torch.autocast, run.device.type, dtype=compute_dtype(run.precision), enabled=run.precision != "fp32"
    )
    if run.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(run.device)
    t_start, cpu_start = time.perf_counter(), os.times()
    samples_done = 0
    step = run.start
    it = iter(stream)
    try:
        for step in tqdm(
            range(run.start, run.total_steps),
            initial=run.start,
            total=run.total_steps,
            desc="train",
            mininterval=5,
            disable=None,
        ):
            t0 = time.perf_counter()
            lr = run.scheduler.get_last_lr()[0]
            extra: dict = {}
            micro_batches = run.steps[step - run.start]
            loss = optimizer_step(
                run.model,
                [next(it) for _ in micro_batches],
                autocast=autocast,
                scaler=run.scaler,
                optimizer=run.optimizer,
                scheduler=run.scheduler,
                params=run.params,
                max_grad_norm=float(c.max_grad_norm),
                objective=run.objective,
                extra=extra,
            )
            n_step_samples = sum(len(mb) for mb in micro_batches)
            samples_done += n_step_samples
            _record_step(run, step, loss, lr, n_step_samples, time.perf_counter() - t0, extra)
            _after_step(run, step + 1, lr, cache)
            if on_step is not None:
                on_step(step + 1)
    except Exception as exc:
        if is_oom(exc):
            log.error(
                "out of memory at step %d with micro-batch %d (attempt %d); a retry divides the micro-batch "
                "by retry.factor and resumes from the last save in %s",
                step + 1,
                run.micro,
                run.attempt,
                run.out_dir / "resume",
            )
        raise
    finally:
        stream.close()
    return time.perf_counter() - t_start, sum(os.times()[:4]) - sum(cpu_start[:4]), samples_done, cache


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
    run = _Run(
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
    _start(run, model_path, pairs)
    elapsed, cpu_seconds, samples_done, cache = _loop(run, pairs, tokenizer, pad_id, on_step)
    return _finish(run, model_path, tokenizer, source, (elapsed, cpu_seconds, samples_done), cache)


def _finish(run: _Run, model_path, tokenizer, source: str, timing: tuple[float, float, int], cache) -> dict:
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
