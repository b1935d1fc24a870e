"""Select-MoE stage 1 (warm-up) on a converted model: which tensors train, and the gate loss.

:class:`GateObjective` (used by :func:`selectflow.train.trainer.fit`, rule ``warmup``) trains
only the quality gates of :mod:`selectflow.router.gate` and the routers; its loss adds
``quality_loss_weight`` × a gate term to the LM loss (``warmup.gate_objective``):

``select_moe``       Select-MoE's: :func:`masked_gate_loss`, the mean sigmoid(p_good) over every
                     valid token, so a token is routed through the MoE where the MoE lowers
                     the LM loss by more than the penalty
``response_tokens``  the same penalty over the positions that predict a response token only,
                     the tokens the LM loss counts, so both sides of the trade-off count the
                     same tokens (normalised by the step's response-token count)
``all_tokens``       Select-MoE's penalty, plus the LM loss of the prompt tokens (the trainer's
                     LM loss counts the response only), so both sides of the trade-off count
                     every token: the penalty alone no longer pushes prompt tokens to the trash
``prompt_gain``      a target instead of a penalty: binary cross-entropy of p_good against
                     whether the prompt lowers the next response token's loss
                     (:func:`prompt_gain_targets`, the base model with every gate forced to
                     good = 1, with the prompt vs without it); prompt positions get the
                     neutral target 0.5

:func:`forced_gates` and :func:`record_gate_logits` fix or record the gates' outputs around
forward passes.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn

from selectflow.router.gate import find_moe_blocks, quality_gates
from selectflow.router.modules import DEFAULT_ROUTER_PATTERN
from selectflow.runtime.errors import SelectFlowError
from selectflow.schema import schema_default, schema_enum
from selectflow.train.data import IGNORE_INDEX

log = logging.getLogger(__name__)

OBJECTIVES = schema_enum("warmup", "gate_objective")


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


def masked_gate_loss(
    gate_logits: list[torch.Tensor], attention_mask: torch.Tensor, n_tokens: int | torch.Tensor | None = None
) -> torch.Tensor:
    """Mean over layers of the attention-masked token mean of ``sigmoid(p_good)``.

    ``gate_logits``: one ``[B, T, 2]`` (or ``[B·T, 2]``) tensor per gated layer;
    ``p_good = softmax(logits)[..., 0]``. Padding (mask 0) is left out of the mean.
    ``n_tokens`` divides the masked sum instead of this batch's valid-token count (to
    normalise by a whole optimizer step cut into micro-batches).
    """
    return _masked_layer_mean(gate_logits, attention_mask, n_tokens, torch.sigmoid)


def predicting_response(labels: torch.Tensor) -> torch.Tensor:
    """Bool ``[B, T]``: the positions whose next token is a labelled (response) token."""
    return F.pad(labels[:, 1:] != IGNORE_INDEX, (0, 1), value=False)


def prompt_loss_sum(logits: torch.Tensor, batch: dict) -> torch.Tensor:
    """Summed next-token cross-entropy (fp32) at the positions whose next token is a prompt token
    (valid, unlabelled): the part of the sequence the trainer's response loss leaves out."""
    ids, mask, labels = batch["input_ids"], batch["attention_mask"], batch["labels"]
    prompt_next = (mask[:, 1:] > 0) & (labels[:, 1:] == IGNORE_INDEX)
    nll = _token_nll(logits[:, :-1], ids[:, 1:])
    return (nll * prompt_next).sum()


def _token_nll(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), targets.reshape(-1), reduction="none").reshape(
        targets.shape
    )


@torch.no_grad()
def prompt_gain_targets(model: nn.Module, batch: dict) -> torch.Tensor:
    """Float ``[B, T]``: 1 where the prompt lowers the loss of the next (response) token, 0 where
    it does not, 0.5 at every other position.

    Both losses come from ``model`` with every gate forced to good = 1 (the base model): with
    the prompt (the batch as it is) and without it (each row's first token — the tokenizer's
    bos where it adds one — followed by the response tokens alone). ``batch``: the trainer's
    right-padded ``input_ids`` / ``attention_mask`` / ``labels`` (``-100`` outside the response).
    """
    ids, labels = batch["input_ids"], batch["labels"]
    pred = predicting_response(labels)
    rows = [ids[b, 1:][labels[b, 1:] != IGNORE_INDEX] for b in range(ids.shape[0])]  # the predicted ones
    width = 1 + max((len(r) for r in rows), default=0)
    alone = torch.zeros(len(rows), width, dtype=ids.dtype, device=ids.device)
    alone_mask = torch.zeros_like(alone)
    for b, r in enumerate(rows):
        alone[b, 0], alone[b, 1 : 1 + len(r)] = ids[b, 0], r
        alone_mask[b, : 1 + len(r)] = 1
    with forced_gates(model, 1.0):
        with_prompt = model(input_ids=ids, attention_mask=batch["attention_mask"]).logits
        without = model(input_ids=alone, attention_mask=alone_mask).logits
    nll_with = _token_nll(with_prompt[:, :-1], ids[:, 1:])
    nll_alone = _token_nll(without[:, :-1], alone[:, 1:])
    out = torch.full(ids.shape, 0.5, dtype=torch.float32, device=ids.device)
    for b, r in enumerate(rows):
        pos = pred[b].nonzero().squeeze(1)
        out[b, pos] = (nll_alone[b, : len(r)] > nll_with[b, pos]).float()
    return out


