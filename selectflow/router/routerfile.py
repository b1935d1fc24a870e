"""HDF5 layout of one router-data shard (``results/{run}/router_data/{dataset}/{shard}.h5``).

Datasets (``n`` samples, ``L`` MoE layers, ``E`` experts):

=====================  ============  ==========  =======================================
name                   shape         dtype       meaning
=====================  ============  ==========  =======================================
``sample_id``          [n]           utf-8 str   stable id, join key for everything later
``moe_probs``          [n, L, E]     float32     routing distribution (the model's score,
                                                 see selectflow.router.families), averaged over
                                                 the sample's valid tokens
``quality_logits``     [n, L, 2]     float32     Select-MoE quality-gate logits averaged
                                                 over valid tokens (only if the model has
                                                 quality gates)
``nll_response``       [n]           float32     mean NLL of response tokens given prompt
``nll_response_alone`` [n]           float32     mean NLL of response tokens without the
                                                 prompt (only when IFD is enabled)
``nll_eos``            [n]           float32     NLL of the end-of-sequence token right after
                                                 the response (NaN when cut by max_length);
                                                 high for text that stops mid-way
``n_tokens``           [n]           int32       valid tokens of prompt + response
``n_response_tokens``  [n]           int32       response tokens scored (0: NLLs are NaN)
``record``             [n]           utf-8 str   the normalised record as JSON (so a folder
                                                 of shards is enough to write a selection)
``hidden``             [n, H]        float16     the model's last hidden state (after its
                                                 final norm) averaged over the sample's valid
                                                 tokens (only with router_dump.hidden_states;
                                                 float32 where a value exceeds float16's range)
=====================  ============  ==========  =======================================

``hidden`` is float16 because it is read for cosine distances only: float16 rounds each value
by at most 2**-11 of itself, which moves the cosine distance of two vectors by ~1e-7, and it
halves the bytes (H·2 a sample: 8 KiB for H = 4096). Readers return it as float32, and
tolerate shards without it (``RouterShard.hidden`` None; :func:`read_hidden` raises).

Attributes: ``layout_version``, ``complete`` (set last, inside the temp file, before the
rename), ``model_path``, ``config_digest``, ``dtype``, ``n_layers``, ``n_experts``, ``hidden_size``
(H, 0 without ``hidden``),
``router_capture`` (where the logits came from and the score used) and ``batch_size``
(the batch the values were computed at; 1 for batch-dependent families).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np

from selectflow.runtime.errors import CorruptFileError, SelectFlowError
from selectflow.runtime.fsutil import atomic_path, h5_rows, open_checked_h5

LAYOUT_VERSION = 1
REBUILD_HINT = (
    "rule router_dump rebuilds it: delete the file and its hard link of the same name under "
    "results/{run}/router_store/, then rerun snakemake"
)


@dataclass
class RouterShard:
    """What one shard file holds (or several, stacked by :func:`concat_shards`), rows aligned by ``sample_id``.

    The selection works on :class:`selectflow.select.pool.Pool`, which keeps of each shard only
    what it needs later.
    """

    sample_id: np.ndarray  # [n] object (str)
    moe_probs: np.ndarray  # [n, L, E] float32
    nll_response: np.ndarray  # [n] float32
    n_tokens: np.ndarray  # [n] int32
    n_response_tokens: np.ndarray  # [n] int32
    quality_logits: np.ndarray | None = None  # [n, L, 2] float32
    nll_response_alone: np.ndarray | None = None  # [n] float32
    nll_eos: np.ndarray | None = None  # [n] float32
    record: np.ndarray | None = None  # [n] object (JSON str of the normalised record)
    hidden: np.ndarray | None = None  # [n, H] float32 (mean-pooled last hidden state)
    attrs: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.sample_id)


_OPTIONAL = ("quality_logits", "nll_response_alone", "nll_eos")
_PER_SAMPLE = ("nll_response", "n_tokens", "n_response_tokens", "nll_response_alone", "nll_eos", "record")


def write_router_shard(path: str | os.PathLike, shard: RouterShard) -> None:
    """Write ``shard`` atomically; the file carries ``complete=True`` only when whole."""
    n = len(shard)
    with atomic_path(path, suffix=".h5") as tmp:
        with h5py.File(tmp, "w") as f:
            f.create_dataset("sample_id", data=np.asarray(shard.sample_id, dtype=object), dtype=h5py.string_dtype())
            f.create_dataset("moe_probs", data=np.asarray(shard.moe_probs, dtype=np.float32))
            f.create_dataset("nll_response", data=np.asarray(shard.nll_response, dtype=np.float32))
            f.create_dataset("n_tokens", data=np.asarray(shard.n_tokens, dtype=np.int32))
            f.create_dataset("n_response_tokens", data=np.asarray(shard.n_response_tokens, dtype=np.int32))
            if shard.record is not None:
                f.create_dataset("record", data=np.asarray(shard.record, dtype=object), dtype=h5py.string_dtype())
            for name in _OPTIONAL:
                value = getattr(shard, name)
                if value is not None:
                    f.create_dataset(name, data=np.asarray(value, dtype=np.float32))
            if shard.hidden is not None:
                f.create_dataset("hidden", data=_half_if_it_fits(shard.hidden))
            for key, value in shard.attrs.items():
                f.attrs[key] = value
            f.attrs["hidden_size"] = 0 if shard.hidden is None else shard.hidden.shape[1]
            f.attrs["layout_version"] = LAYOUT_VERSION
            f.attrs["n_samples"] = n
            f.attrs["n_layers"] = shard.moe_probs.shape[1]
            f.attrs["n_experts"] = shard.moe_probs.shape[2]
            f.attrs["complete"] = True


def _half_if_it_fits(values: np.ndarray) -> np.ndarray:
    """``values`` as float16, or float32 when one of them is beyond float16's range."""
    values = np.asarray(values, dtype=np.float32)
    return values.astype(np.float16) if np.abs(values).max(initial=0.0) <= np.finfo(np.float16).max else values


