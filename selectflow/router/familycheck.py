"""Check the router dump on a tiny seeded model of every MoE family the installed transformers has.

* :func:`moe_families` enumerates, at run time, the causal-LM model types whose config
  declares an expert count (no fixed list);
* :func:`tiny_config` shrinks a family's default config (≤ 4 layers, 8 experts, top-2,
  hidden 64, the demo vocabulary) with a few per-family settings in :data:`TINY`;
* :func:`reference` forwards each sample alone and reads the router logits independently
  of :mod:`selectflow.router.capture`: from the input of the module that owns the router weight
  (a [E, ·] matrix), in float64; it also checks the routing score against the router's own
  top-k weights where the router returns them;
* :func:`check_family` compares a batched, padded dump with that reference;
* :func:`render_table` writes the supported-families table (``selectflow families-doc``).

Used by ``tests/test_families.py`` and ``python -m selectflow families-doc``. Builds run
offline from configs; nothing is downloaded.
"""

from __future__ import annotations

import logging
import re
import time
import warnings
from dataclasses import dataclass

import numpy as np
import torch

from selectflow.router.capture import (
    EXPERT_KEYS,
    FAMILIES,
    config_count,
    family_of,
    n_routed_experts,
)

log = logging.getLogger(__name__)

N_EXPERTS = 8
TOP_K = 2
TOLERANCE = 1e-5
_TOPK_KEYS = ("num_experts_per_tok", "num_experts_per_token", "top_k_experts", "moe_k", "moe_topk")
_SIZE = re.compile(r"(size|_dim|rank|hidden)$")
_WRAPPED = re.compile(r"(text|vision|audio|thinker|talker)_config$")

#: per-family settings the generic shrinking cannot guess (layer-type lists, mamba and indexer sizes)
TINY: dict[str, dict] = {
    "lfm2_moe": dict(layer_types=["conv", "full_attention", "conv", "full_attention"], num_dense_layers=1),
    "nemotron_h": dict(layers_block_type=["linear_attention", "moe", "full_attention", "moe"], mamba_num_heads=8,
                       mamba_head_dim=16, n_groups=1, ssm_state_size=16, use_mamba_kernels=False),
    "qwen4_exp_text": dict(layer_types=["linear_attention"] * 3 + ["indexed_attention"], indexer_n_heads=2,
                           indexer_kv_heads=1, indexer_head_dim=16, indexer_budget=8, indexer_compress_ratio=2,
                           ngram_vocab_size_base=1000, hc_lowrank=16, ple_embed_dim=32, split_ngram_parts=4,
                           heads_per_ngram=2),
    "gemma4_text": dict(enable_moe_block=True, moe_intermediate_size=32, vocab_size_per_layer_input=512,
                        hidden_size_per_layer_input=16, layer_types=["sliding_attention", "full_attention"] * 2,
                        sliding_window=16),
    "zaya": dict(num_experts_per_tok=1),
    "mimo_v2_flash": dict(layer_types=["full_attention"] * 4, mlp_layer_types=["dense"] + ["sparse"] * 3),
    "longcat_flash": dict(num_layers=2, qk_head_dim=32, zero_expert_num=2),
    "dbrx": dict(d_model=64, n_heads=4, n_layers=4, max_seq_len=256,
                 attn_config=dict(kv_n_heads=4, rope_theta=10000.0, clip_qkv=8.0),
                 ffn_config=dict(hidden_size=64, moe_num_experts=8, moe_top_k=2, ffn_hidden_size=32)),
    "dots3_note_text": dict(layer_types=["indexed_attention"] * 4, index_topk=8, index_n_heads=2),
    "doge": dict(is_moe=True, num_experts=16, num_experts_per_tok=2),
    "inkling2_loop_text": dict(loop_layer_index_start=1, loop_layer_index_end=3, loop_num_passes=2,
                               n_layers_per_attn_res_block=1),
}


def moe_families() -> list[str]:
    """Causal-LM model types of the installed transformers whose config declares experts."""
    from transformers import CONFIG_MAPPING
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    out = []
    with _quiet():
        for model_type in sorted(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES):
            if model_type not in CONFIG_MAPPING:
                continue
            try:
                d = CONFIG_MAPPING[model_type]().to_dict()
            except Exception:  # noqa: BLE001 - a config that cannot be built with defaults is not enumerable
                continue
            keys = [str(k) for k in d] + [f"{k}.{kk}" for k, v in d.items() if isinstance(v, dict)
                                           and not _WRAPPED.search(str(k)) for kk in v]
            if any("expert" in k for k in keys):
                out.append(model_type)
    return out


