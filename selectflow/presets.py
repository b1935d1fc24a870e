"""The train section's loader presets: ``train.preset`` -> the values of the preset-controlled keys.

Loader presets follow the GPU-cache loader notes (seed 001): ``basic`` is the device cache alone,
``prefetch`` the prefetching loader alone, ``combined`` both, ``aggressive`` the largest cache
and deepest prefetch (≥24 GB cards), ``minimal`` the least memory (≤12 GB cards: small cache,
prefetch of 1, micro-batch 1). Every preset keeps the effective batch at 8 samples. Where
the notes use ``num_workers=1`` together with the device cache (``combined``) this uses 0:
the cache lives in the process that owns the device, so a worker process could neither see
nor fill it; the prefetch thread does the overlapping instead. ``prefetch`` also uses no
worker process: its thread already overlaps tokenisation with compute, and a worker only
adds the inter-process copy of every batch (``bench/bench_loader.py`` measures it).
``pin_memory`` is off wherever the cache is on (cached tensors are already on the device).
The preset-controlled keys default to ``null`` in the schema ("take it from the preset, else
from :data:`BASE`"), so a config filled with the schema's defaults does not mask the preset;
:func:`selectflow.config.resolve_train_config` applies them.
"""

PRESET_KEYS = (
    "use_gpu_cache",
    "gpu_cache_size",
    "use_prefetch",
    "prefetch_factor",
    "num_workers",
    "pin_memory",
    "micro_batch_size",
    "gradient_accumulation_steps",
)

# the preset-controlled keys when no preset is set
BASE = {
    "use_gpu_cache": False,
    "gpu_cache_size": 5000,
    "use_prefetch": False,
    "prefetch_factor": 2,
    "num_workers": 0,
    "pin_memory": False,
    "micro_batch_size": 4,
    "gradient_accumulation_steps": 2,
}

# train.preset -> its preset-controlled keys (the names: train.schema.yaml's preset enum, a test keeps them equal)
PRESETS = {
    "basic": {
        "use_gpu_cache": True,
        "gpu_cache_size": 5000,
        "use_prefetch": False,
        "prefetch_factor": 2,
        "num_workers": 0,
        "pin_memory": False,
        "micro_batch_size": 4,
        "gradient_accumulation_steps": 2,
    },
    "prefetch": {
        "use_gpu_cache": False,
        "gpu_cache_size": 0,
        "use_prefetch": True,
        "prefetch_factor": 2,
        "num_workers": 0,
        "pin_memory": True,
        "micro_batch_size": 4,
        "gradient_accumulation_steps": 2,
    },
    "combined": {
        "use_gpu_cache": True,
        "gpu_cache_size": 3000,
        "use_prefetch": True,
        "prefetch_factor": 2,
        "num_workers": 0,
        "pin_memory": False,
        "micro_batch_size": 4,
        "gradient_accumulation_steps": 2,
    },
    "aggressive": {
        "use_gpu_cache": True,
        "gpu_cache_size": 10000,
        "use_prefetch": True,
        "prefetch_factor": 3,
        "num_workers": 0,
        "pin_memory": False,
        "micro_batch_size": 8,
        "gradient_accumulation_steps": 1,
    },
    "minimal": {
        "use_gpu_cache": True,
        "gpu_cache_size": 2000,
        "use_prefetch": True,
        "prefetch_factor": 1,
        "num_workers": 0,
        "pin_memory": False,
        "micro_batch_size": 1,
        "gradient_accumulation_steps": 8,
    },
}
