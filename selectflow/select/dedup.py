"""Duplicate samples in the pool: the same text, or the same routing; the best-quality copy stays."""

from __future__ import annotations

import hashlib
import json
import re

import numpy as np


_PUNCTUATION = re.compile(r"[^\w\s]")


def normalised_text(record: str | dict) -> str | None:
    """Prompt and response of a normalised record (JSON or parsed), lower-cased, punctuation and
    runs of space removed.

    ``None`` for a record with neither (nothing to compare).
    """
    rec = json.loads(record) if isinstance(record, str) else record
    if "prompt" not in rec and "response" not in rec:
        return None
    return "\x00".join(" ".join(_PUNCTUATION.sub(" ", rec.get(key, "").lower()).split()) for key in ("prompt", "response"))


def _digest(data: bytes) -> bytes:
    return hashlib.blake2b(data, digest_size=16).digest()


def text_keys(records) -> np.ndarray:
    """``S16`` [n]: a 16-byte digest of each record's :func:`normalised_text` (``b""`` where it has none).
    ``records``: JSON strings or parsed dicts.

    A streamed pool keeps these instead of the texts, 16 bytes a sample and no Python object
    each; two texts collide with probability about 2**-128 per pair, so equal digests mean
    equal texts for any pool that fits on disks. (NumPy drops an ``S`` value's trailing zero
    bytes, which keeps distinct digests distinct.)
    """
    out = np.zeros(len(records), dtype="S16")
    for i, r in enumerate(records):
        text = normalised_text(r)
        if text is not None:
            out[i] = _digest(text.encode())
    return out


def routing_keys(moe_probs: np.ndarray) -> np.ndarray:
    """``S16`` [n]: a 16-byte digest of each sample's routing to 6 decimals (the routing duplicate key).

    The digest is of the integers ``rint(p · 1e6)`` (int32), which are equal exactly when the
    values rounded to 6 decimals are (``np.round`` is ``rint(p · 1e6) / 1e6``).
    """
    routing = np.rint(np.asarray(moe_probs, dtype=np.float64) * 1e6).astype(np.int32)
    out = np.zeros(len(routing), dtype="S16")
    for i, row in enumerate(routing):
        out[i] = _digest(row.tobytes())
    return out


def drop_duplicates(shard, score: np.ndarray, keep: np.ndarray, reason: np.ndarray) -> int:
    """Drop kept samples that repeat another one; keep the best-quality copy; return how many were dropped.

    Two samples are duplicates when their normalised texts (:func:`normalised_text`) are equal
    or their routing (``moe_probs``, to 6 decimals) is identical, compared by their digests
    (:func:`text_keys`, :func:`routing_keys`) in both a streamed and a whole pool. The copy with the highest
    score stays (ties: the smallest ``sample_id``); the others get ``keep=False`` and reason
    ``duplicate_of:<id of the copy kept>``. ``keep`` and ``reason`` are changed in place.
    """
    kept = np.flatnonzero(keep)
    kept = kept[np.lexsort((shard.sample_id[kept].astype(str), -score[kept]))]  # best copy first
    facts = shard.facts or {}  # a streamed pool carries the keys (pool_facts); else they are made here
    keys = []
    if "text_key" in facts:
        keys.append(facts["text_key"][kept])
    elif shard.record is not None:
        keys.append(text_keys(shard.record[kept]))
    keys.append(facts["routing_key"][kept] if "routing_key" in facts else routing_keys(shard.moe_probs[kept]))
    return sum(_drop_repeats(kept, key, shard.sample_id, keep, reason) for key in keys)


def _drop_repeats(order: np.ndarray, key: np.ndarray, sample_id: np.ndarray, keep: np.ndarray,
                  reason: np.ndarray) -> int:
    """Among the still-kept samples ``order`` (best first) with a key (``S16``, ``b""``: none), drop
    every one whose ``key`` an earlier one has; return how many.

    Sorted, not hashed: no dict of the pool's keys (a few hundred bytes a sample at 2M samples).
    """
    live = keep[order] & (key != b"")
    rows, key = order[live], key[live]
    if not len(rows):
        return 0
    _, first, inverse = np.unique(key, return_index=True, return_inverse=True)  # first: earliest position
    best = first[np.ravel(inverse)]
    repeat = np.flatnonzero(best != np.arange(len(rows)))
    keep[rows[repeat]] = False
    for at, of in zip(rows[repeat], rows[best[repeat]]):
        reason[at] = f"duplicate_of:{sample_id[of]}"
    return len(repeat)


def duplicates_of(order_ids: np.ndarray, reason: np.ndarray) -> np.ndarray:
    """How many samples each of ``order_ids`` stands for: itself plus the duplicates dropped in its favour."""
    at = {sid: i for i, sid in enumerate(order_ids)}
    weight = np.ones(len(order_ids))
    for r in reason:
        if isinstance(r, str) and r.startswith("duplicate_of:") and r[13:] in at:
            weight[at[r[13:]]] += 1
    return weight