class _quiet:
    """Silence transformers' config warnings while building many tiny models."""

    def __enter__(self):
        import transformers

        self._level = transformers.logging.get_verbosity()
        transformers.logging.set_verbosity_error()
        self._warn = warnings.catch_warnings()
        self._warn.__enter__()
        warnings.simplefilter("ignore")

    def __exit__(self, *exc):
        import transformers

        self._warn.__exit__(*exc)
        transformers.logging.set_verbosity(self._level)


def tiny_config(model_type: str, vocab_size: int, *, pad_token_id: int = 0, eos_token_id: int = 1, layers: int = 4):
    """The family's default config shrunk to a tiny model (see the module doc)."""
    from transformers import CONFIG_MAPPING

    d = CONFIG_MAPPING[model_type]().to_dict()
    n_default = d.get("num_hidden_layers")
    over: dict = {}
    for key, value in d.items():
        if key in EXPERT_KEYS:
            over[key] = N_EXPERTS
        elif key in _TOPK_KEYS:
            over[key] = TOP_K
        elif key in ("n_group", "num_expert_group", "topk_group"):
            over[key] = 1
        elif key == "first_k_dense_replace":
            over[key] = min(value or 0, 1)
        elif key == "head_dim" or key.endswith("head_dim"):
            over[key] = 16
        elif key in ("n_shared_experts", "num_shared_experts") and value is None:
            over[key] = 1
        elif isinstance(value, bool) or not isinstance(value, int):
            continue
        elif "vocab" in key:
            over[key] = vocab_size
        elif key == "hidden_size":
            over[key] = 64
        elif key in ("num_attention_heads", "num_key_value_heads"):
            over[key] = 4
        elif _SIZE.search(key) and value > 64:
            over[key] = 32
        elif key.endswith("heads") and value > 4:
            over[key] = 4
    for key, value in d.items():  # per-layer lists follow the layer count
        if isinstance(value, list) and n_default and len(value) == n_default:
            over[key] = value[:layers]
    over.update(vocab_size=vocab_size, num_hidden_layers=layers, pad_token_id=pad_token_id,
                eos_token_id=eos_token_id, bos_token_id=None, max_position_embeddings=256)
    over.update(TINY.get(model_type, {}))
    with _quiet():
        return CONFIG_MAPPING[model_type](**over)


def router_weights(model, n_columns: int) -> list[tuple[str, torch.nn.Module]]:
    """Modules that own a router weight: a 2-D ``weight`` with ``n_columns`` rows, outside experts/attention."""
    out = []
    for name, module in model.named_modules():
        w = getattr(module, "weight", None)
        if isinstance(w, torch.nn.Parameter) and w.ndim == 2 and w.shape[0] == n_columns \
                and not re.search(r"(expert|attn|attention|embed|lm_head|shared)", name):
            out.append((name, module))
    return out


def build_tiny(model_type: str, tokenizer, seed: int = 0, router_scale: float = 2.0):
    """A seeded tiny model of ``model_type``; router weights scaled up so routing is peaked."""
    from transformers import AutoModelForCausalLM

    cfg = tiny_config(model_type, len(tokenizer), pad_token_id=tokenizer.pad_token_id,
                      eos_token_id=tokenizer.eos_token_id)
    torch.manual_seed(seed)
    with _quiet():
        model = AutoModelForCausalLM.from_config(cfg).eval()
    modules = dict(model.named_modules())
    with torch.no_grad():  # redrawn: some families initialise routers to zero (uniform routing tells nothing)
        for name, module in router_weights(model, _columns(model) + _sink_rows(model)):
            # the whole router when the weight sits in a small router network (Zaya's router MLP)
            parts = name.split(".")
            top = next((".".join(parts[:i + 1]) for i, p in enumerate(parts) if p in ("gate", "router")), name)
            for sub in modules[top].modules():
                w = getattr(sub, "weight", None)
                if isinstance(w, torch.nn.Parameter) and w.ndim == 2:
                    w.normal_(0.0, router_scale / w.shape[1] ** 0.5)
    return model


def _columns(model) -> int:
    _, family = family_of(model)
    n = n_routed_experts(model.config) or 0
    if family is not None and family.score == "product_keys":
        return 2 * int(round(n ** 0.5))
    return n + (config_count(model.config, family.extra_experts) if family else 0)


def _sink_rows(model) -> int:
    _, family = family_of(model)
    return config_count(model.config, family.sink_rows) if family else 0


