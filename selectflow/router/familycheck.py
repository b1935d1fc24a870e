"""Check the router dump on a tiny seeded model of every MoE family the installed transformers has.

* the tiny seeded model of each family comes from :mod:`selectflow.router.tinymoe`;
* :func:`reference` forwards each sample alone and reads the router logits independently
  of :mod:`selectflow.router.capture`: from the input of the module that owns the router weight
  (a [E, ·] matrix), in float64; it also checks the routing score against the router's own
  top-k weights where the router returns them, and the last hidden state averaged over the
  tokens (``output_hidden_states``, the dump's ``hidden``);
* :func:`check_family` compares a dump at the workflow's defaults (the schema's ``router_dump``
  section: batch 16, IFD on; ``hidden_states`` on too) of records of uneven length (most of a batch is padding) with
  that reference;
* :func:`render_table` writes the supported-families table (``selectflow families-doc``).

Used by ``tests/router/test_families.py`` and ``python -m selectflow families-doc``. Builds run
offline from configs; nothing is downloaded.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import numpy as np
import torch

from selectflow.data.tokens import encode_pair
from selectflow.router.dump import DumpSettings, RouterDumper
from selectflow.router.families import FAMILIES
from selectflow.router.tinymoe import (
    N_EXPERTS,
    build_tiny,
    columns,
    demo_inputs,
    moe_families,
    not_causal_lm,
    quiet,
    router_weights,
    sink_rows,
)
from selectflow.runtime.errors import SelectFlowError

log = logging.getLogger(__name__)

TOLERANCE = 1e-5
HIDDEN_TOLERANCE = 1e-4  # of the largest |value|: hidden states are not bounded by 1 as probabilities are


def _dist64(logits: torch.Tensor, score: str) -> torch.Tensor:
    """Routing distribution in float64, written out per score (independent of capture.routing_distribution)."""
    x = logits.double()
    if score == "product_keys":
        k = x.shape[-1] // 2
        halves = x.reshape(2, -1, k)  # the model's own view of the [T, 2K] logits
        a, b = (
            halves[0].exp() / halves[0].exp().sum(-1, keepdim=True),
            halves[1].exp() / halves[1].exp().sum(-1, keepdim=True),
        )
        return torch.einsum("ti,tj->tij", a, b).reshape(a.shape[0], -1)
    if score in ("softmax", "probs"):
        e = (x - x.max(-1, keepdim=True).values).exp()
    elif score == "sigmoid":
        e = 1.0 / (1.0 + (-x).exp())
    elif score == "sqrtsoftplus":
        e = torch.log1p(x.exp()).sqrt()
    else:
        raise ValueError(score)
    return e / e.sum(-1, keepdim=True)


@dataclass
class Reference:
    probs: np.ndarray  # [L, E] float64
    score_checked: int  # router calls whose own top-k weights agreed with the score
    score_mismatch: float  # largest disagreement (renormalised top-k weights)
    hidden: np.ndarray | None = None  # [H] float32: output_hidden_states[-1] averaged over the tokens


def reference(model, ids: list[int], score: str) -> Reference:
    """One sample alone: router logits from the router weight's input, float64, mean over tokens; the last hidden
    state's mean."""
    n_cols = columns(model)
    owners = router_weights(model, n_cols + sink_rows(model))
    inputs: dict[str, list[torch.Tensor]] = {}
    outputs: dict[str, list] = {}
    modules = dict(model.named_modules())
    handles = []

    def grab(name):
        def pre(_m, args, kwargs):
            x = args[0] if args else kwargs.get("hidden_states")
            inputs.setdefault(name, []).append(x)

        return pre

    def post(name):
        def hook(_m, _i, out):
            outputs.setdefault(name, []).append(out)

        return hook

    for name, module in owners:
        parent = modules[name.rsplit(".", 1)[0]] if "." in name else model
        handles += [
            module.register_forward_pre_hook(grab(name), with_kwargs=True),
            parent.register_forward_pre_hook(grab(name + "<parent>"), with_kwargs=True),
            module.register_forward_hook(post(name)),
            parent.register_forward_hook(post(name + "<parent>")),
        ]
    try:
        with torch.no_grad():
            states = model(input_ids=torch.tensor([ids]), use_cache=False, output_hidden_states=True).hidden_states
    finally:
        for h in handles:
            h.remove()
    layers, checked, worst = [], 0, 0.0
    for name, module in owners:
        key = name if name in inputs else name + "<parent>"  # a router may use its weight without calling it
        w = module.weight.detach().double()[:n_cols]  # sink rows (shared experts) are not routed choices
        b = getattr(module, "bias", None)
        b = b[:n_cols] if isinstance(b, torch.Tensor) else None
        for call, x in enumerate(inputs.get(key, [])):  # looped layers route once per pass
            logits = x.double().reshape(-1, w.shape[1]) @ w.T + (
                b.detach().double() if isinstance(b, torch.Tensor) else 0
            )
            dist = _dist64(logits, score)
            layers.append(dist.mean(0))
            for out in (outputs.get(name, []), outputs.get(name + "<parent>", [])):
                err = _score_agreement(dist, out[call]) if call < len(out) else None
                if err is not None:
                    checked += 1
                    worst = max(worst, err)
                    break
    hidden = states[-1][0].float().mean(0).numpy() if states else None
    return Reference(torch.stack(layers).numpy() if layers else np.zeros((0, 0)), checked, worst, hidden)


