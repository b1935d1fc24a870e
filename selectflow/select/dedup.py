"""Duplicate samples in the pool: the same text, or the same routing; the best-quality copy stays."""

from __future__ import annotations

import hashlib
import json
import re

import numpy as np


def normalised_text(record_json: str) -> str | None:
    """Prompt and response of a normalised record, lower-cased, punctuation and runs of space removed.

    ``None`` for a record with neither (nothing to compare).
    """
    rec = json.loads(record_json)
    if "prompt" not in rec and "response" not in rec:
        return None
    return "\x00".join(" ".join(re.sub(r"[^\w\s]", " ", rec.get(key, "").lower()).split()) for key in ("prompt", "response"))


def _digest(data: bytes) -> bytes:
    return hashlib.blake2b(data, digest_size=16).digest()


def text_keys(records) -> np.ndarray:
    """Object [n]: a 16-byte digest of each record's :func:`normalised_text` (None where it has none).

    A streamed pool keeps these instead of the texts; two texts collide with probability
    about 2**-128 per pair, so equal digests mean equal texts for any pool that fits on disks.
    """
    out = np.empty(len(records), dtype=object)
    for i, r in enumerate(records):
        text = normalised_text(r)
        out[i] = None if text is None else _digest(text.encode())
    return out


def routing_keys(moe_probs: np.ndarray) -> np.ndarray:
    """Object [n]: a 16-byte digest of each sample's routing to 6 decimals (the routing duplicate key)."""
    routing = np.round(np.asarray(moe_probs, dtype=np.float64), 6)
    out = np.empty(len(routing), dtype=object)
    for i, row in enumerate(routing):
        out[i] = _digest(row.tobytes())
    return out


def drop_duplicates(shard, score: np.ndarray, keep: np.ndarray, reason: np.ndarray) -> int:
    """Drop kept samples that repeat another one; keep the best-quality copy; return how many were dropped.

    Two samples are duplicates when their normalised texts (:func:`normalised_text`) are equal
    or their routing (``moe_probs``, to 6 decimals) is identical. The copy with the highest
    score stays (ties: the smallest ``sample_id``); the others get ``keep=False`` and reason
    ``duplicate_of:<id of the copy kept>``. ``keep`` and ``reason`` are changed in place.
    """
    kept = np.flatnonzero(keep)
    kept = kept[np.lexsort((shard.sample_id[kept].astype(str), -score[kept]))]  # best copy first
    keys = []
    facts = shard.facts or {}
    if "text_key" in facts:  # a streamed pool: digests of the same keys (text_keys, routing_keys)
        keys.append(facts["text_key"][kept])
    elif shard.record is not None:
        keys.append([normalised_text(shard.record[i]) for i in kept])
    if "routing_key" in facts:
        keys.append(facts["routing_key"][kept])
    else:
        routing = np.round(np.asarray(shard.moe_probs[kept], dtype=np.float64), 6)
        keys.append([row.tobytes() for row in routing])
    n = 0
    for key in keys:
        first: dict = {}
        for i, k in zip(kept, key):
            if not keep[i] or k is None:
                continue
            if k in first:
                keep[i] = False
                reason[i] = f"duplicate_of:{shard.sample_id[first[k]]}"
                n += 1
            else:
                first[k] = i
    return n


def duplicates_of(order_ids: np.ndarray, reason: np.ndarray) -> np.ndarray:
    """How many samples each of ``order_ids`` stands for: itself plus the duplicates dropped in its favour."""
    at = {sid: i for i, sid in enumerate(order_ids)}
    weight = np.ones(len(order_ids))
    for r in reason:
        if isinstance(r, str) and r.startswith("duplicate_of:") and r[13:] in at:
            weight[at[r[13:]]] += 1
    return weight