def _dist64(logits: torch.Tensor, score: str) -> torch.Tensor:
    """Routing distribution in float64, written out per score (independent of capture.routing_distribution)."""
    x = logits.double()
    if score == "product_keys":
        k = x.shape[-1] // 2
        halves = x.reshape(2, -1, k)  # the model's own view of the [T, 2K] logits
        a, b = halves[0].exp() / halves[0].exp().sum(-1, keepdim=True), halves[1].exp() / halves[1].exp().sum(-1, keepdim=True)
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


def reference(model, ids: list[int], score: str) -> Reference:
    """One sample alone: router logits from the router weight's input, float64, mean over tokens."""
    n_cols = _columns(model)
    owners = router_weights(model, n_cols + _sink_rows(model))
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
        handles += [module.register_forward_pre_hook(grab(name), with_kwargs=True),
                    parent.register_forward_pre_hook(grab(name + "<parent>"), with_kwargs=True),
                    module.register_forward_hook(post(name)), parent.register_forward_hook(post(name + "<parent>"))]
    try:
        with torch.no_grad():
            model(input_ids=torch.tensor([ids]), use_cache=False)
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
            logits = x.double().reshape(-1, w.shape[1]) @ w.T + (b.detach().double() if isinstance(b, torch.Tensor) else 0)
            dist = _dist64(logits, score)
            layers.append(dist.mean(0))
            for out in (outputs.get(name, []), outputs.get(name + "<parent>", [])):
                err = _score_agreement(dist, out[call]) if call < len(out) else None
                if err is not None:
                    checked += 1
                    worst = max(worst, err)
                    break
    return Reference(torch.stack(layers).numpy() if layers else np.zeros((0, 0)), checked, worst)


def _score_agreement(dist: torch.Tensor, out) -> float | None:
    """|renormalised top-k weights − our distribution at the chosen experts, renormalised|, if the router gives them."""
    if not isinstance(out, (tuple, list)):
        return None
    weights = next((o for o in out if torch.is_tensor(o) and o.is_floating_point() and o.ndim == 2
                    and o.shape[0] == dist.shape[0] and o.shape[1] < dist.shape[1]), None)
    index = next((o for o in out if torch.is_tensor(o) and not o.is_floating_point() and o.ndim == 2
                  and weights is not None and o.shape == weights.shape), None)
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