def read_router_shard(path: str | os.PathLike) -> RouterShard:
    """Read and validate one shard; raise :class:`CorruptFileError` naming the file if unfit."""
    path = Path(path)
    with open_checked_h5(path, "router data", LAYOUT_VERSION, REBUILD_HINT) as f:
        try:
            data = {name: f[name][()] for name in f.keys()}
        except (OSError, KeyError) as exc:
            raise CorruptFileError(f"{path}: cannot read its datasets ({exc}); {REBUILD_HINT}") from None
        attrs = {k: (v.item() if hasattr(v, "item") else v) for k, v in f.attrs.items()}
    n = attrs.get("n_samples")
    missing = {"sample_id", "moe_probs", "nll_response", "n_tokens", "n_response_tokens"} - data.keys()
    if missing:
        raise CorruptFileError(f"{path}: datasets {sorted(missing)} are missing; {REBUILD_HINT}")
    probs = data["moe_probs"]
    if probs.ndim != 3 or probs.shape[0] != n:
        raise CorruptFileError(f"{path}: moe_probs has shape {probs.shape}, expected [{n}, L, E]; {REBUILD_HINT}")
    for name in ("sample_id", *_PER_SAMPLE):
        if name in data and data[name].shape != (n,):
            raise CorruptFileError(f"{path}: {name} has shape {data[name].shape}, expected ({n},); {REBUILD_HINT}")
    if "quality_logits" in data and data["quality_logits"].shape[:2] != probs.shape[:2]:
        raise CorruptFileError(
            f"{path}: quality_logits shape {data['quality_logits'].shape} does not match moe_probs; {REBUILD_HINT}"
        )
    if "hidden" in data and (data["hidden"].ndim != 2 or data["hidden"].shape[0] != n):
        raise CorruptFileError(f"{path}: hidden has shape {data['hidden'].shape}, expected [{n}, H]; {REBUILD_HINT}")
    if not np.isfinite(probs).all():
        bad = int(np.argwhere(~np.isfinite(probs).reshape(n, -1).all(axis=1))[0, 0])
        raise SelectFlowError(
            f"{path}: moe_probs has NaN/inf (first at sample {_strings(data['sample_id'][bad : bad + 1])[0]!r}); "
            "the model produced "
            f"non-finite routing (try dtype float32); {REBUILD_HINT}"
        )
    sample_id = _strings(data["sample_id"])
    return RouterShard(
        sample_id=sample_id,
        moe_probs=probs.astype(np.float32, copy=False),
        nll_response=data["nll_response"],
        n_tokens=data["n_tokens"],
        n_response_tokens=data["n_response_tokens"],
        quality_logits=data.get("quality_logits"),
        nll_response_alone=data.get("nll_response_alone"),
        nll_eos=data.get("nll_eos"),
        record=_strings(data["record"]) if "record" in data else None,
        hidden=data["hidden"].astype(np.float32) if "hidden" in data else None,
        attrs=attrs,
    )


def shard_header(path: str | os.PathLike) -> tuple[dict, np.ndarray]:
    """The attributes and sample ids of a complete shard (no arrays read); CorruptFileError if unfit."""
    with open_checked_h5(path, "router data", LAYOUT_VERSION, REBUILD_HINT) as f:
        attrs = {k: (v.item() if hasattr(v, "item") else v) for k, v in f.attrs.items()}
        try:
            ids = _strings(f["sample_id"][()])
        except (OSError, KeyError) as exc:
            raise CorruptFileError(f"{path} is not a readable router shard ({exc}); {REBUILD_HINT}") from None
    return attrs, ids


def _strings(values: np.ndarray) -> np.ndarray:
    return np.array([v.decode() if isinstance(v, bytes) else v for v in values], dtype=object)


def _check_same_layers(p0, probs0: np.ndarray, p, probs: np.ndarray) -> None:
    if probs.shape[1:] != probs0.shape[1:]:
        raise SelectFlowError(
            f"router shards disagree on [L, E]: {p0} has {list(probs0.shape[1:])}, {p} has "
            f"{list(probs.shape[1:])}; they come from different models — rerun router_dump with one model"
        )


