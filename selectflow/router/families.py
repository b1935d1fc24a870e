"""MoE families: where each keeps its router logits and how it turns them into a routing distribution.

:data:`FAMILIES` is a small table keyed by ``config.model_type`` (data, not code per family):

* ``source`` / ``pattern`` / ``output_index``: the router logits come from the model's
  ``output_router_logits`` (``"output"``) or from forward hooks on modules whose name
  matches ``pattern`` (``"hooks"``), element ``output_index`` of the module's output
  (``None``: the first float tensor shaped [tokens, experts]);
* ``score``: how the model turns logits into its routing distribution over experts:
  ``softmax``; ``sigmoid`` (per-expert sigmoid, normalised over all experts so it sums
  to 1 like a softmax); ``sqrtsoftplus`` (the same with sqrt(softplus)); ``probs`` (the
  captured values already are probabilities); ``product_keys`` (two key halves whose
  softmaxes multiply, Doge). A ``scoring_func`` / ``expert_selection_fn`` key in the
  model config overrides the table (DeepSeek-style configs);
* ``extra_experts``: config key (or a fixed count) of "zero"/"skip" experts the router
  scores after the routed ones (LongCat ``zero_expert_num``, Zaya's one skip expert):
  they stay as the last columns of ``moe_probs``, since choosing them is a routing
  decision too. Shared experts are always on, have no router column and are not counted;
* ``batch_dependent``: the family's values depend on the other rows of a batch
  (indexed/sparse attention, token-mixing routers): it is dumped one sample at a time;
* ``sink_rows``: config key of always-on (shared) experts the router weight also scores
  (Inkling's shared-expert sinks): not routed choices, so they get no column;
* ``sparse_mixer``: the model's top-k weights come from a sparse mixer with no dense
  equivalent (PhiMoE): ``moe_probs`` is the softmax of the logits;
* ``loops``: layers run several passes (looped transformers); each pass is a routing
  decision and gets its own row of ``moe_probs`` (router by router, pass by pass).

The helpers read a model and its config through this table: :func:`family_of` (model type and
table entry, or None), :func:`n_routed_experts`, :func:`config_count`, :func:`scoring`,
:func:`expected_moe_layers` (the routed-expert containers) and :func:`suggest_pattern`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from selectflow.router.modules import text_config

#: config attributes holding the routed-expert count, in lookup order
EXPERT_KEYS = ("n_routed_experts", "num_local_experts", "num_experts", "moe_num_experts")
SCORES = ("softmax", "sigmoid", "sqrtsoftplus", "probs", "product_keys")
#: module names that mark an attention (not MLP) mixture, or always-on experts
_NOT_ROUTED = re.compile(r"(attn|attention|shared)")


@dataclass(frozen=True)
class Family:
    source: str = "output"
    pattern: str | None = None
    output_index: int | None = None
    score: str = "softmax"
    extra_experts: str | int = 0
    batch_dependent: bool = False
    loops: bool = False
    sink_rows: str | int = 0
    sparse_mixer: bool = False
    note: str = ""


_SIGMOID = Family(score="sigmoid")
_SIGMOID_INDEXED = Family(score="sigmoid", batch_dependent=True, note="indexed (sparse) attention: dumped at batch 1")

FAMILIES: dict[str, Family] = {
    **{
        name: _SIGMOID
        for name in (
            "afmoe",
            "axk1",
            "axk2",
            "bailing_hybrid",
            "beam",
            "deepseek_v3",
            "dots1",
            "exaone_moe",
            "flint",
            "glm4_moe",
            "glm4_moe_lite",
            "hy_v3",
            "hy_v4",
            "inkling_text",
            "kimi_linear",
            "kolibri1",
            "laguna",
            "lfm2_moe",
            "mimo_v2_flash",
            "minimax_m2",
            "minimax_m3_vl_text",
            "nemotron_h",
            "sarvam_mla",
            "sarvam_moe",
            "solar_open",
            "inkling2_text",
        )
    },
    "inkling_text": Family(
        score="sigmoid",
        sink_rows="n_shared_experts",
        note="the router also scores the shared experts (sinks); they get no column",
    ),
    "phimoe": Family(sparse_mixer=True, note="sparsemixer top-k weights have no dense form: softmax of the logits"),
    "inkling2_loop_text": Family(
        score="sigmoid", source="hooks", pattern=r"(^|\.)mlp\.gate$", loops=True, note="looped layers: one row per pass"
    ),
    **{name: _SIGMOID_INDEXED for name in ("deepseek_v32", "glm_moe_dsa", "dots3_note_text")},
    "qwen4_exp_text": Family(batch_dependent=True, note="indexed attention: dumped at batch 1"),
    "deepseek_v4": Family(
        score="sqrtsoftplus",
        source="hooks",
        pattern=r"(^|\.)mlp\.gate$",
        batch_dependent=True,
        note="hash-routed first layers are missing from output_router_logits; compressed "
        "sparse attention: dumped at batch 1",
    ),
    "llama4_text": Family(
        score="sigmoid",
        source="hooks",
        pattern=r"(^|\.)feed_forward\.router$",
        output_index=1,
        note="the router returns (top-k sigmoid scores, logits)",
    ),
    "gemma4_text": Family(
        source="hooks",
        pattern=r"(^|\.)router\.proj$",
        note="the router module returns probabilities; its proj holds the logits",
    ),
    "jetmoe": Family(
        source="hooks",
        pattern=r"(^|\.)mlp\.router$",
        output_index=4,
        note="output_router_logits interleaves the attention-expert routers",
    ),
    "longcat_flash": Family(extra_experts="zero_expert_num", note="zero (identity) experts are the last columns"),
    "zaya": Family(extra_experts=1, note="the skip expert is the last column"),
    "doge": Family(
        score="product_keys",
        source="hooks",
        pattern=r"(^|\.)mlp$",
        output_index=1,
        batch_dependent=True,
        note="product-key experts (keys²); the router mixes rows of a batch: dumped at batch 1",
    ),
}


def n_routed_experts(config) -> int | None:
    """Routed experts the config declares (shared experts excluded), or None."""
    cfg = text_config(config)
    for key in EXPERT_KEYS:
        value = getattr(cfg, key, None)
        if isinstance(value, int) and value > 0:
            return value
    ffn = getattr(cfg, "ffn_config", None)  # DBRX
    value = getattr(ffn, "moe_num_experts", None) if ffn is not None else None
    return value if isinstance(value, int) else None


def config_count(config, value: str | int) -> int:
    """A count given as a number or as the name of a config attribute (0 when absent)."""
    return int(getattr(text_config(config), value, 0) or 0) if isinstance(value, str) else int(value)


def family_of(model) -> tuple[str, Family | None]:
    model_type = getattr(text_config(model.config), "model_type", "") or getattr(model.config, "model_type", "")
    return model_type, FAMILIES.get(model_type)


def scoring(config, family: Family) -> str:
    """The routing score the model uses: the config's own ``scoring_func`` wins over the table."""
    cfg = text_config(config)
    for key in ("scoring_func", "expert_selection_fn"):
        value = getattr(cfg, key, None)
        if value in SCORES:
            return value
    return family.score


def expected_moe_layers(model) -> list[str]:
    """Names of the routed-expert containers (``*.experts``, not shared / attention ones)."""
    return [n for n, _ in model.named_modules() if re.search(r"(^|\.)experts$", n) and not _NOT_ROUTED.search(n)]


def suggest_pattern(model, n_columns: int) -> str | None:
    """A regex on the module names that own a [n_columns, hidden] weight (likely routers).

    Attention and shared-expert modules are left out: a linear-attention projection can
    have as many rows as there are experts (Qwen3-Next's ``linear_attn.in_proj_ba``).
    """
    names = set()
    for name, param in model.named_parameters():
        if (
            param.ndim == 2
            and param.shape[0] == n_columns
            and name.endswith("weight")
            and "expert" not in name
            and not _NOT_ROUTED.search(name)
        ):
            names.add(re.sub(r"^.*?\.\d+\.", "", name.rsplit(".", 1)[0]))
    if not names:
        return None
    return r"(^|\.)(" + "|".join(re.escape(n) for n in sorted(names)) + ")$"