def _gate_bce(
    gate_logits: list[torch.Tensor], attention_mask: torch.Tensor, targets: torch.Tensor, n_tokens
) -> torch.Tensor:
    """Mean over layers of the masked summed BCE of p_good against ``targets``, divided by ``n_tokens``."""
    mask = attention_mask.reshape(-1).to(torch.float32)
    y = targets.reshape(-1)
    terms = []
    for logits in gate_logits:
        x = logits.float().reshape(-1, 2)
        bce = F.binary_cross_entropy_with_logits(x[:, 0] - x[:, 1], y.to(x.device), reduction="none")
        terms.append((bce * mask.to(x.device)).sum() / max(1.0, float(n_tokens)))
    return torch.stack(terms).mean()


class GateObjective:
    """Stage 1 (warm-up): train only the quality gates and the routers; add the gate loss.

    Used by :func:`selectflow.train.trainer.fit`: :meth:`select_trainable` after loading,
    :meth:`targets` before and :meth:`recording` around each micro-batch's forward pass,
    :meth:`loss` after it. ``objective``: one of :data:`OBJECTIVES` (module docstring; None: the
    schema's default of ``warmup.gate_objective``).
    """

    def __init__(self, quality_loss_weight: float, router_pattern: str | None = None, objective: str | None = None):
        objective = objective or schema_default("warmup", "gate_objective")
        if objective not in OBJECTIVES:
            raise SelectFlowError(
                f"unknown gate objective {objective!r} (warmup.gate_objective); use one of {', '.join(OBJECTIVES)}"
            )
        self.weight = float(quality_loss_weight)
        self.router_pattern = router_pattern or DEFAULT_ROUTER_PATTERN
        self.objective = objective

    def fingerprint(self) -> dict:
        return {
            "quality_loss_weight": self.weight,
            "router_pattern": self.router_pattern,
            "gate_objective": self.objective,
        }

    def select_trainable(self, model: nn.Module) -> list[str]:
        """Freeze everything but the gates and the router weights; return the trainable names."""
        gates = quality_gates(model)
        if not gates:
            raise SelectFlowError(
                f"{type(model).__name__} has no quality gates: the gate warm-up needs a converted "
                "model (rule convert writes one)"
            )
        routers = [router for _, _, router in find_moe_blocks(model, self.router_pattern)]
        keep = {id(p) for m in [g for _, g in gates] + routers for p in m.parameters()}
        for p in model.parameters():
            p.requires_grad_(id(p) in keep)
        names = [n for n, p in model.named_parameters() if p.requires_grad]
        log.info(
            "gate warm-up: training %d tensors (%d quality gates, %d routers), %d parameters; the rest frozen",
            len(names),
            len(gates),
            len(routers),
            sum(p.numel() for p in model.parameters() if p.requires_grad),
        )
        return names

    def targets(self, model: nn.Module, batch: dict) -> torch.Tensor | None:
        """The gate targets of ``batch`` (``prompt_gain``; run outside :meth:`recording`), else None."""
        return prompt_gain_targets(model, batch) if self.objective == "prompt_gain" else None

    @contextmanager
    def recording(self, model: nn.Module) -> Iterator[list[torch.Tensor]]:
        with record_gate_logits(model) as sink:
            yield sink

    def loss(
        self,
        gate_logits: list[torch.Tensor],
        batch: dict,
        n_valid,
        n_response,
        targets: torch.Tensor | None = None,
        logits: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``quality_loss_weight`` × the objective's gate term for one micro-batch.

        ``n_valid`` / ``n_response``: the whole optimizer step's valid (attention-mask) tokens and
        response tokens, the normalisers (a step cut into micro-batches gets the same gradient).
        ``logits``: the model's output ``[B, T, V]`` (``all_tokens`` adds its prompt-token loss).
        """
        if self.objective == "select_moe":
            return self.weight * masked_gate_loss(gate_logits, batch["attention_mask"], n_valid)
        if self.objective == "all_tokens":
            if logits is None:
                raise SelectFlowError("gate objective 'all_tokens' needs the model's logits")
            penalty = self.weight * masked_gate_loss(gate_logits, batch["attention_mask"], n_valid)
            return penalty + prompt_loss_sum(logits, batch) / max(1, int(n_response))
        if self.objective == "response_tokens":
            return self.weight * masked_gate_loss(gate_logits, predicting_response(batch["labels"]), n_response)
        if targets is None:
            raise SelectFlowError("gate objective 'prompt_gain' needs the batch's targets (GateObjective.targets)")
        return self.weight * _gate_bce(gate_logits, batch["attention_mask"], targets, n_valid)

    @torch.no_grad()
    def p_good_sum(self, gate_logits: list[torch.Tensor], attention_mask: torch.Tensor) -> torch.Tensor:
        """Layer mean of the summed good-probability over valid tokens (for the metrics)."""
        return _masked_layer_mean(gate_logits, attention_mask, 1, lambda p: p)
