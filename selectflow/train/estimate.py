"""Training-memory estimate before launch, and the micro-batch that fits a budget.

Inputs are a :class:`ModelShape` (read from a model folder by :func:`model_shape`, which
builds the model on the ``meta`` device, so nothing is loaded) and the run settings. With
``b_c`` the bytes of the compute dtype (4 for fp32, 2 for fp16 / bf16), ``b_w`` the bytes
of a base weight (4; 2 when LoRA trains over a base kept in fp16 / bf16), ``b_r`` the
bytes of the residual stream (4 when the weights are fp32, else 2),
``T = micro_batch * max_length`` tokens (padding to ``max_length`` is the worst case),
hidden size ``h``, ``L`` layers, vocabulary ``V``, key/value width ``kv`` (kv heads × head
dim), MLP width ``I`` (dense) or expert width ``I_e``, experts ``E`` and ``k`` experts per
token (MoE):

=====================  ==============================================================
parameters             ``n_params * b_w`` (+ LoRA adapters ``n_lora * 4``); 8-bit loading:
                       ``n_linear`` bytes for the int8 linear weights + 4 bytes for every
                       other weight (peft's k-bit preparation upcasts them; ``b_r = 4``)
autocast weight copies ``n_params * b_c`` when the weights are fp32 and compute is
                       fp16 / bf16 (autocast keeps a cast copy of each weight for backward;
                       8-bit: of the non-int8 weights only)
gradients              ``n_trainable * 4`` (trainable: all parameters, or the LoRA ones)
AdamW states           ``n_trainable * 8`` (exp_avg and exp_avg_sq in fp32)
activations            ``T * (L * a_layer + 3 h b_r)``, where per token and layer
                       ``a_layer = (6h + 2kv + m) * b_c + 4h * b_r`` (+ ``2 k h b_r`` for MoE),
                       ``m = 4I`` (dense SwiGLU: gate, up, act, product) or ``m = k*4*I_e + E``
                       (MoE: the same per routed copy, plus router logits); with gradient
                       checkpointing ``T * (L * h * b_r + a_layer + 3 h b_r)`` (layer inputs,
                       plus one layer recomputed during backward)
logits                 ``T * V * (b_c + 4 [if b_c < 4] + 4 + 4)``: logits, their fp32 upcast,
                       the fp32 log-softmax saved for the loss and its gradient
=====================  ==============================================================

The predicted peak is the sum (gradients and activations coexist during backward). The
activation constants were fitted to the tensors autograd saves (counted with
``saved_tensors_hooks``) for dense Llama-style blocks on CPU (within ~5 %); MoE blocks in
reduced precision come out ~25 % low (expert routing keeps fp32 copies). Logits dominate
small models (``V`` ≫ ``h``). Not counted: the CUDA context (~0.5 GiB), allocator
fragmentation, and temporary buffers of single kernels.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, fields

import pandas as pd
import psutil
import torch

from selectflow.config import LoraConfig, lora_settings
from selectflow.runtime.errors import SelectFlowError
from selectflow.runtime.units import parse_bytes

log = logging.getLogger(__name__)


def free_memory_bytes(device: torch.device) -> int:
    """Free memory of ``device``: the CUDA driver's free bytes, or the host's available bytes."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    return int(psutil.virtual_memory().available)


def resolve_budget(spec, device: torch.device, key: str = "train.gpu_memory_budget") -> int | None:
    """``None`` → no budget; ``"auto"`` → free memory of ``device`` now; else :func:`parse_bytes`."""
    if spec is None:
        return None
    if isinstance(spec, str) and spec.strip().lower() == "auto":
        return free_memory_bytes(device)
    return parse_bytes(spec, key)


@dataclass(frozen=True)
class ModelShape:
    """What the estimate needs to know about a causal LM."""

    n_params: int
    n_linear_params: int  # nn.Linear weights except the output head (what 8-bit loading quantises)
    hidden: int
    layers: int
    vocab: int
    kv_dim: int
    intermediate: int
    moe_intermediate: int = 0
    experts: int = 0
    top_k: int = 0
    lora_params: int = 0  # trainable parameters the LoRA config adds (0: no LoRA)


