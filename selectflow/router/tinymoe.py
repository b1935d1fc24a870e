"""Tiny seeded models of every MoE family the installed transformers has (no download).

* :func:`moe_families` enumerates, at run time, the causal-LM model types whose config
  declares an expert count (no fixed list);
* :func:`tiny_config` shrinks a family's default config (≤ 4 layers, 8 experts, top-2,
  hidden 64, the demo vocabulary) with a few per-family settings in :data:`TINY`;
* :func:`build_tiny` builds one, seeded, its router weights redrawn so routing is peaked;
* :func:`demo_inputs` the demo tokenizer and a few demo records to feed them.

Used by :mod:`selectflow.router.familycheck`. Builds run offline from configs.
"""

from __future__ import annotations

import functools
import re
import warnings

import torch

from selectflow.router.families import EXPERT_KEYS, config_count, family_of, n_routed_experts

N_EXPERTS = 8
TOP_K = 2
_TOPK_KEYS = ("num_experts_per_tok", "num_experts_per_token", "top_k_experts", "moe_k", "moe_topk")
_SIZE = re.compile(r"(size|_dim|rank|hidden)$")
_WRAPPED = re.compile(r"(text|vision|audio|thinker|talker)_config$")

#: per-family settings the generic shrinking cannot guess (layer-type lists, mamba and indexer sizes)
TINY: dict[str, dict] = {
    "lfm2_moe": dict(layer_types=["conv", "full_attention", "conv", "full_attention"], num_dense_layers=1),
    "nemotron_h": dict(
        layers_block_type=["linear_attention", "moe", "full_attention", "moe"],
        mamba_num_heads=8,
        mamba_head_dim=16,
        n_groups=1,
        ssm_state_size=16,
        use_mamba_kernels=False,
    ),
    "qwen4_exp_text": dict(
        layer_types=["linear_attention"] * 3 + ["indexed_attention"],
        indexer_n_heads=2,
        indexer_kv_heads=1,
        indexer_head_dim=16,
        indexer_budget=8,
        indexer_compress_ratio=2,
        ngram_vocab_size_base=1000,
        hc_lowrank=16,
        ple_embed_dim=32,
        split_ngram_parts=4,
        heads_per_ngram=2,
    ),
    "gemma4_text": dict(
        enable_moe_block=True,
        moe_intermediate_size=32,
        vocab_size_per_layer_input=512,
        hidden_size_per_layer_input=16,
        layer_types=["sliding_attention", "full_attention"] * 2,
        sliding_window=16,
    ),
    "zaya": dict(num_experts_per_tok=1),
    "mimo_v2_flash": dict(layer_types=["full_attention"] * 4, mlp_layer_types=["dense"] + ["sparse"] * 3),
    "longcat_flash": dict(num_layers=2, qk_head_dim=32, zero_expert_num=2),
    "dbrx": dict(
        d_model=64,
        n_heads=4,
        n_layers=4,
        max_seq_len=256,
        attn_config=dict(kv_n_heads=4, rope_theta=10000.0, clip_qkv=8.0),
        ffn_config=dict(hidden_size=64, moe_num_experts=8, moe_top_k=2, ffn_hidden_size=32),
    ),
    "dots3_note_text": dict(layer_types=["indexed_attention"] * 4, index_topk=8, index_n_heads=2),
    "doge": dict(is_moe=True, num_experts=16, num_experts_per_tok=2),
    "inkling2_loop_text": dict(
        loop_layer_index_start=1, loop_layer_index_end=3, loop_num_passes=2, n_layers_per_attn_res_block=1
    ),
}


def _declares_experts(d: dict) -> bool:
    """A config dict (one level of nested configs included, not wrapped sub-models) with an expert key."""
    keys = [str(k) for k in d] + [
        f"{k}.{kk}" for k, v in d.items() if isinstance(v, dict) and not _WRAPPED.search(str(k)) for kk in v
    ]
    return any("expert" in k for k in keys)


def _default_config(model_type: str) -> dict | None:
    from transformers import CONFIG_MAPPING

    try:
        return CONFIG_MAPPING[model_type]().to_dict()
    except Exception:  # noqa: BLE001 - a config that cannot be built with defaults is not enumerable
        return None


@functools.lru_cache(maxsize=1)
def expert_types() -> dict[str, bool]:
    """Every model type of the installed transformers whose config (or text config) declares experts
    → whether it loads as a causal LM (``AutoModelForCausalLM``)."""
    from transformers import CONFIG_MAPPING
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    out = {}
    with quiet():
        for model_type in sorted(CONFIG_MAPPING.keys()):
            d = _default_config(model_type)
            text = d.get("text_config") if d else None
            if d and (_declares_experts(d) or (isinstance(text, dict) and _declares_experts(text))):
                out[model_type] = model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES
    return out


