"""The ``train:`` config section: loader presets, and the section's resolution.

:func:`resolve_train_config` takes the user's ``train:`` mapping (possibly partial, possibly
with schema defaults filled in) and returns a complete, checked, frozen
:class:`~selectflow.config.TrainConfig`:

1. every key starts at its default in ``schemas/train.schema.yaml`` (the only place a
   default is written; :func:`selectflow.config.train_defaults`);
2. a ``preset`` (``basic``, ``prefetch``, ``combined``, ``aggressive``, ``minimal``) sets the
   loader keys of :data:`PRESETS` and the micro-batch / accumulation split;
3. any key the user set to a non-null value wins over the preset.

The preset-controlled keys default to ``null`` ("take it from the preset, else from
:data:`BASE`"), so a schema that fills in defaults does not mask the preset.

Presets follow the GPU-cache loader notes (seed 001): ``basic`` is the device cache alone,
``prefetch`` the prefetching loader alone, ``combined`` both, ``aggressive`` the largest cache
and deepest prefetch (≥24 GB cards), ``minimal`` the least memory (≤12 GB cards: small cache,
prefetch of 1, micro-batch 1). Every preset keeps the effective batch at 8 samples. Where
the notes use ``num_workers=1`` together with the device cache (``combined``) this uses 0:
the cache lives in the process that owns the device, so a worker process could neither see
nor fill it; the prefetch thread does the overlapping instead. ``prefetch`` also uses no
worker process: its thread already overlaps tokenisation with compute, and a worker only
adds the inter-process copy of every batch (``bench/bench_loader.py`` measures it).
``pin_memory`` is off wherever the cache is on (cached tensors are already on the device).
"""

from __future__ import annotations

from selectflow.config import NESTED, TrainConfig, train_config_of, train_defaults
from selectflow.runtime.errors import SelectFlowError

PRESET_KEYS = ("use_gpu_cache", "gpu_cache_size", "use_prefetch", "prefetch_factor", "num_workers", "pin_memory",
               "micro_batch_size", "gradient_accumulation_steps")

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

PRESETS = {
    "basic": {"use_gpu_cache": True, "gpu_cache_size": 5000, "use_prefetch": False, "prefetch_factor": 2,
              "num_workers": 0, "pin_memory": False, "micro_batch_size": 4, "gradient_accumulation_steps": 2},
    "prefetch": {"use_gpu_cache": False, "gpu_cache_size": 0, "use_prefetch": True, "prefetch_factor": 2,
                 "num_workers": 0, "pin_memory": True, "micro_batch_size": 4, "gradient_accumulation_steps": 2},
    "combined": {"use_gpu_cache": True, "gpu_cache_size": 3000, "use_prefetch": True, "prefetch_factor": 2,
                 "num_workers": 0, "pin_memory": False, "micro_batch_size": 4, "gradient_accumulation_steps": 2},
    "aggressive": {"use_gpu_cache": True, "gpu_cache_size": 10000, "use_prefetch": True, "prefetch_factor": 3,
                   "num_workers": 0, "pin_memory": False, "micro_batch_size": 8, "gradient_accumulation_steps": 1},
    "minimal": {"use_gpu_cache": True, "gpu_cache_size": 2000, "use_prefetch": True, "prefetch_factor": 1,
                "num_workers": 0, "pin_memory": False, "micro_batch_size": 1, "gradient_accumulation_steps": 8},
}

PRECISIONS = ("auto", "fp32", "fp16", "bf16")
_POSITIVE_INTS = ("micro_batch_size", "gradient_accumulation_steps", "max_length", "epochs", "prefetch_factor")
_NON_NEGATIVE_INTS = ("gpu_cache_size", "num_workers", "save_every", "monitor_interval", "empty_cache_every", "seed")


def resolve_train_config(cfg: dict | TrainConfig | None) -> TrainConfig:
    """The complete ``train:`` section: schema defaults, then preset, then the user's keys.

    A :class:`~selectflow.config.TrainConfig` (already resolved) is returned as it is.
    """
    if isinstance(cfg, TrainConfig):
        return cfg
    cfg = dict(cfg or {})
    out = train_defaults()
    unknown = sorted(set(cfg) - set(out))
    if unknown:
        raise SelectFlowError(f"unknown key(s) train.{', train.'.join(unknown)}; known keys: {', '.join(out)}")
    for section in NESTED:
        given = cfg.pop(section, None) or {}
        if not isinstance(given, dict):
            raise SelectFlowError(f"train.{section} must be a mapping, got {given!r}")
        bad = sorted(set(given) - set(out[section]))
        if bad:
            raise SelectFlowError(f"unknown key(s) train.{section}.{', '.join(bad)}; known: {', '.join(out[section])}")
        out[section].update({k: v for k, v in given.items() if v is not None})
    out.update({k: v for k, v in cfg.items() if v is not None})
    preset = out["preset"]
    if preset is not None and preset not in PRESETS:
        raise SelectFlowError(f"train.preset '{preset}' is unknown; use one of {', '.join(PRESETS)} (or null)")
    source = PRESETS[preset] if preset else BASE
    for key in PRESET_KEYS:
        if out[key] is None:
            out[key] = source[key]
    _check(out)
    return train_config_of(out)


def _check(c: dict) -> None:
    for key in _POSITIVE_INTS:
        if not isinstance(c[key], int) or isinstance(c[key], bool) or c[key] < 1:
            raise SelectFlowError(f"train.{key} must be an integer >= 1, got {c[key]!r}")
    for key in _NON_NEGATIVE_INTS:
        if not isinstance(c[key], int) or isinstance(c[key], bool) or c[key] < 0:
            raise SelectFlowError(f"train.{key} must be an integer >= 0, got {c[key]!r}")
    if c["max_steps"] is not None and (not isinstance(c["max_steps"], int) or c["max_steps"] < 1):
        raise SelectFlowError(f"train.max_steps must be null or an integer >= 1, got {c['max_steps']!r}")
    if c["precision"] not in PRECISIONS:
        raise SelectFlowError(f"train.precision '{c['precision']}' is unknown; use one of {', '.join(PRECISIONS)}")
    if not 0.0 <= float(c["warmup_ratio"]) < 1.0:
        raise SelectFlowError(f"train.warmup_ratio must be in [0, 1), got {c['warmup_ratio']!r}")
    if float(c["learning_rate"]) <= 0:
        raise SelectFlowError(f"train.learning_rate must be > 0, got {c['learning_rate']!r}")
    if c["lora"]["r"] < 1:
        raise SelectFlowError(f"train.lora.r must be >= 1, got {c['lora']['r']!r}")