def _score_agreement(dist: torch.Tensor, out) -> float | None:
    """|renormalised top-k weights − our distribution at the chosen experts, renormalised|, if the router gives them."""
    if not isinstance(out, (tuple, list)):
        return None
    weights = next(
        (
            o
            for o in out
            if torch.is_tensor(o)
            and o.is_floating_point()
            and o.ndim == 2
            and o.shape[0] == dist.shape[0]
            and o.shape[1] < dist.shape[1]
        ),
        None,
    )
    index = next(
        (
            o
            for o in out
            if torch.is_tensor(o)
            and not o.is_floating_point()
            and o.ndim == 2
            and weights is not None
            and o.shape == weights.shape
        ),
        None,
    )
    if weights is None or index is None or weights.shape[1] < 2 or index.max() >= dist.shape[1]:
        return None
    w = weights.double()
    total = w.sum(-1, keepdim=True)
    if (total <= 0).any():
        return None
    ours = dist.gather(1, index.long())
    return float(((w / total) - ours / ours.sum(-1, keepdim=True)).abs().max())


@dataclass
class FamilyResult:
    model_type: str
    status: str  # checked | skipped | failed
    reason: str = ""
    max_error: float = float("nan")
    layers: int = 0
    experts: int = 0
    summary: str = ""
    score_checked: int = 0
    seconds: float = 0.0
    capture: object = None  # the selectflow.router.capture.Capture used
    padding: float = 0.0  # the largest share of padding tokens in one forward of the dump (IFD pass included)
    hidden_error: float = float("nan")  # largest |dumped hidden - reference| relative to the largest |reference|


