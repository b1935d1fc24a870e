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

The loss covers response tokens only and is normalised by the response-token count of
the whole optimizer step, so gradients do not depend on how the step is cut into
micro-batches. Snakemake attempt ``n`` halves the micro-batch ``n-1`` times (floor 1) and
raises the accumulation to keep the effective batch; a rerun resumes from the last save.
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
from contextlib import nullcontext
from dataclasses import asdict
from functools import partial
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from selectflow.data.records import read_dataset
from selectflow.data.tokens import pad_token_id
from selectflow.router.gate import quality_gates, save_converted
from selectflow.runtime.device import resolve_device
from selectflow.runtime.errors import SelectFlowError
from selectflow.runtime.fsutil import atomic_dir, atomic_open
from selectflow.runtime.gpus import ALLOC_CONF
from selectflow.runtime.oom import attempt_size, is_oom
from selectflow.train.checkpoint import load_resume, save_resume
from selectflow.train.data import (
    IGNORE_INDEX,
    TokenizedDataset,
    load_training_pairs,
    plan_steps,
    split_micro,
    steps_per_epoch,
)
from selectflow.train.estimate import (
    estimate_training_memory,
    freest_cuda_device,
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
from selectflow.train.monitor import MIB, MemoryMonitor, memory_snapshot, write_tsv
from selectflow.train.presets import resolve_train_config

log = logging.getLogger(__name__)

METRIC_COLUMNS = ["step", "epoch", "loss", "lr", "samples_per_s", "host_rss_mb", "gpu_allocated_mb",
                  "gpu_reserved_mb", "gpu_peak_mb"]


def train(model_path, data_jsonl, out_dir, cfg: dict | None, *, attempt: int = 1,
          on_step: Callable[[int], None] | None = None) -> dict:
    """Fine-tune ``model_path`` on the records of ``data_jsonl``; return the run summary.

    ``cfg`` is the ``train:`` config section; ``attempt`` the Snakemake attempt;
    ``on_step(step)`` is called after each optimizer step (and its resume save). The
    summary (also ``summary.json``) holds the sizes used (``micro_batch_size``,
    ``gradient_accumulation_steps``, ``effective_batch``), ``steps``, ``resumed_from_step``,
    ``first_loss`` / ``final_loss`` (mean of the last 5 steps), ``samples_per_s``,
    ``train_seconds`` / ``train_cpu_seconds`` (wall / CPU time of the loop, with workers),
    ``estimated_peak_mb`` beside ``measured_peak_mb`` (CUDA) and ``host_peak_rss_mb``, and
    the device-cache counts (``cache``).
    """
    pairs = load_training_pairs(data_jsonl)
    return fit(model_path, pairs, out_dir, cfg, attempt=attempt, on_step=on_step, source=str(data_jsonl))


def train_on_pool(model_path, pool_jsonl, out_dir, cfg: dict | None, *, subset_ratio: float, attempt: int = 1,
                  on_step: Callable[[int], None] | None = None, objective=None) -> dict:
    """Fine-tune on a random ``subset_ratio`` of a pool (the warm-up run).

    ``pool_jsonl`` is one JSONL path or a list of them (Alpaca / ShareGPT / messages, one
    format per file). The subset is drawn with ``train.seed`` over all records and does
    not depend on the attempt, so a retry resumes on the same samples. ``objective`` (a
    :class:`selectflow.router.gate.GateObjective`) makes it Select-MoE's stage 1: only the gates
    and routers train, and the gate loss is added.
    """
    if not 0.0 < float(subset_ratio) <= 1.0:
        raise SelectFlowError(f"subset_ratio must be in (0, 1], got {subset_ratio!r}")
    paths = [pool_jsonl] if isinstance(pool_jsonl, (str, os.PathLike)) else list(pool_jsonl)
    records = [rec for path in paths for rec in read_dataset(path, Path(path).stem)]
    k = max(1, round(float(subset_ratio) * len(records)))
    seed = resolve_train_config(cfg)["seed"]
    chosen = sorted(random.Random(seed).sample(range(len(records)), k))
    log.info("warm-up subset: %d of %d records of %s (ratio %g, seed %d)", k, len(records),
             ", ".join(map(str, paths)), subset_ratio, seed)
    pairs = [(records[i]["sample_id"], records[i]["prompt"], records[i]["response"]) for i in chosen]
    return fit(model_path, pairs, out_dir, cfg, attempt=attempt, on_step=on_step,
               source=f"{', '.join(map(str, paths))} (subset {subset_ratio:g})", objective=objective)


def _pick_device(spec: str) -> torch.device:
    if spec == "auto" and torch.cuda.is_available() and torch.cuda.device_count() > 1:
        return freest_cuda_device()
    device = resolve_device(spec)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    return device


def _expandable_segments() -> None:
    """Ask the CUDA allocator for expandable segments (less fragmentation) unless the user set it.

    The allocator reads ``PYTORCH_CUDA_ALLOC_CONF`` when CUDA initialises, so this works only
    before the first CUDA call of the process.
    """
    if not torch.cuda.is_available() or "PYTORCH_CUDA_ALLOC_CONF" in os.environ:
        return
    if torch.cuda.is_initialized():
        log.info("CUDA is already initialised: set PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True in the "
                 "environment to get expandable segments")
        return
    os.environ["PYTORCH_CUDA_ALLOC_CONF"] = ALLOC_CONF
    log.info("CUDA allocator: %s", ALLOC_CONF)


def batch_split(c: dict, attempt: int) -> tuple[int, int, int]:
    """``(micro_batch, accumulation, effective_batch)`` for Snakemake attempt ``attempt``.

    The effective batch (configured micro-batch × accumulation) never changes; the
    micro-batch halves per retry and the accumulation grows to cover the same samples.
    """
    effective = c["micro_batch_size"] * c["gradient_accumulation_steps"]
    micro = attempt_size(c["micro_batch_size"], attempt)
    return micro, math.ceil(effective / micro), effective


def _data_digest(pairs: list[tuple[str, str, str]]) -> str:
    import hashlib

    h = hashlib.sha256()
    for sample_id, prompt, response in pairs:
        h.update(json.dumps([sample_id, prompt, response]).encode())
    return h.hexdigest()[:16]


def _lr_lambda(total_steps: int, warmup_ratio: float):
    warmup = int(round(warmup_ratio * total_steps))

    def factor(step: int) -> float:
        if warmup and step < warmup:
            return (step + 1) / warmup
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup))

    return factor


