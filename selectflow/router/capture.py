"""Router capture: what to take from a model (its row of :data:`~selectflow.router.families.FAMILIES`,
else the generic path), and a check of what was captured.

Families not in the table use the generic path: ``output_router_logits`` when the config
has it, else hooks on ``router_pattern``; softmax. Every captured tensor is checked:
floating point, [tokens, E] with E from the config, one per MoE layer; its values (finite,
not probabilities, not mostly exact zeros) on the valid tokens only: many models zero the
hidden states at padded positions, so padding rows hold exact zeros whatever the router is.
A failed check raises :class:`CaptureError` naming the module and what it returned; the
dumper adds a remedy it has tested (:func:`candidate_settings`); nothing is written from
values that failed it.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field, replace

import torch

from selectflow.router.families import (
    EXPERT_KEYS,
    Family,
    config_count,
    expected_moe_layers,
    family_of,
    n_routed_experts,
    scoring,
    suggest_pattern,
)
from selectflow.router.gate import QualityGate
from selectflow.router.modules import (
    DEFAULT_ROUTER_PATTERN,
    named_modules_matching,
    supports_router_output,
    text_config,
)
from selectflow.runtime.errors import SelectFlowError
from selectflow.schema import schema_enum

log = logging.getLogger(__name__)


class CaptureError(SelectFlowError):
    """A capture that is not router logits; ``seqs``: the token ids of the forward that showed it (if known)."""

    def __init__(self, message: str, seqs: list[list[int]] | None = None):
        super().__init__(message)
        self.seqs = seqs
        self.call: int | None = None  # index of the failing forward since the last verify


def _n_hidden_layers(config) -> int:
    cfg = text_config(config)
    for key in ("num_hidden_layers", "n_layers", "num_layers"):
        value = getattr(cfg, key, None)
        if isinstance(value, int) and value > 0:
            return value
    return 10**6


def describe(value) -> str:
    """Short type/shape description of a module output, for messages."""
    if torch.is_tensor(value):
        return f"{str(value.dtype).replace('torch.', '')}{list(value.shape)}"
    if isinstance(value, (tuple, list)):
        return "(" + ", ".join(describe(v) for v in value[:6]) + (", …" if len(value) > 6 else "") + ")"
    return type(value).__name__


@dataclass
class Capture:
    """What to capture from one model and how to check and score it."""

    model_type: str
    family: Family
    use_output: bool
    modules: list[tuple[str, torch.nn.Module]]
    n_experts: int | None
    n_extra: int
    score: str
    n_layers: int | None
    batch_dependent: bool
    from_table: bool
    n_hidden_layers: int = 0
    _pending: list[tuple[torch.Tensor, list[str], list[str]]] = field(default_factory=list)

    @property
    def n_columns(self) -> int | None:
        return None if self.n_experts is None else self.n_experts + self.n_extra

    def summary(self) -> str:
        where = "output_router_logits" if self.use_output else f"hooks on {len(self.modules)} modules"
        origin = (
            f"family table entry {self.model_type!r}"
            if self.from_table
            else f"generic path ({self.model_type or 'unknown'})"
        )
        return (
            f"routers via {where} ({origin}); {self.n_columns} experts"
            f"{f' incl. {self.n_extra} zero/skip' if self.n_extra else ''}, score {self.score}"
            f"{', batch-dependent: batch 1' if self.batch_dependent else ''}"
        )

    def _fail(self, what: str, name: str, value) -> CaptureError:
        return CaptureError(
            f"router capture of {self.model_type or 'this model'}: {name} gave "
            f"{value if isinstance(value, str) else describe(value)}, {what}; "
            f"it is not router logits over the {self.n_columns} experts the config declares"
        )

    def pick(self, name: str, out, n_tokens: int):
        """The logits tensor inside one module output (hooks path), or raise."""
        if torch.is_tensor(out) or self.score == "product_keys":
            candidates = [out] if torch.is_tensor(out) else list(out)
        else:
            candidates = list(out) if isinstance(out, (tuple, list)) else [out]
        if self.family.output_index is not None and not torch.is_tensor(out):
            if self.family.output_index >= len(candidates):
                raise self._fail(f"which has no element {self.family.output_index}", name, out)
            return candidates[self.family.output_index]
        for value in candidates:
            if (
                torch.is_tensor(value)
                and value.is_floating_point()
                and value.shape[-1:] == (self.n_columns,)
                and value.numel() == n_tokens * self.n_columns
            ):
                return value
        return candidates[0]

    def check(
        self, per_layer: list, names: list[str], n_tokens: int, valid: torch.Tensor | None = None
    ) -> list[torch.Tensor]:
        """Validate the captured outputs of one forward; return [n_tokens, E] logits per MoE layer.

        ``valid``: [n_tokens] bool, the non-padding tokens (the attention mask, flattened); the
        value checks look at those rows only (default: every row).
        """
        if self.n_layers is not None and len(per_layer) != self.n_layers:
            raise CaptureError(
                f"router capture of {self.model_type or 'this model'}: got {len(per_layer)} router outputs "
                f"({', '.join(names[:4])}{', …' if len(names) > 4 else ''}) for {self.n_layers} MoE layers"
            )
        if self.n_layers is None and not self.family.loops and len(per_layer) > self.n_hidden_layers:
            raise CaptureError(
                f"router capture of {self.model_type or 'this model'}: {len(per_layer)} router outputs for "
                f"{self.n_hidden_layers} layers; the model returns more than one router per layer (attention "
                "experts?)"
            )
        out = []
        for name, value in zip(names, per_layer):
            if self.score == "product_keys":
                out.append(self._check_product_keys(name, value, n_tokens))
                continue
            if not torch.is_tensor(value) or not value.is_floating_point():
                raise self._fail("not a floating-point tensor", name, value)
            if self.n_columns is not None and (
                value.shape[-1] != self.n_columns or value.numel() != n_tokens * self.n_columns
            ):
                raise self._fail(f"expected [{n_tokens} tokens, {self.n_columns}]", name, value)
            out.append(value.reshape(n_tokens, -1))
        self._check_values(out, names, valid)
        return out

    def _check_values(self, per_layer: list[torch.Tensor], names: list[str], valid: torch.Tensor | None) -> None:
        """Logits, not scores, on the valid rows: finite, not rows of probabilities, not mostly exact zeros.

        Padding rows are left out: models that zero the hidden states at padded positions
        (Qwen3-Next, Jamba, …) give exact-zero logits there, and a batch can be mostly padding.
        The flags stay on the device, one [L, 3] tensor per forward; :meth:`verify` reads them
        (one sync per dump).
        """
        if not per_layer or self.score in ("probs", "product_keys"):
            return
        n = per_layer[0].shape[0]
        rows = (
            torch.ones(n, dtype=torch.bool, device=per_layer[0].device)
            if valid is None
            else valid.reshape(n).to(per_layer[0].device, torch.bool)
        )
        cells = rows.sum() * per_layer[0].shape[-1]
        flags = []
        for x in per_layer:
            x = x.float()
            kept = rows.unsqueeze(-1)
            row_sum_error = torch.where(rows, (x.sum(-1) - 1).abs(), torch.zeros((), device=x.device))
            flags.append(
                torch.stack(
                    [
                        (~torch.isfinite(x) & kept).any(),
                        (cells > 0)
                        & (torch.where(kept, x, torch.full((), float("inf"), device=x.device)).min() >= 0)
                        & (row_sum_error.max() < 1e-3),
                        ((x == 0) & kept).sum() * 2 > cells,
                    ]
                )
            )
        self._pending.append((torch.stack(flags), list(names), [describe(x) for x in per_layer]))

    def verify(self) -> None:
        """Raise :class:`CaptureError` if any router output checked since the last call was not logits.

        The error's ``call`` is the index of the first failing forward since the last call.
        """
        if not self._pending:
            return
        pending, self._pending = self._pending, []
        flags = torch.cat([f.flatten() for f, _, _ in pending]).tolist()
        at = 0
        for call, (_, names, shapes) in enumerate(pending):
            for name, shape in zip(names, shapes):
                nonfinite, probs, sparse = flags[at : at + 3]
                at += 3
                err = None
                if nonfinite:
                    err = self._fail(
                        "non-finite values at valid tokens (overflow, or masked top-k scores)", name, shape
                    )
                elif probs:
                    err = self._fail(
                        "rows that already sum to 1 (probabilities, which a softmax would flatten)", name, shape
                    )
                elif sparse:
                    err = self._fail(
                        "mostly exact zeros at valid tokens (top-k scores rather than logits)", name, shape
                    )
                if err is not None:
                    err.call = call
                    raise err

    def _check_product_keys(self, name, value, n_tokens):
        keys = int(round((self.n_experts or 0) ** 0.5))
        if not torch.is_tensor(value) or value.shape != (2, n_tokens, keys):
            raise self._fail(f"expected [2, {n_tokens} tokens, {keys} keys]", name, value)
        return value

    def distribution(self, logits: torch.Tensor, softmax_logits: bool) -> torch.Tensor:
        """[tokens, E] logits → the per-token routing distribution (rows sum to 1), float32."""
        return routing_distribution(
            logits, "softmax" if softmax_logits and self.score != "product_keys" else self.score
        )


def routing_distribution(logits: torch.Tensor, score: str) -> torch.Tensor:
    """Per-token routing distribution from router outputs (see the module doc for ``score``)."""
    x = logits.float()
    if score == "softmax":
        return torch.softmax(x, dim=-1)
    if score == "probs":
        return x / x.sum(-1, keepdim=True).clamp_min(1e-30)
    if score == "product_keys":  # [2, N, K] → [N, K*K]: p(i, j) = softmax(x)_i · softmax(y)_j
        a, b = torch.softmax(x[0], -1), torch.softmax(x[1], -1)
        return (a.unsqueeze(-1) * b.unsqueeze(-2)).reshape(a.shape[0], -1)
    s = torch.sigmoid(x) if score == "sigmoid" else torch.sqrt(torch.nn.functional.softplus(x))
    return s / s.sum(-1, keepdim=True).clamp_min(1e-30)


def resolve_capture(model, settings) -> Capture:
    """Choose the capture for ``model`` from ``settings.router_source`` and the family table."""
    source = settings.router_source
    sources = schema_enum("router_dump", "router_source")
    if source not in sources:
        raise SelectFlowError(f"router_dump.router_source must be one of {', '.join(sources)}, not {source!r}")
    model_type, entry = family_of(model)
    family = entry or Family()
    from_table = entry is not None and source == "auto"
    if source == "output" and not supports_router_output(model):
        raise CaptureError(f"{type(model).__name__} has no output_router_logits (router_dump.router_source: output)")
    if source == "auto":
        use_output = family.source == "output" and supports_router_output(model)
        pattern = family.pattern if from_table and family.pattern else settings.router_pattern
    else:
        use_output = source == "output"
        pattern = settings.router_pattern
        # the model's properties (score, extra experts, batch dependence) stay; the capture is the user's
        family = replace(
            family, source=source, pattern=None, output_index=family.output_index if family.pattern == pattern else None
        )
    # a broad pattern can match a converted model's quality gates: they are not routers
    modules = (
        []
        if use_output
        else [(n, m) for n, m in named_modules_matching(model, pattern) if not isinstance(m, QualityGate)]
    )
    if not use_output and not modules:
        raise CaptureError(
            f"no MoE routers found in {type(model).__name__}: the model returns no router logits and no module "
            f"name matches router_pattern {pattern!r}"
        )
    n_experts = n_routed_experts(model.config)
    n_extra, n_sinks = (config_count(model.config, v) for v in (family.extra_experts, family.sink_rows))
    structural = expected_moe_layers(model)
    n_layers = None if family.loops else len(modules) if not use_output else (len(structural) or None)
    if not use_output and structural and len(modules) != len(structural) and family.score != "product_keys":
        raise CaptureError(
            f"router_pattern {pattern!r} matches {len(modules)} modules ({', '.join(n for n, _ in modules[:4])}"
            f"{', …' if len(modules) > 4 else ''}) but {type(model).__name__} has {len(structural)} MoE layers"
        )
    batch_dependent = family.batch_dependent or any(re.search(r"(^|\.)indexer$", n) for n, _ in model.named_modules())
    capture = Capture(
        model_type=model_type,
        family=family,
        use_output=use_output,
        modules=modules,
        n_experts=n_experts,
        n_extra=n_extra,
        score=scoring(model.config, family),
        n_layers=n_layers,
        batch_dependent=batch_dependent,
        from_table=from_table,
        n_hidden_layers=_n_hidden_layers(model.config),
    )
    if n_experts is None:
        log.warning(
            "%s: the config declares no expert count (%s); router outputs are checked for shape only",
            model_type,
            "/".join(EXPERT_KEYS),
        )
    return capture


def candidate_settings(model, settings) -> list[tuple[object, str]]:
    """Other captures to try when ``settings`` failed, each with the config change that selects it.

    In order: the family table (``auto``), hooks on the modules that own a router-shaped
    weight (:func:`suggest_pattern`), hooks on the default ``router_pattern``, and
    ``output_router_logits``. The dumper keeps the first that passes the checks on the
    batch that failed; none is suggested untested.
    """
    _, entry = family_of(model)
    family = entry or Family()
    n_experts = n_routed_experts(model.config)
    n_rows = (
        (n_experts or 0)
        + config_count(model.config, family.extra_experts)
        + config_count(model.config, family.sink_rows)
    )
    out = []
    if settings.router_source != "auto":
        out.append((replace(settings, router_source="auto"), "set router_dump.router_source: auto"))
    suggested = suggest_pattern(model, n_rows) if n_experts else None
    for pattern in dict.fromkeys(p for p in (suggested, DEFAULT_ROUTER_PATTERN) if p):
        if (settings.router_source, settings.router_pattern) != ("hooks", pattern):
            out.append(
                (
                    replace(settings, router_source="hooks", router_pattern=pattern),
                    f"set router_dump.router_source: hooks and router_dump.router_pattern: '{pattern}'",
                )
            )
    if settings.router_source != "output" and supports_router_output(model):
        out.append((replace(settings, router_source="output"), "set router_dump.router_source: output"))
    return out
