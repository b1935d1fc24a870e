"""Device handling in one place: the torch device, its floating dtype, the freest GPU, the allocator.

* :func:`resolve_device`: a config's ``device`` string as a ``torch.device``;
* :func:`pick_device`: the same for a training job, always with a device index, and the
  freest GPU when ``auto`` sees several;
* :func:`freest_cuda_device`: the visible CUDA device with the most free memory (seed 003);
* :func:`inference_dtype`: the floating dtype of a forward-only job;
* :func:`use_expandable_segments`: the CUDA allocator setting, before CUDA starts.

torch is imported inside the functions, so the job wrapper can set the allocator before
the first import of torch.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import TYPE_CHECKING

from selectflow.runtime.errors import SelectFlowError

if TYPE_CHECKING:  # torch loads only when a function needs it
    import torch

log = logging.getLogger(__name__)
ALLOC_CONF = "expandable_segments:True"


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
    table = {
        "float32": torch.float32,
        "fp32": torch.float32,
        "bfloat16": torch.bfloat16,
        "bf16": torch.bfloat16,
        "float16": torch.float16,
        "fp16": torch.float16,
    }
    if spec not in table:
        raise SelectFlowError(f"unknown dtype '{spec}'; use auto, float32, bfloat16 or float16")
    return table[spec]


def freest_cuda_device() -> torch.device:
    """The CUDA device with the most free memory (seed 003's "pick the freest GPU")."""
    import torch

    free = [torch.cuda.mem_get_info(i)[0] for i in range(torch.cuda.device_count())]
    return torch.device("cuda", max(range(len(free)), key=free.__getitem__))


def pick_device(spec: str) -> torch.device:
    """:func:`resolve_device` with an explicit index: ``auto`` over several GPUs takes the freest one."""
    import torch

    if spec == "auto" and torch.cuda.is_available() and torch.cuda.device_count() > 1:
        return freest_cuda_device()
    device = resolve_device(spec)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    return device


def use_expandable_segments() -> None:
    """Ask the CUDA allocator for expandable segments (less fragmentation) unless the user set it.

    The allocator reads ``PYTORCH_CUDA_ALLOC_CONF`` when CUDA initialises, so this works only
    before the first CUDA call of the process (it says so in the log otherwise).
    """
    if "PYTORCH_CUDA_ALLOC_CONF" in os.environ:
        return
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized():
        log.info(
            "CUDA is already initialised: set PYTORCH_CUDA_ALLOC_CONF=%s in the environment to get expandable segments",
            ALLOC_CONF,
        )
        return
    os.environ["PYTORCH_CUDA_ALLOC_CONF"] = ALLOC_CONF
    log.info("CUDA allocator: %s", ALLOC_CONF)
