"""Per-sample quality scores from router data; higher is better for every method.

``quality_scores(shard, method, field)`` takes a :class:`~selectflow.routerfile.RouterShard`
of ``n`` samples and returns ``(score, keep)``: ``score`` float64 [n], ``keep`` bool [n]
(samples with ``keep=False`` never become candidates).

=============  =====================================================================
method         score
=============  =====================================================================
``gate``       Select-MoE quality gate: per layer ``softmax(quality_logits)[0]``
               (index 0 = "good"), averaged over layers
``ifd``        IFD = ``nll_response / nll_response_alone`` (Cherry, Superfiltering);
               IFD >= 1 means the prompt does not help: dropped, as are samples with
               no response tokens or a non-finite ratio
``perplexity`` ``-nll_response`` (lower loss ranks higher); no response tokens: dropped
``field``      numeric field ``field`` of the original input record
``auto``       ``gate`` when the shard has ``quality_logits``, else ``ifd``
=============  =====================================================================
"""

from __future__ import annotations

import json
import math

import numpy as np

from .errors import SelectFlowError
from .routerfile import RouterShard

METHODS = ("auto", "gate", "ifd", "perplexity", "field")


def resolve_method(shard: RouterShard, method: str) -> str:
    """The method ``method`` stands for on ``shard`` (``auto`` resolved)."""
    if method not in METHODS:
        raise SelectFlowError(f"unknown quality method {method!r}; use one of {', '.join(METHODS)}")
    if method == "auto":
        return "gate" if shard.quality_logits is not None else "ifd"
    return method


def quality_scores(shard: RouterShard, method: str = "auto", field: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Return ``(score float64 [n], keep bool [n])`` for ``shard`` under ``method``."""
    method = resolve_method(shard, method)
    if method == "gate":
        return _gate(shard)
    if method == "ifd":
        return _ifd(shard)
    if method == "perplexity":
        nll = np.asarray(shard.nll_response, dtype=np.float64)
        score = -nll
        return score, np.isfinite(score) & (np.asarray(shard.n_response_tokens) > 0)
    return _field(shard, field)


def _gate(shard: RouterShard) -> tuple[np.ndarray, np.ndarray]:
    if shard.quality_logits is None:
        raise SelectFlowError(
            "quality method 'gate' needs quality_logits, but the router data has none (the model has no "
            "quality gates); use quality method 'ifd', 'perplexity' or 'field'"
        )
    logits = np.asarray(shard.quality_logits, dtype=np.float64)
    # softmax over the two gate outputs, written as a logistic of the difference (stable for large logits)
    p_good = 1.0 / (1.0 + np.exp(logits[..., 1] - logits[..., 0]))
    score = p_good.mean(axis=1)
    return score, np.isfinite(score)


def _ifd(shard: RouterShard) -> tuple[np.ndarray, np.ndarray]:
    if shard.nll_response_alone is None:
        raise SelectFlowError(
            "quality method 'ifd' needs nll_response_alone, which the router data lacks; enable "
            "router_dump.ifd in the config and rerun router_dump (or use quality method 'perplexity' or 'field')"
        )
    with np.errstate(divide="ignore", invalid="ignore"):
        score = np.asarray(shard.nll_response, dtype=np.float64) / np.asarray(shard.nll_response_alone, dtype=np.float64)
    keep = np.isfinite(score) & (score < 1.0) & (np.asarray(shard.n_response_tokens) > 0)
    return score, keep


def _field(shard: RouterShard, field: str | None) -> tuple[np.ndarray, np.ndarray]:
    if not field:
        raise SelectFlowError("quality method 'field' needs the name of a numeric record field (quality.field)")
    if shard.record is None:
        raise SelectFlowError("quality method 'field' needs the records, but the router data has no 'record' dataset")
    score = np.empty(len(shard), dtype=np.float64)
    for i, (sid, text) in enumerate(zip(shard.sample_id, shard.record)):
        value = json.loads(text).get("record", {}).get(field)
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        if not ok:
            what = "has no field" if value is None else f"has a non-numeric value {value!r} in field"
            raise SelectFlowError(
                f"sample {sid!r}: the input record {what} {field!r}; quality method 'field' needs a finite "
                "number there in every record"
            )
        score[i] = value
    return score, np.ones(len(shard), dtype=bool)