def moe_families() -> list[str]:
    """Causal-LM model types of the installed transformers whose config (or text config) declares experts.

    Composite types (``llama4``, ``qwen3_5_moe``: a text config inside a multimodal one) count:
    ``AutoModelForCausalLM`` loads their text model.
    """
    return [t for t, causal in expert_types().items() if causal]


def not_causal_lm() -> dict[str, str]:
    """Expert-declaring model types that do not load as a causal LM → why (:func:`causal_lm_problem`)."""
    from selectflow.data.preflight import causal_lm_problem

    return {t: causal_lm_problem(t) for t, causal in expert_types().items() if not causal}


class quiet:
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
    """The family's default config shrunk to a tiny model (see the module doc).

    A composite type gets its text config shrunk; widths of the other parts that must match
    the text hidden size follow it.
    """
    from transformers import CONFIG_MAPPING

    d = CONFIG_MAPPING[model_type]().to_dict()
    text = d.get("text_config")
    if isinstance(text, dict) and text.get("model_type") in CONFIG_MAPPING:
        tiny = tiny_config(
            text["model_type"], vocab_size, pad_token_id=pad_token_id, eos_token_id=eos_token_id, layers=layers
        )
        parts = {
            k: {
                kk: tiny.hidden_size if vv == text.get("hidden_size") and kk != "hidden_size" else vv
                for kk, vv in v.items()
            }
            for k, v in d.items()
            if isinstance(v, dict) and _WRAPPED.search(k) and k != "text_config"
        }
        with quiet():
            return CONFIG_MAPPING[model_type](text_config=tiny.to_dict(), **parts)
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
    over.update(
        vocab_size=vocab_size,
        num_hidden_layers=layers,
        pad_token_id=pad_token_id,
        eos_token_id=eos_token_id,
        bos_token_id=None,
        max_position_embeddings=256,
    )
    over.update(TINY.get(model_type, {}))
    with quiet():
        return CONFIG_MAPPING[model_type](**over)


def router_weights(model, n_columns: int) -> list[tuple[str, torch.nn.Module]]:
    """Modules that own a router weight: a 2-D ``weight`` with ``n_columns`` rows, outside experts/attention."""
    out = []
    for name, module in model.named_modules():
        w = getattr(module, "weight", None)
        if (
            isinstance(w, torch.nn.Parameter)
            and w.ndim == 2
            and w.shape[0] == n_columns
            and not re.search(r"(expert|attn|attention|embed|lm_head|shared)", name)
        ):
            out.append((name, module))
    return out


def build_tiny(model_type: str, tokenizer, seed: int = 0, router_scale: float = 2.0):
    """A seeded tiny model of ``model_type``; router weights scaled up so routing is peaked."""
    from transformers import AutoModelForCausalLM

    cfg = tiny_config(
        model_type, len(tokenizer), pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id
    )
    torch.manual_seed(seed)
    with quiet():
        model = AutoModelForCausalLM.from_config(cfg).eval()
    modules = dict(model.named_modules())
    with torch.no_grad():  # redrawn: some families initialise routers to zero (uniform routing tells nothing)
        for name, _ in router_weights(model, columns(model) + sink_rows(model)):
            # the whole router when the weight sits in a small router network (Zaya's router MLP)
            parts = name.split(".")
            top = next((".".join(parts[: i + 1]) for i, p in enumerate(parts) if p in ("gate", "router")), name)
            for sub in modules[top].modules():
                w = getattr(sub, "weight", None)
                if isinstance(w, torch.nn.Parameter) and w.ndim == 2:
                    w.normal_(0.0, router_scale / w.shape[1] ** 0.5)
    return model


def columns(model) -> int:
    _, family = family_of(model)
    n = n_routed_experts(model.config) or 0
    if family is not None and family.score == "product_keys":
        return 2 * int(round(n**0.5))
    return n + (config_count(model.config, family.extra_experts) if family else 0)


def sink_rows(model) -> int:
    _, family = family_of(model)
    return config_count(model.config, family.sink_rows) if family else 0


def demo_inputs():
    """The demo tokenizer (trained on the demo pool) and 20 demo records of deliberately uneven length.

    The 2 longest records of the pool, 4 from the middle and the 14 shortest: sorted by
    length into batches of 16 (the schema's ``router_dump.batch_size``), the first batch is
    about three quarters padding, and so is the IFD pass (responses alone).
    """
    from selectflow.data.demo import _train_tokenizer, make_demo_pool
    from selectflow.data.records import prompt_and_response

    records = []
    for raw in make_demo_pool(200, seed=0):
        prompt, response = prompt_and_response(raw, "alpaca")
        records.append({"sample_id": raw["id"], "prompt": prompt, "response": response})
    tokenizer = _train_tokenizer([r["prompt"] + r["response"] for r in records], 512)
    records = sorted(records, key=lambda r: len(r["prompt"] + r["response"]))
    middle = len(records) // 2
    return tokenizer, records[-2:] + records[middle : middle + 4] + records[:14]