def check_unique_ids(sample_id: np.ndarray, shard_of: np.ndarray, paths: list) -> None:
    """SelectFlowError naming the shards (``paths[shard_of[i]]``) of the first ``sample_id`` found twice."""
    uniq, counts = np.unique(sample_id, return_counts=True)
    if (counts > 1).any():
        dup = uniq[counts > 1][0]
        where = [str(paths[i]) for i in np.unique(shard_of[sample_id == dup])]
        raise SelectFlowError(
            f"duplicate sample_id {dup!r} in {where}; give records unique 'id's across datasets "
            "(or drop the 'id' field to use dataset:line ids)"
        )


def scan_shards(paths: list[str | os.PathLike]) -> Iterator[tuple[Path, RouterShard]]:
    """``(path, shard)`` of each of ``paths`` in turn, read and validated whole (:func:`read_router_shard`).

    One shard is read at a time, when the caller asks for the next, so a caller that keeps only
    part of each holds one shard. L and E must agree across the shards; the sample ids'
    uniqueness (:func:`check_unique_ids`) needs all of them, so the caller checks it.
    """
    if not paths:
        raise SelectFlowError("no router-data shards given; run the router_dump rule first")
    first = None
    for p in map(Path, paths):
        shard = read_router_shard(p)
        if first is None:
            first = (p, shard.moe_probs[:0].copy())
        _check_same_layers(first[0], first[1], p, shard.moe_probs)
        yield p, shard


def concat_shards(paths: list[str | os.PathLike]) -> RouterShard:
    """Read shards and stack them; L and E must agree, sample ids must be unique.

    Holds every shard at once; :func:`scan_shards` gives the same shards one at a time.
    """
    shards = list(scan_shards(paths))
    s0 = shards[0][1]

    def stack(name):
        values = [getattr(s, name) for _, s in shards]
        if any(v is None for v in values):
            return None
        return np.concatenate(values)

    out = RouterShard(
        sample_id=np.concatenate([s.sample_id for _, s in shards]),
        moe_probs=np.concatenate([s.moe_probs for _, s in shards]),
        nll_response=stack("nll_response"),
        n_tokens=stack("n_tokens"),
        n_response_tokens=stack("n_response_tokens"),
        quality_logits=stack("quality_logits"),
        nll_response_alone=stack("nll_response_alone"),
        nll_eos=stack("nll_eos"),
        record=stack("record"),
        hidden=stack("hidden"),
        attrs=dict(s0.attrs),
    )
    shard_of = np.repeat(np.arange(len(shards)), [len(s) for _, s in shards])
    check_unique_ids(out.sample_id, shard_of, [p for p, _ in shards])
    return out


def _read_array(path: str | os.PathLike, name: str, rows: np.ndarray | None, absent: str | None = None) -> np.ndarray:
    """Dataset ``name`` of a complete shard as float32 (only ``rows``, in their order, if given).

    ``absent``: the SelectFlowError message (after the path) when an optional ``name`` is not there.
    """
    with open_checked_h5(path, "router data", LAYOUT_VERSION, REBUILD_HINT) as f:
        if absent is not None and name not in f:
            raise SelectFlowError(f"router shard {path} {absent}")
        try:
            values = f[name][()]
        except (OSError, KeyError) as exc:
            raise CorruptFileError(f"{path}: cannot read {name} ({exc}); {REBUILD_HINT}") from None
    return (values if rows is None else values[rows]).astype(np.float32, copy=False)


def read_moe_probs(path: str | os.PathLike, rows: np.ndarray | None = None) -> np.ndarray:
    """``moe_probs`` [n or len(rows), L, E] float32 of a complete shard (only ``rows``, in their order, if given)."""
    return _read_array(path, "moe_probs", rows)


NO_HIDDEN = (
    "has no 'hidden' dataset (the samples' mean-pooled last hidden states), which selection.features: "
    "hidden reads; set router_dump.hidden_states: true and rerun snakemake (the router dump runs again, "
    "nothing before it), or set selection.features: routing"
)


def read_hidden(path: str | os.PathLike, rows: np.ndarray | None = None) -> np.ndarray:
    """``hidden`` [n or len(rows), H] float32 of a complete shard; SelectFlowError when it was dumped without."""
    return _read_array(path, "hidden", rows, absent=NO_HIDDEN)


def read_records(path: str | os.PathLike, rows: np.ndarray) -> np.ndarray:
    """The ``record`` strings [len(rows)] of rows ``rows`` of a complete shard; only those rows are read."""
    with open_checked_h5(path, "router data", LAYOUT_VERSION, REBUILD_HINT) as f:
        if "record" not in f:
            raise SelectFlowError(
                f"{path} has no 'record' dataset, so the selected records cannot be written; rerun router_dump"
            )
        try:
            return _strings(h5_rows(f["record"], rows))
        except (OSError, KeyError) as exc:
            raise CorruptFileError(f"{path}: cannot read its records ({exc}); {REBUILD_HINT}") from None
