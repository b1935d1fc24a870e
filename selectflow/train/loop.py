"""The optimizer steps of one training run, between its setup and its end in :mod:`selectflow.train.trainer`.

* :class:`Run`: the run's sizes, device, model and, once started, its optimizer state and metrics;
* :func:`start`: optimizer (AdamW), LR schedule, gradient scaler, the ``resume/`` state when it was
  written with the same settings (:mod:`selectflow.train.checkpoint`), and the micro-batches of each
  remaining step;
* :func:`loop`: the remaining optimizer steps over a :class:`~selectflow.train.loader.BatchStream`;
  per step a metrics row (:data:`METRIC_COLUMNS`, plus the objective's) and the memory monitor's
  step hook; every ``monitor_interval`` steps a progress log and the tables; every ``save_every``
  steps a resume save.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import asdict, dataclass, is_dataclass
from functools import partial
from pathlib import Path

import torch
from tqdm import tqdm

from selectflow.config import TrainConfig
from selectflow.runtime.oom import is_oom
from selectflow.train.checkpoint import load_resume, save_resume
from selectflow.train.data import TokenizedDataset, data_digest, plan_steps, split_micro
from selectflow.train.loader import BatchStream
from selectflow.train.model import compute_dtype
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


@dataclass
class Run:
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


def start(run: Run, model_path, pairs) -> None:
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


def _record_step(run: Run, step: int, loss: float, lr: float, n_step_samples: int, seconds: float, extra: dict) -> None:
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


def _after_step(run: Run, done: int, lr: float, cache) -> None:
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


def loop(run: Run, pairs, tokenizer, pad_id: int, on_step) -> tuple[float, float, int, object]:
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
