"""One optimizer step of the SFT loop: the response-token loss, accumulation, the schedule.

The loss covers response tokens only and is normalised by the response-token count of
the whole optimizer step, so gradients do not depend on how the step is cut into
micro-batches.
"""

from __future__ import annotations

from contextlib import nullcontext

import torch
import torch.nn.functional as F

from selectflow.train.data import IGNORE_INDEX


def lr_lambda(total_steps: int, warmup_ratio: float):
    """Linear warm-up over ``warmup_ratio`` of the steps, then linear decay to 0 (for ``LambdaLR``)."""
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
    return F.cross_entropy(
        logits.float().reshape(-1, logits.shape[-1]), shifted.reshape(-1), ignore_index=IGNORE_INDEX, reduction="sum"
    )


def optimizer_step(
    model,
    micro_batches: list[dict],
    *,
    autocast,
    scaler,
    optimizer,
    scheduler,
    params,
    max_grad_norm: float,
    objective=None,
    extra: dict | None = None,
) -> float:
    """Forward/backward every micro-batch of one step, then step the optimizer; return the step's loss.

    Each micro-batch's summed token loss is divided by the response-token count of the
    whole step, so the accumulated gradient is that of the step's mean token loss. An
    ``objective`` adds its term, normalised by the step's valid (attention-mask) or response tokens;
    ``extra`` then receives the step's ``quality_loss`` and ``p_good``.
    """
    n_tokens = max(1, sum(int((mb["labels"][:, 1:] != IGNORE_INDEX).sum()) for mb in micro_batches))
    n_valid = max(1, sum(int(mb["attention_mask"].sum()) for mb in micro_batches))
    loss_sum = 0.0
    quality_sum = p_good_sum = 0.0
    for mb in micro_batches:
        with autocast():
            targets = objective.targets(model, mb) if objective is not None else None
        with autocast(), objective.recording(model) if objective else nullcontext() as gate_logits:
            logits = model(input_ids=mb["input_ids"], attention_mask=mb["attention_mask"]).logits
        loss = response_loss_sum(logits, mb["labels"]) / n_tokens
        if objective is not None:
            quality = objective.loss(gate_logits, mb, n_valid, n_tokens, targets, logits)
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
