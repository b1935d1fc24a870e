"""Memory-frugal supervised fine-tuning: the library the train and warm-up rules call.

=================  ===================================================================
module             what it computes
=================  ===================================================================
``trainer``        :func:`train` / :func:`train_on_pool`: the SFT run's setup, its outputs
``loop``           one run's optimizer steps: optimizer, schedule, resume state, metrics rows
``data``           records → token tensors (loss on response tokens) → padded batches;
                   the per-step sample plan
``loader``         :class:`BatchStream`: dataset → (cache) → DataLoader → (prefetch) → device
``cache``          :class:`DeviceCacheDataset`: LRU cache of tokenised samples on the device
``prefetch``       :class:`PrefetchLoader`: background thread, side CUDA stream
``monitor``        host / device memory readings → ``memory.tsv``, ``empty_cache`` schedule
``step``           one optimizer step: response-token loss, accumulation, LR schedule
``objective``      the warm-up's (Select-MoE stage 1) trainable tensors and gate loss
``estimate``       predicted training memory, :func:`pick_micro_batch` (the
                   ``estimate-memory`` command of :mod:`selectflow.cli`)
``model``          loading with the memory levers (precision, LoRA, 8-bit, offload, …)
``checkpoint``     the ``resume/`` state (weights, optimizer, RNG, data position)
=================  ===================================================================
"""

import importlib

# torch-heavy names load on first use, so importing the package does not import torch
_LAZY = {
    "estimate_training_memory": "estimate",
    "model_shape": "estimate",
    "pick_micro_batch": "estimate",
    "train": "trainer",
    "train_on_pool": "trainer",
}


def __getattr__(name):
    if name in _LAZY:
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["estimate_training_memory", "model_shape", "pick_micro_batch", "train", "train_on_pool"]
