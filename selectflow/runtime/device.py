"""Device handling in one place: pick the torch device and the floating dtype for it."""

from __future__ import annotations

from selectflow.runtime.errors import SelectFlowError


def resolve_device(spec: str | None = "auto") -> torch.device:
    """``auto`` → ``cuda`` when available else ``cpu``; ``cuda`` without a GPU is an error."""
    import torch

    spec = (spec or "auto").lower()
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if spec.startswith("cuda") and not torch.cuda.is_available():
        raise SelectFlowError(f"device '{spec}' requested but CUDA is not available; use 'cpu' or 'auto'")
    if not (spec == "cpu" or spec.startswith("cuda")):
        raise SelectFlowError(f"unknown device '{spec}'; use 'auto', 'cpu' or 'cuda'")
    return torch.device(spec)


def inference_dtype(device: torch.device, spec: str = "auto") -> torch.dtype:
    """``auto`` → bfloat16 on CUDA (when supported), float32 on CPU."""
    import torch

    if spec == "auto":
        if device.type == "cuda" and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float32
    table = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
             "float16": torch.float16, "fp16": torch.float16}
    if spec not in table:
        raise SelectFlowError(f"unknown dtype '{spec}'; use auto, float32, bfloat16 or float16")
    return table[spec]