def model_shape(model_path, lora: LoraConfig | dict | None = None) -> ModelShape:
    """Read a model folder's config and count its parameters on the ``meta`` device.

    ``lora`` is the ``train.lora`` section (a partial mapping takes the schema's defaults).
    LoRA's trainable count comes from applying the same ``peft`` config the trainer uses
    to the meta model, so it matches whatever modules peft targets (for MoE models in
    recent peft / transformers that includes fused expert weights and routers).
    """
    from transformers import AutoConfig, AutoModelForCausalLM

    try:
        config = AutoConfig.from_pretrained(model_path)
    except (OSError, ValueError) as exc:
        raise SelectFlowError(
            f"cannot read a model config from {model_path} ({exc}); point --model/model_path at a "
            "folder with config.json"
        ) from None
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    text = config.get_text_config()
    head = model.get_output_embeddings()
    n_params = sum(p.numel() for p in model.parameters())
    n_linear = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear) and m is not head)
    n_lora = 0
    lora = lora_settings(lora) if lora else None
    if lora and lora.enabled:
        from peft import get_peft_model

        from selectflow.train.model import lora_config

        n_lora = get_peft_model(model, lora_config(lora)).get_nb_trainable_parameters()[0]
    hidden = text.hidden_size
    heads = text.num_attention_heads
    head_dim = getattr(text, "head_dim", None) or hidden // heads
    experts = getattr(text, "num_experts", None) or getattr(text, "num_local_experts", None) or 0
    return ModelShape(
        n_params=n_params,
        n_linear_params=n_linear,
        hidden=hidden,
        layers=text.num_hidden_layers,
        vocab=text.vocab_size,
        kv_dim=(getattr(text, "num_key_value_heads", None) or heads) * head_dim,
        intermediate=getattr(text, "intermediate_size", 4 * hidden),
        moe_intermediate=(getattr(text, "moe_intermediate_size", None) or 0) if experts else 0,
        experts=experts,
        top_k=(getattr(text, "num_experts_per_tok", None) or 0) if experts else 0,
        lora_params=n_lora,
    )


@dataclass(frozen=True)
class MemoryEstimate:
    """Predicted bytes per component (see the module docstring for the formulas)."""

    parameters: int
    autocast_copies: int
    gradients: int
    optimizer: int
    activations: int
    logits: int

    @property
    def total(self) -> int:
        return sum(getattr(self, f.name) for f in fields(self))

    def table(self) -> pd.DataFrame:
        rows = [(k, v) for k, v in asdict(self).items()] + [("total (predicted peak)", self.total)]
        df = pd.DataFrame(rows, columns=["component", "bytes"])
        df["MiB"] = (df["bytes"] / 2**20).round(1)
        df["GiB"] = (df["bytes"] / 2**30).round(3)
        return df


def compute_bytes(precision: str) -> int:
    if precision not in ("fp32", "fp16", "bf16"):
        raise SelectFlowError(f"precision '{precision}' is unknown here; use fp32, fp16 or bf16")
    return 4 if precision == "fp32" else 2


def estimate_training_memory(
    shape: ModelShape,
    *,
    micro_batch: int,
    max_length: int,
    precision: str = "fp32",
    gradient_checkpointing: bool,
    lora: bool = False,
    load_in_8bit: bool,
) -> MemoryEstimate:
    """Predicted training peak of one micro-batch (bytes per component)."""
    b_c = compute_bytes(precision)
    h, tokens = shape.hidden, micro_batch * max_length
    if load_in_8bit:
        # int8 linear weights; peft's k-bit preparation upcasts every other weight to fp32
        other = shape.n_params - shape.n_linear_params
        weights, b_r = shape.n_linear_params + other * 4, 4
        autocast = other * b_c if b_c < 4 else 0
    else:
        b_w = b_c if lora and b_c < 4 else 4
        weights, b_r = shape.n_params * b_w, (4 if b_w == 4 else 2)
        autocast = shape.n_params * b_c if (b_w == 4 and b_c < 4) else 0
    trainable = shape.lora_params if lora else shape.n_params
    if lora:
        weights += shape.lora_params * 4
    if shape.experts:
        mlp = shape.top_k * 4 * shape.moe_intermediate + shape.experts
        routed = 2 * shape.top_k * h * b_r
    else:
        mlp, routed = 4 * shape.intermediate, 0
    per_layer = (6 * h + 2 * shape.kv_dim + mlp) * b_c + 4 * h * b_r + routed
    outside = 3 * h * b_r
    if gradient_checkpointing:
        activations = tokens * (shape.layers * h * b_r + per_layer + outside)
    else:
        activations = tokens * (shape.layers * per_layer + outside)
    logits = tokens * shape.vocab * (b_c + (4 if b_c < 4 else 0) + 8)
    return MemoryEstimate(
        parameters=weights,
        autocast_copies=autocast,
        gradients=trainable * 4,
        optimizer=trainable * 8,
        activations=activations,
        logits=logits,
    )


def pick_micro_batch(shape: ModelShape, budget_bytes: int, *, max_length: int, upper: int, **kwargs) -> int:
    """The largest micro-batch in ``[1, upper]`` whose predicted peak fits ``budget_bytes``.

    ``kwargs`` go to :func:`estimate_training_memory`. Raises when even 1 does not fit.
    """

    def fits(mb: int) -> bool:
        return estimate_training_memory(shape, micro_batch=mb, max_length=max_length, **kwargs).total <= budget_bytes

    if not fits(1):
        need = estimate_training_memory(shape, micro_batch=1, max_length=max_length, **kwargs).total
        raise SelectFlowError(
            f"even micro-batch 1 at max_length {max_length} needs ~{need / 2**30:.2f} GiB, over the budget of "
            f"{budget_bytes / 2**30:.2f} GiB (train.gpu_memory_budget); lower train.max_length, enable "
            "train.gradient_checkpointing, train.lora.enabled, precision bf16/fp16, or raise the budget"
        )
    lo, hi = 1, max(1, int(upper))
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if fits(mid):
            lo = mid
        else:
            hi = mid - 1
    return lo