def check_family(model_type: str, tokenizer, records: list[dict], settings=None) -> FamilyResult:
    """Build the tiny model, dump ``records`` with ``settings`` (default: the schema's and the hidden-state
    means, on CPU), compare with :func:`reference`.

    Runs on one CPU thread: on models this small, intra-op threads only spin (about 10x the
    CPU time on a 2-core machine).
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _check_family(model_type, tokenizer, records, settings or DumpSettings(device="cpu", hidden_states=True))
    finally:
        torch.set_num_threads(threads)


def _check_family(model_type: str, tokenizer, records: list[dict], settings) -> FamilyResult:
    start = time.perf_counter()
    try:
        model = build_tiny(model_type, tokenizer)
    except Exception as exc:  # noqa: BLE001 - reported as the skip reason
        return FamilyResult(model_type, "skipped", f"cannot build offline: {type(exc).__name__}: {str(exc)[:160]}")
    try:
        with torch.no_grad(), quiet():
            model(input_ids=torch.tensor([[tokenizer.eos_token_id] * 3]), use_cache=False)
    except Exception as exc:  # noqa: BLE001 - the model itself fails before any selectflow code runs
        return FamilyResult(
            model_type, "skipped", f"the tiny model's own forward fails: {type(exc).__name__}: {str(exc)[:160]}"
        )
    try:
        with quiet():
            dumper = RouterDumper(model, tokenizer, settings, torch.device("cpu"))
            shard = dumper.dump(records, progress=False)
    except SelectFlowError as exc:
        return FamilyResult(model_type, "failed", f"dump refused: {exc}", seconds=time.perf_counter() - start)
    padding = max(1 - sum(map(len, seqs)) / (len(seqs) * max(map(len, seqs))) for seqs in dumper.forwards)
    capture = dumper.capture
    worst, checked, score_err, hidden_err = 0.0, 0, 0.0, 0.0
    for row, rec in enumerate(records):
        ids, _ = encode_pair(tokenizer, rec["prompt"], rec["response"], settings.max_length)
        with quiet():
            ref = reference(model, ids, capture.score)
        if ref.probs.shape != shard.moe_probs[row].shape:
            return FamilyResult(
                model_type,
                "failed",
                f"reference has [L, E] {list(ref.probs.shape)}, the dump {list(shard.moe_probs[row].shape)}",
                summary=capture.summary(),
                seconds=time.perf_counter() - start,
            )
        worst = max(worst, float(np.abs(shard.moe_probs[row] - ref.probs).max()))
        if shard.hidden is not None:
            hidden_err = (
                max(
                    hidden_err,
                    float(np.abs(shard.hidden[row] - ref.hidden).max()) / max(float(np.abs(ref.hidden).max()), 1e-30),
                )
                if ref.hidden is not None
                else np.inf
            )
        checked += ref.score_checked
        score_err = max(score_err, ref.score_mismatch)
    result = FamilyResult(
        model_type,
        "checked",
        "",
        worst,
        shard.moe_probs.shape[1],
        shard.moe_probs.shape[2],
        capture.summary(),
        checked,
        time.perf_counter() - start,
        capture,
        padding,
        hidden_err if shard.hidden is not None else float("nan"),
    )
    if worst > TOLERANCE:
        result.status, result.reason = "failed", f"dump differs from the per-sample reference by {worst:.2e}"
    elif hidden_err > HIDDEN_TOLERANCE:
        result.status, result.reason = (
            "failed",
            (
                f"the dumped hidden-state means differ from the per-sample "
                f"output_hidden_states reference by {hidden_err:.2e} (relative)"
            ),
        )
    elif score_err > 1e-4 and not capture.family.sparse_mixer:
        result.status, result.reason = (
            "failed",
            (f"the router's own top-k weights disagree with score {capture.score!r} by {score_err:.2e}"),
        )
    elif shard.moe_probs.std(axis=0).max() < 1e-3:
        result.status, result.reason = "failed", "every sample routed alike: the check would not see an error"
    return result


def render_table(results: list[FamilyResult], not_causal: dict[str, str]) -> str:
    """Markdown table of the family check, and the expert-declaring types that are not causal LMs (docs/families.md)."""
    import transformers

    d = DumpSettings()
    checked = sum(r.status == "checked" for r in results)
    padding = max((r.padding for r in results), default=0.0)
    lines = [
        "# Supported MoE families",
        "",
        f"Generated by `python -m selectflow families-doc` with transformers {transformers.__version__}. Of the "
        f"{len(results) + len(not_causal)} model types whose config declares experts, {len(results)} load as a "
        f"causal LM (`AutoModelForCausalLM`, composite types such as `llama4` included: their text model); "
        f"**{checked} of those {len(results)} are checked** to ≤ {TOLERANCE:g}. The other {len(not_causal)} are "
        "listed [below](#expert-types-that-are-not-causal-lms): the workflow stops on them before any job.",
        "",
        f"The check: a tiny seeded model of each type ({N_EXPERTS} experts, ≤ 4 layers, the demo tokenizer) dumps "
        f"20 demo-pool records of uneven length at the workflow's defaults (`router_dump`: batch {d.batch_size}, "
        f"max_length {d.max_length}, ifd {str(d.ifd).lower()}, router_source {d.router_source}, float32; up to "
        f"{padding:.0%} of a batch is padding), and the result is compared with each sample forwarded alone "
        "(router logits read from the router weight's input, float64).",
        "",
        "Columns: where the router logits come from (`output` = `output_router_logits`, else the hooked "
        "modules' pattern), whether the family table (`selectflow/router/families.py`) has a row, the routing score "
        "(README, *Routing distribution*), experts per layer (incl. zero/skip experts), MoE layers of the tiny "
        "model, batch (1 = dumped one sample at a time), the largest share of padding in one forward, the largest "
        "difference from the reference, and a score check (router calls whose own top-k weights agreed with the "
        "score; – where the router does not return them).",
        "",
        "| model type | status | logits from | table | score | experts | MoE layers | batch | padding | max error "
        "| score check | note |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        c = r.capture
        family = c.model_type if c is not None else r.model_type
        note = FAMILIES[family].note if family in FAMILIES else ""
        if family != r.model_type:
            note = f"loads as `{family}`" + (f"; {note}" if note else "")
        if r.status == "checked" and c is not None:
            source = "output" if c.use_output else f"`{c.family.pattern}`" if c.family.pattern else "`router_pattern`"
            if c.batch_dependent and not c.family.batch_dependent:
                note = note or "has an `indexer` (sparse attention): dumped at batch 1"
            lines.append(
                f"| `{r.model_type}` | checked | {source} | {'yes' if c.from_table else 'no'} | {c.score} | "
                f"{r.experts} | {r.layers} | {1 if c.batch_dependent else 'any'} | {r.padding:.0%} | "
                f"{r.max_error:.1e} | {r.score_checked or '–'} | {note} |"
            )
        else:
            lines.append(
                f"| `{r.model_type}` | {r.status} | {r.reason.replace('|', '/')} |  |  |  |  |  |  |  |  | {note} |"
            )
    lines += [
        "",
        "## Expert types that are not causal LMs",
        "",
        "SelectFlow loads `model.path` with `AutoModelForCausalLM`; the preflight (and `selectflow check`) stops "
        "on a folder whose `config.json` names one of these types, with the reason below. For a multimodal model, "
        "use its text-only causal-LM checkpoint where one exists.",
        "",
        "| model type | why it does not load as a causal LM |",
        "|---|---|",
        *(f"| `{t}` | {why} |" for t, why in sorted(not_causal.items())),
    ]
    return "\n".join(lines) + "\n"


def families_doc(argv: list[str]) -> int:
    import argparse
    import sys

    ap = argparse.ArgumentParser(
        prog="selectflow families-doc",
        description="check every installed MoE family and print the supported-families table",
    )
    ap.add_argument("families", nargs="*", help="model types to check (default: every MoE causal-LM type installed)")
    args = ap.parse_args(argv)
    tokenizer, records = demo_inputs()
    results = []
    for model_type in args.families or moe_families():
        result = check_family(model_type, tokenizer, records)
        log.info("%s: %s %s", model_type, result.status, result.reason or f"{result.max_error:.1e}")
        results.append(result)
    sys.stdout.write(render_table(results, {} if args.families else not_causal_lm()))
    return 0