def check_family(model_type: str, tokenizer, records: list[dict], *, batch_size: int = 4,
                 max_length: int = 48) -> FamilyResult:
    """Build the tiny model, dump ``records`` batched and padded, compare with :func:`reference`.

    Runs on one CPU thread: on models this small, intra-op threads only spin (about 10x the
    CPU time on a 2-core machine).
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _check_family(model_type, tokenizer, records, batch_size, max_length)
    finally:
        torch.set_num_threads(threads)


def _check_family(model_type: str, tokenizer, records: list[dict], batch_size: int, max_length: int) -> FamilyResult:
    from selectflow.router.dump import DumpSettings, RouterDumper, encode_pair
    from selectflow.runtime.errors import SelectFlowError

    start = time.perf_counter()
    try:
        model = build_tiny(model_type, tokenizer)
    except Exception as exc:  # noqa: BLE001 - reported as the skip reason
        return FamilyResult(model_type, "skipped", f"cannot build offline: {type(exc).__name__}: {str(exc)[:160]}")
    try:
        with torch.no_grad(), _quiet():
            model(input_ids=torch.tensor([[tokenizer.eos_token_id] * 3]), use_cache=False)
    except Exception as exc:  # noqa: BLE001 - the model itself fails before any selectflow code runs
        return FamilyResult(model_type, "skipped", f"the tiny model's own forward fails: {type(exc).__name__}: "
                            f"{str(exc)[:160]}")
    settings = DumpSettings(batch_size=batch_size, max_length=max_length, ifd=False, device="cpu")
    try:
        with _quiet():
            dumper = RouterDumper(model, tokenizer, settings, torch.device("cpu"))
            shard = dumper.dump(records, progress=False)
    except SelectFlowError as exc:
        return FamilyResult(model_type, "failed", f"dump refused: {exc}", seconds=time.perf_counter() - start)
    capture = dumper.capture
    worst, checked, score_err = 0.0, 0, 0.0
    for row, rec in enumerate(records):
        ids, _ = encode_pair(tokenizer, rec["prompt"], rec["response"], max_length)
        with _quiet():
            ref = reference(model, ids, capture.score)
        if ref.probs.shape != shard.moe_probs[row].shape:
            return FamilyResult(model_type, "failed", f"reference has [L, E] {list(ref.probs.shape)}, the dump "
                                f"{list(shard.moe_probs[row].shape)}", summary=capture.summary(),
                                seconds=time.perf_counter() - start)
        worst = max(worst, float(np.abs(shard.moe_probs[row] - ref.probs).max()))
        checked += ref.score_checked
        score_err = max(score_err, ref.score_mismatch)
    result = FamilyResult(model_type, "checked", "", worst, shard.moe_probs.shape[1], shard.moe_probs.shape[2],
                          capture.summary(), checked, time.perf_counter() - start, capture)
    if worst > TOLERANCE:
        result.status, result.reason = "failed", f"dump differs from the per-sample reference by {worst:.2e}"
    elif score_err > 1e-4 and not capture.family.sparse_mixer:
        result.status, result.reason = "failed", (f"the router's own top-k weights disagree with score "
                                                  f"{capture.score!r} by {score_err:.2e}")
    elif shard.moe_probs.std(axis=0).max() < 1e-3:
        result.status, result.reason = "failed", "every sample routed alike: the check would not see an error"
    return result


def demo_inputs(n_records: int = 6):
    """The demo tokenizer (trained on the demo pool) and a few records of varied length."""
    from selectflow.data.demo import _train_tokenizer, make_demo_pool
    from selectflow.data.records import prompt_and_response

    records = []
    for raw in make_demo_pool(200, seed=0):
        prompt, response = prompt_and_response(raw, "alpaca")
        records.append({"sample_id": raw["id"], "prompt": prompt, "response": response})
    tokenizer = _train_tokenizer([r["prompt"] + r["response"] for r in records], 512)
    records = sorted(records, key=lambda r: len(r["prompt"] + r["response"]))
    step = max(1, len(records) // n_records)
    return tokenizer, records[::step][:n_records]


def render_table(results: list[FamilyResult]) -> str:
    """Markdown table of the family check (docs/families.md)."""
    import transformers

    checked = sum(r.status == "checked" for r in results)
    lines = [
        "# Supported MoE families",
        "",
        f"Generated by `python -m selectflow families-doc` with transformers {transformers.__version__}: a tiny "
        f"seeded model of each MoE family ({N_EXPERTS} experts, ≤ 4 layers), its batched dump compared with each "
        f"sample forwarded alone (router logits read from the router weight's input, float64). "
        f"{checked} of {len(results)} families checked to ≤ {TOLERANCE:g}.",
        "",
        "Columns: where the router logits come from (`output` = `output_router_logits`, else the hooked "
        "modules' pattern), whether the family table (`selectflow/router/capture.py`) has a row, the routing score "
        "(README, *Routing distribution*), experts per layer (incl. zero/skip experts), MoE layers of the tiny "
        "model, batch (1 = dumped one sample at a time), the largest difference from the reference, and a "
        "score check (router calls whose own top-k weights agreed with the score; – where the router does not "
        "return them).",
        "",
        "| family | status | logits from | table | score | experts | MoE layers | batch | max error | score check | note |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        note = FAMILIES[r.model_type].note if r.model_type in FAMILIES else ""
        c = r.capture
        if r.status == "checked" and c is not None:
            source = "output" if c.use_output else f"`{c.family.pattern}`" if c.family.pattern else "`router_pattern`"
            if c.batch_dependent and not c.family.batch_dependent:
                note = note or "has an `indexer` (sparse attention): dumped at batch 1"
            lines.append(f"| `{r.model_type}` | checked | {source} | {'yes' if c.from_table else 'no'} | {c.score} | "
                         f"{r.experts} | {r.layers} | {1 if c.batch_dependent else 'any'} | {r.max_error:.1e} | "
                         f"{r.score_checked or '–'} | {note} |")
        else:
            lines.append(f"| `{r.model_type}` | {r.status} | {r.reason.replace('|', '/')} |  |  |  |  |  |  |  | {note} |")
    return "\n".join(lines) + "\n"


def families_doc(argv: list[str]) -> int:
    import argparse
    import sys

    ap = argparse.ArgumentParser(prog="selectflow families-doc",
                                 description="check every installed MoE family and print the supported-families table")
    ap.add_argument("families", nargs="*", help="model types to check (default: every MoE family installed)")
    args = ap.parse_args(argv)
    tokenizer, records = demo_inputs()
    results = []
    for model_type in args.families or moe_families():
        result = check_family(model_type, tokenizer, records)
        log.info("%s: %s %s", model_type, result.status, result.reason or f"{result.max_error:.1e}")
        results.append(result)
    sys.stdout.write(render_table(results))
    return 0


__all__ = ["moe_families", "tiny_config", "build_tiny", "reference", "check_family", "render_table",
           "demo_inputs"]
