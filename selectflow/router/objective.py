"""Select-MoE stage 1 (warm-up) on a converted model: which tensors train, and the gate loss.

:class:`GateObjective` (used by :func:`selectflow.train.trainer.fit`, rule ``warmup``) trains
only the quality gates of :mod:`selectflow.router.gate` and the routers; its loss adds
``quality_loss_weight`` × :func:`masked_gate_loss` to the LM loss. :func:`forced_gates` and
:func:`record_gate_logits` fix or record the gates' outputs around forward passes.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

from selectflow.router.gate import default_router_pattern, find_moe_blocks, quality_gates
from selectflow.runtime.errors import SelectFlowError

log = logging.getLogger(__name__)


@contextmanager
def forced_gates(model: nn.Module, good: float) -> Iterator[None]:
    """Within the block every gate outputs ``(good, 1 - good)`` whatever its input."""
    gates = [g for _, g in quality_gates(model)]
    for g in gates:
        g.force_good = float(good)
    try:
        yield
    finally:
        for g in gates:
            g.force_good = None


@contextmanager
def record_gate_logits(model: nn.Module) -> Iterator[list[torch.Tensor]]:
    """Collect each gate's logits ``[..., 2]`` of the forward passes run inside the block, in call order."""
    sink: list[torch.Tensor] = []
    handles = [g.register_forward_hook(lambda _m, _i, out: sink.append(out)) for _, g in quality_gates(model)]
    try:
        yield sink
    finally:
        for h in handles:
            h.remove()


def _masked_layer_mean(gate_logits: list[torch.Tensor], attention_mask: torch.Tensor, n_tokens, fn) -> torch.Tensor:
    """Mean over layers of ``sum(fn(p_good) · mask) / n_tokens`` (``n_tokens`` None: the mask's sum)."""
    if not gate_logits:
        raise SelectFlowError("the model ran no quality gates; the gate loss needs a converted model")
    mask = attention_mask.reshape(-1).to(torch.float32)
    denom = mask.sum() if n_tokens is None else torch.as_tensor(n_tokens, dtype=torch.float32)
    terms = []
    for logits in gate_logits:
        p_good = torch.softmax(logits.float().reshape(-1, 2), dim=-1)[:, 0]
        m = mask.to(p_good.device)
        terms.append((fn(p_good) * m).sum() / denom.clamp_min(1).to(p_good.device))
    return torch.stack(terms).mean()


def masked_gate_loss(gate_logits: list[torch.Tensor], attention_mask: torch.Tensor,
                     n_tokens: int | torch.Tensor | None = None) -> torch.Tensor:
    """Mean over layers of the attention-masked token mean of ``sigmoid(p_good)``.

    ``gate_logits``: one ``[B, T, 2]`` (or ``[B·T, 2]``) tensor per gated layer;
    ``p_good = softmax(logits)[..., 0]``. Padding (mask 0) is left out of the mean.
    ``n_tokens`` divides the masked sum instead of this batch's valid-token count (to
    normalise by a whole optimizer step cut into micro-batches).
    """
    return _masked_layer_mean(gate_logits, attention_mask, n_tokens, torch.sigmoid)


class GateObjective:
    """Stage 1 (warm-up): train only the quality gates and the routers; add the gate loss.

    Used by :func:`selectflow.train.trainer.fit`: :meth:`select_trainable` after loading,
    :meth:`recording` around each micro-batch's forward pass, :meth:`loss` after it.
    """

    def __init__(self, quality_loss_weight: float, router_pattern: str | None = None):
        self.weight = float(quality_loss_weight)
        self.router_pattern = router_pattern or default_router_pattern()

    def fingerprint(self) -> dict:
        return {"quality_loss_weight": self.weight, "router_pattern": self.router_pattern}

    def select_trainable(self, model: nn.Module) -> list[str]:
        """Freeze everything but the gates and the router weights; return the trainable names."""
        gates = quality_gates(model)
        if not gates:
            raise SelectFlowError(f"{type(model).__name__} has no quality gates: the gate warm-up needs a converted "
                                  "model (rule convert writes one)")
        routers = [router for _, _, router in find_moe_blocks(model, self.router_pattern)]
        keep = {id(p) for m in [g for _, g in gates] + routers for p in m.parameters()}
        for p in model.parameters():
            p.requires_grad_(id(p) in keep)
        names = [n for n, p in model.named_parameters() if p.requires_grad]
        log.info("gate warm-up: training %d tensors (%d quality gates, %d routers), %d parameters; the rest frozen",
                 len(names), len(gates), len(routers), sum(p.numel() for p in model.parameters() if p.requires_grad))
        return names

    @contextmanager
    def recording(self, model: nn.Module) -> Iterator[list[torch.Tensor]]:
        with record_gate_logits(model) as sink:
            yield sink

    def loss(self, gate_logits: list[torch.Tensor], attention_mask: torch.Tensor, n_tokens) -> torch.Tensor:
        """``quality_loss_weight`` × :func:`masked_gate_loss` (normalised by ``n_tokens``)."""
        return self.weight * masked_gate_loss(gate_logits, attention_mask, n_tokens)

    @torch.no_grad()
    def p_good_sum(self, gate_logits: list[torch.Tensor], attention_mask: torch.Tensor) -> torch.Tensor:
        """Layer mean of the summed good-probability over valid tokens (for the metrics)."""
        return _masked_layer_mean(gate_logits, attention_mask, 1, lambda p: p)
