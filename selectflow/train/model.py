"""Load a causal LM for training with the memory levers of the ``train:`` section applied.

* precision: ``fp32``; ``fp16`` (autocast + ``GradScaler``, CUDA only); ``bf16`` (autocast,
  CPU or CUDA); ``auto`` → bf16 on CUDA (fp16 where bf16 is unsupported), fp32 on CPU.
  Trained weights stay fp32 (master weights); a frozen LoRA base is kept in the compute
  dtype.
* ``gradient_checkpointing`` (non-reentrant), ``lora`` (peft adapters; only they train),
* CUDA only, and only with LoRA (their base weights cannot train): ``cpu_offload``
  (``device_map="auto"`` + ``max_memory``, accelerate) and ``load_in_8bit`` (bitsandbytes).

:func:`check_levers` raises :class:`~selectflow.runtime.errors.SelectFlowError` for a combination
the device cannot run, before anything is loaded.
"""

from __future__ import annotations

import logging

import torch

from selectflow.config import LoraConfig, TrainConfig
from selectflow.runtime.errors import SelectFlowError

log = logging.getLogger(__name__)

_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def resolve_precision(precision: str, device: torch.device) -> str:
    """``auto`` → ``bf16``/``fp16`` on CUDA, ``fp32`` on CPU; other values unchanged."""
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "fp32"


def compute_dtype(precision: str) -> torch.dtype:
    return _DTYPES[precision]


def check_levers(c: TrainConfig, device: torch.device, precision: str) -> None:
    """Refuse lever combinations the device cannot run, naming the key to change."""
    cuda = device.type == "cuda"
    lora = c.lora.enabled
    if precision == "fp16" and not cuda:
        raise SelectFlowError(
            "train.precision fp16 needs a CUDA device (fp16 autocast with a GradScaler); "
            f"the device is {device}: use bf16 or fp32"
        )
    for key, on in (("train.cpu_offload.enabled", c.cpu_offload.enabled), ("train.load_in_8bit", c.load_in_8bit)):
        if on and not cuda:
            raise SelectFlowError(
                f"{key} needs a CUDA device (it places weights for a GPU); the device is {device}: set it to false"
            )
        if on and not lora:
            raise SelectFlowError(f"{key} keeps the base weights frozen, so it needs train.lora.enabled: true")
    if c.load_in_8bit:
        try:
            import bitsandbytes  # noqa: F401
        except ImportError:
            raise SelectFlowError(
                "train.load_in_8bit needs the bitsandbytes package: pip install bitsandbytes"
            ) from None


def lora_config(lora: LoraConfig):
    """The ``peft.LoraConfig`` of the ``train.lora`` section."""
    from peft import LoraConfig as PeftLoraConfig

    targets = lora.target_modules
    return PeftLoraConfig(
        task_type="CAUSAL_LM",
        r=int(lora.r),
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=targets if isinstance(targets, str) else list(targets),
    )


def _max_memory(spec: dict) -> dict | None:
    """YAML keys ``"0"`` / ``cpu`` → accelerate's ``{0: "8GB", "cpu": "30GB"}``."""
    if not spec:
        return None
    return {int(k) if str(k).isdigit() else str(k): v for k, v in spec.items()}


def load_for_training(model_path, c: TrainConfig, device: torch.device, precision: str):
    """``from_pretrained`` with the levers applied; returns the model in train mode."""
    from selectflow.router.gate import load_causal_lm

    lora = c.lora.enabled
    offload = c.cpu_offload.enabled
    weight_dtype = compute_dtype(precision) if lora and precision != "fp32" else torch.float32
    kwargs: dict = {"dtype": weight_dtype}
    if c.load_in_8bit:
        from transformers import BitsAndBytesConfig

        kwargs["dtype"] = compute_dtype(precision) if precision != "fp32" else torch.float16
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_8bit=True, llm_int8_threshold=6.0, llm_int8_enable_fp32_cpu_offload=offload
        )
        kwargs["device_map"] = {"": device.index or 0}
    if offload:
        kwargs["device_map"] = "auto"
        kwargs["max_memory"] = _max_memory(c.cpu_offload.max_memory)
    try:
        model = load_causal_lm(model_path, **kwargs)  # a converted model comes with its quality gates
    except OSError as exc:
        raise SelectFlowError(
            f"cannot load a causal LM from {model_path} ({exc}); point model_path at a folder "
            "saved with save_pretrained"
        ) from None
    if "device_map" not in kwargs:
        model.to(device)
    model.config.use_cache = False
    gc_kwargs = {"use_reentrant": False}
    if c.load_in_8bit:
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(
            model, use_gradient_checkpointing=c.gradient_checkpointing, gradient_checkpointing_kwargs=gc_kwargs
        )
    elif c.gradient_checkpointing:
        if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5 renamed it
            model.activation_checkpointing_enable(activation_checkpointing_kwargs=gc_kwargs)
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=gc_kwargs)
    if lora:
        from peft import get_peft_model

        model = get_peft_model(model, lora_config(c.lora))
    model.train()
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    levers = [
        name
        for name, on in (
            ("LoRA", lora),
            ("gradient checkpointing", c.gradient_checkpointing),
            ("8-bit", c.load_in_8bit),
            ("CPU offload", offload),
        )
        if on
    ]
    log.info(
        "model %s: %d parameters, %d trainable (%.2f%%); weights %s, compute %s; levers: %s",
        model_path,
        total,
        trainable,
        100.0 * trainable / max(total, 1),
        str(kwargs["dtype"]).replace("torch.", ""),
        precision,
        ", ".join(levers) or "none",
    )
    return model