def response_loss_sum(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Summed next-token cross-entropy over labelled positions (fp32).

    ``logits`` ``[B, T, V]`` predict token ``t+1`` at position ``t``; the labels are shifted
    rather than the logits, so no copy of the logits is made beyond the fp32 upcast.
    """
    shifted = F.pad(labels[:, 1:], (0, 1), value=IGNORE_INDEX)
    return F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), shifted.reshape(-1),
                           ignore_index=IGNORE_INDEX, reduction="sum")


def _host_peak_rss_mb() -> float:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / MIB if sys.platform == "darwin" else peak / 1024


def _sizes(model_path, c: dict, attempt: int, device: torch.device, precision: str):
    """Micro-batch split for this attempt, capped by ``gpu_memory_budget``; and its memory estimate."""
    micro, accum, effective = batch_split(c, attempt)
    lora = c["lora"]["enabled"]
    shape = model_shape(model_path, c["lora"] if lora else None)
    est_kwargs = dict(max_length=c["max_length"], precision=precision,
                      gradient_checkpointing=c["gradient_checkpointing"], lora=lora, load_in_8bit=c["load_in_8bit"])
    budget = resolve_budget(c["gpu_memory_budget"], device)
    if budget is not None:
        fitting = pick_micro_batch(shape, budget, upper=micro, **est_kwargs)
        if fitting < micro:
            log.info("micro-batch %d does not fit train.gpu_memory_budget (%.2f GiB); using %d", micro,
                     budget / 2**30, fitting)
            micro, accum = fitting, math.ceil(effective / fitting)
    estimate = estimate_training_memory(shape, micro_batch=micro, **est_kwargs)
    log.info("attempt %d: micro-batch %d (configured %d) x %d accumulation steps = effective batch %d samples; "
             "max_length %d, precision %s, device %s", attempt, micro, c["micro_batch_size"], accum, effective,
             c["max_length"], precision, device)
    log.info("memory estimate for micro-batch %d: predicted peak %.1f MiB (%s)", micro, estimate.total / MIB,
             ", ".join(f"{k} {v / MIB:.1f}" for k, v in asdict(estimate).items()))
    return micro, accum, effective, estimate


def _optimizer_step(model, micro_batches: list[dict], *, autocast, scaler, optimizer, scheduler, params,
                    max_grad_norm: float, objective=None, extra: dict | None = None) -> float:
    """Forward/backward every micro-batch of one step, then step the optimizer; return the step's loss.

    Each micro-batch's summed token loss is divided by the response-token count of the
    whole step, so the accumulated gradient is that of the step's mean token loss. An
    ``objective`` adds its term, normalised by the step's valid (attention-mask) tokens;
    ``extra`` then receives the step's ``quality_loss`` and ``p_good``.
    """
    n_tokens = max(1, sum(int((mb["labels"][:, 1:] != IGNORE_INDEX).sum()) for mb in micro_batches))
    n_valid = max(1, sum(int(mb["attention_mask"].sum()) for mb in micro_batches))
    loss_sum = 0.0
    quality_sum = p_good_sum = 0.0
    for mb in micro_batches:
        with autocast(), (objective.recording(model) if objective else nullcontext()) as gate_logits:
            logits = model(input_ids=mb["input_ids"], attention_mask=mb["attention_mask"]).logits
        loss = response_loss_sum(logits, mb["labels"]) / n_tokens
        if objective is not None:
            quality = objective.loss(gate_logits, mb["attention_mask"], n_valid)
            loss = loss + quality
            quality_sum += quality.detach()
            p_good_sum += objective.p_good_sum(gate_logits, mb["attention_mask"]) / n_valid
            del gate_logits
        scaler.scale(loss).backward()
        loss_sum += loss.detach()
        del logits, loss
    if max_grad_norm:
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
    scaler.step(optimizer)
    scaler.update()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    if extra is not None and objective is not None:
        extra.update(quality_loss=float(quality_sum), p_good=float(p_good_sum))
    return float(loss_sum)


def fit(model_path, pairs: list[tuple[str, str, str]], out_dir, cfg: dict | None, *, attempt: int = 1,
        on_step: Callable[[int], None] | None = None, source: str = "", objective=None) -> dict:
    """The training loop behind :func:`train` and :func:`train_on_pool`.

    ``objective`` (e.g. :class:`selectflow.router.gate.GateObjective`) picks the trainable
    parameters (``select_trainable(model)``) and adds a loss term (``recording(model)``
    around the forward pass, then ``loss(captured, attention_mask, n_valid_tokens)``).
    """
    from transformers import AutoTokenizer

    c = resolve_train_config(cfg)
    if objective is not None and c["lora"]["enabled"]:
        raise SelectFlowError("the gate warm-up trains the quality gates and routers themselves, not LoRA adapters; "
                              "set warmup.train.lora.enabled: false")
    columns = METRIC_COLUMNS + (["quality_loss", "p_good"] if objective is not None else [])
    out_dir = Path(out_dir)
    if c["expandable_segments"]:
        _expandable_segments()
    device = _pick_device(c["device"])
    precision = resolve_precision(c["precision"], device)
    check_levers(c, device, precision)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    seed = c["seed"]
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)

    micro, accum, effective, estimate = _sizes(model_path, c, attempt, device, precision)

    try:
        tokenizer = AutoTokenizer.from_pretrained(model_path)
    except OSError as exc:
        raise SelectFlowError(f"cannot load a tokenizer from {model_path} ({exc}); the model folder needs its "
                              "tokenizer files") from None
    if tokenizer.eos_token_id is None:
        log.warning("tokenizer of %s has no eos token; responses are not closed by one", model_path)
    pad_id = pad_token_id(tokenizer)
    model = load_for_training(model_path, c, device, precision)
    if objective is not None:
        objective.select_trainable(model)

    n = len(pairs)
    spe = steps_per_epoch(n, effective)
    total_steps = c["max_steps"] or c["epochs"] * spe
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=float(c["learning_rate"]), weight_decay=float(c["weight_decay"]))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_lambda(total_steps, float(c["warmup_ratio"])))
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
    fingerprint = {
        "model_path": str(Path(model_path).resolve()), "data": _data_digest(pairs), "n_samples": n,
        "effective_batch": effective, "total_steps": total_steps, "precision": precision,
        **{k: c[k] for k in ("learning_rate", "weight_decay", "max_grad_norm", "warmup_ratio", "seed", "max_length",
                             "lora", "load_in_8bit")},
        **({"objective": objective.fingerprint()} if objective is not None else {}),
    }
    state = load_resume(out_dir / "resume", fingerprint, model=model, optimizer=optimizer, scheduler=scheduler,
                        scaler=scaler)
    start = state.step if state else 0
    orders = {state.epoch: state.order} if state else {}
    metrics = list(state.metrics) if state else []
    monitor = MemoryMonitor(device, c["monitor_interval"], c["empty_cache_every"], state.memory if state else None)
    steps = [split_micro(idx, micro) for idx in plan_steps(orders, n, effective, seed, start, total_steps)]

    stream = BatchStream(TokenizedDataset(pairs, tokenizer, c["max_length"]), [mb for step in steps for mb in step],
                         c, device, pad_id)
    cache = stream.cache
    autocast = partial(torch.autocast, device.type, dtype=compute_dtype(precision), enabled=precision != "fp32")
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    t_start, cpu_start = time.perf_counter(), os.times()
    samples_done = 0
    step = start
    it = iter(stream)
    try:
        for step in tqdm(range(start, total_steps), initial=start, total=total_steps, desc="train", mininterval=5,
                         disable=None):
            t0 = time.perf_counter()
            lr = scheduler.get_last_lr()[0]
            extra: dict = {}
            loss = _optimizer_step(model, [next(it) for _ in steps[step - start]], autocast=autocast, scaler=scaler,
                                   optimizer=optimizer, scheduler=scheduler, params=params,
                                   max_grad_norm=float(c["max_grad_norm"]), objective=objective, extra=extra)
            done = step + 1
            n_step_samples = sum(len(mb) for mb in steps[step - start])
            samples_done += n_step_samples
            snap = memory_snapshot(device)
            metrics.append({"step": done, "epoch": done / spe, "loss": loss, "lr": lr,
                            "samples_per_s": n_step_samples / (time.perf_counter() - t0),
                            **{k: snap[k] for k in METRIC_COLUMNS if k in snap}, **extra})
            if step == start:
                measured = snap["gpu_peak_mb"] if device.type == "cuda" else snap["host_rss_mb"]
                log.info("after the first step: predicted peak %.1f MiB, measured %s %.1f MiB", estimate.total / MIB,
                         "device peak" if device.type == "cuda" else "host RSS", measured)
            monitor.after_step(done)
            if c["monitor_interval"] and done % c["monitor_interval"] == 0:
                log.info("step %d/%d: loss %.4f, lr %.3g, %.1f samples/s", done, total_steps, metrics[-1]["loss"], lr,
                         metrics[-1]["samples_per_s"])
                write_tsv(out_dir / "metrics.tsv", metrics, columns)
                monitor.write(out_dir / "memory.tsv")
                if cache is not None:
                    cache.log_stats(f"step {done}")
            if c["save_every"] and done % c["save_every"] == 0 and done < total_steps:
                epoch, k = divmod(done, spe)
                save_resume(out_dir / "resume", model=model, optimizer=optimizer, scheduler=scheduler, scaler=scaler,
                            step=done, epoch=epoch, position=k * effective, order=orders[epoch],
                            fingerprint=fingerprint, micro_batch_size=micro, gradient_accumulation_steps=accum,
                            metrics=metrics, metric_columns=columns, memory=monitor.rows)
            if on_step is not None:
                on_step(done)
    except Exception as exc:
        if is_oom(exc):
            log.error("out of memory at step %d with micro-batch %d (attempt %d); a retry halves the micro-batch "
                      "and resumes from the last save in %s", step + 1, micro, attempt, out_dir / "resume")
        raise
    finally:
        stream.close()
    elapsed = time.perf_counter() - t_start
    cpu_seconds = sum(os.times()[:4]) - sum(cpu_start[:4])

    if not monitor.rows or monitor.rows[-1]["step"] != total_steps:
        monitor.sample(total_steps)
    if cache is not None:
        cache.log_stats("end")
    kind = _save_checkpoint(model, tokenizer, out_dir / "checkpoint", c)
    write_tsv(out_dir / "metrics.tsv", metrics, columns)
    monitor.write(out_dir / "memory.tsv")
    measured_peak = torch.cuda.max_memory_allocated(device) / MIB if device.type == "cuda" else None
    losses = [m["loss"] for m in metrics]
    summary = {
        "source": source, "model_path": str(model_path), "out_dir": str(out_dir), "n_samples": n,
        "steps": total_steps, "resumed_from_step": start, "attempt": attempt, "epochs": total_steps / spe,
        "micro_batch_size": micro, "gradient_accumulation_steps": accum, "effective_batch": effective,
        "precision": precision, "device": str(device), "lora": c["lora"]["enabled"],
        "checkpoint": str(out_dir / "checkpoint"), "checkpoint_kind": kind, "first_loss": losses[0] if losses else None,
        "final_loss": float(np.mean(losses[-5:])) if losses else None,
        "samples_per_s": samples_done / elapsed if elapsed > 0 else None, "train_seconds": elapsed,
        "train_cpu_seconds": cpu_seconds,
        "estimated_peak_mb": estimate.total / MIB, "measured_peak_mb": measured_peak,
        "host_peak_rss_mb": _host_peak_rss_mb(), "cache": cache.stats() if cache is not None else None,
    }
    with atomic_open(out_dir / "summary.json", "w", encoding="utf-8") as fh:
        json.dump(summary, fh, indent=2)
    shutil.rmtree(out_dir / "resume", ignore_errors=True)
    log.info("trained %d steps (%d resumed) on %d samples in %.1f s: loss %s -> %s; checkpoint %s", total_steps,
             start, n, elapsed, summary["first_loss"], summary["final_loss"], summary["checkpoint"])
    return summary


def _save_checkpoint(model, tokenizer, path: Path, c: dict) -> str:
    """Save the trained model atomically; LoRA is merged unless the base is 8-bit (adapter only)."""
    kind = "full"
    if c["lora"]["enabled"]:
        if c["load_in_8bit"]:
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
