"""Memory-frugal supervised fine-tuning (issue 5, library side).

=================  ===================================================================
module             what it computes
=================  ===================================================================
``trainer``        :func:`train` / :func:`train_on_pool`: the SFT loop, its outputs, resume
``data``           records → token tensors (loss on response tokens) → padded batches;
                   the per-step sample plan
``loader``         :class:`BatchStream`: dataset → (cache) → DataLoader → (prefetch) → device
``cache``          :class:`DeviceCacheDataset`: LRU cache of tokenised samples on the device
``prefetch``       :class:`PrefetchLoader`: background thread, side CUDA stream
``monitor``        host / device memory readings → ``memory.tsv``, ``empty_cache`` schedule
``step``           one optimizer step: response-token loss, accumulation, LR schedule
``objective``      the warm-up's (Select-MoE stage 1) trainable tensors and gate loss
``presets``        loader presets, :func:`resolve_train_config` (schema defaults → preset →
                   user keys → a frozen :class:`~selectflow.config.TrainConfig`)
``estimate``       predicted training memory, :func:`pick_micro_batch`, the
                   ``estimate-memory`` command
``model``          loading with the memory levers (precision, LoRA, 8-bit, offload, …)
``checkpoint``     the ``resume/`` state (weights, optimizer, RNG, data position)
=================  ===================================================================
"""

import importlib

from selectflow.train.presets import PRESETS, resolve_train_config

# torch-heavy names load on first use, so the Snakefile (which needs only the presets) and
# the CLI start without importing torch
_LAZY = {"estimate_memory_main": "estimate", "estimate_training_memory": "estimate", "model_shape": "estimate",
         "pick_micro_batch": "estimate", "train": "trainer", "train_on_pool": "trainer"}


def __getattr__(name):
    if name in _LAZY:
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

__all__ = ["PRESETS", "estimate_memory_main", "estimate_training_memory", "model_shape", "pick_micro_batch",
           "resolve_train_config", "train", "train_on_pool"]
