"""Duplicate samples in the pool: the same text, nearly the same text, or the same routing; the
best-quality copy stays.

What a sample *says* is compared, not how its file wrote it: its user turns and its answer
(the last assistant turn), lower-cased, with punctuation replaced by a space and runs of space
collapsed (:func:`normalised_text`). System turns and the prompt template (``### User:``…) are
left out, so the same instruction and answer in an Alpaca file and in a messages file with a
system turn are one sample; ``selection.dedup_system_turns: true`` counts system turns too.

* exact: equal normalised texts (a 16-byte digest each, :func:`text_keys`), or routing equal
  to 6 decimals (:func:`routing_keys`);
* near: MinHash (datasketch, :data:`NUM_PERM` permutations) of the text's word
  :data:`SHINGLE_WORDS`-grams, candidate pairs from LSH bands (:func:`lsh_shape`), a pair
  merged when the estimated Jaccard similarity of their shingle sets is at least
  ``selection.near_duplicate_threshold`` (:func:`near_keys`, :func:`drop_near_duplicates`).

A streamed pool keeps only the keys, per sample: two 16-byte digests, the LSH band keys
(8 bytes a band) and the signature cut to 16 bits a permutation (256 bytes).
"""

from __future__ import annotations

import hashlib
import json
import re

import numpy as np

from selectflow.data.records import detect_format

_PUNCTUATION = re.compile(r"[^\w\s]")
_TEMPLATE = re.compile(r"### (System|User|Assistant):\n")
_NUMBER = re.compile(r"\b\d+\b")  # a number standing alone (not the digits of a word like "utf8")
NUM_PERM = 128  # MinHash permutations: the estimated Jaccard's standard error is at most 0.044
SHINGLE_WORDS = 3  # words per shingle (bench/bench_near_dedup.py measures 2, 3 and 5)
MINHASH_SEED = 1


def _turns(rec: dict) -> list[tuple[str, str]]:
    """(role, text) of a normalised record's turns up to its answer: from the original record when it
    is in a known format, else parsed back from the prompt template."""
    original = rec.get("record")
    if isinstance(original, dict) and original:
        try:
            fmt = detect_format(original)
        except ValueError:
            fmt = None
        if fmt == "alpaca":
            user = "\n\n".join(str(original.get(k) or "") for k in ("instruction", "input") if original.get(k))
            return [("user", user), ("answer", str(original.get("output") or ""))]
        if fmt is not None:
            items, role_key, text_key = ((original["conversations"], "from", "value") if fmt == "sharegpt"
                                         else (original["messages"], "role", "content"))
            return _dialogue_turns(items, role_key, text_key)
    parts = _TEMPLATE.split(rec.get("prompt", ""))
    turns = [(role.lower(), text) for role, text in zip(parts[1::2], parts[2::2])]
    return turns + [("answer", rec.get("response", ""))]


def _dialogue_turns(items, role_key: str, text_key: str) -> list[tuple[str, str]]:
    turns = []
    for item in items if isinstance(items, list) else []:
        if not isinstance(item, dict):
            continue
        role = {"human": "user", "gpt": "assistant"}.get(str(item.get(role_key)).lower(), str(item.get(role_key)).lower())
        text = item.get(text_key)
        if isinstance(text, list):  # OpenAI content parts
            text = "\n".join(str(p.get("text", "")) for p in text if isinstance(p, dict))
        turns.append((role, text if isinstance(text, str) else ""))
    last = max((i for i, (r, _) in enumerate(turns) if r == "assistant"), default=None)
    if last is None:
        return turns
    return turns[:last] + [("answer", turns[last][1])]


def said(record: str | dict, system_turns: bool = False) -> list[str] | None:
    """What a normalised record (JSON or parsed) says: its user turns (and system turns with
    ``system_turns``), then its answer; None for a record with neither prompt nor response."""
    rec = json.loads(record) if isinstance(record, str) else record
    if "prompt" not in rec and "response" not in rec and not rec.get("record"):
        return None
    wanted = ("user", "system", "answer") if system_turns else ("user", "answer")
    return [text for role, text in _turns(rec) if role in wanted]


def normalised_text(record: str | dict, system_turns: bool = False) -> str | None:
    """:func:`said`, lower-cased, punctuation replaced by a space, runs of space collapsed; turns
    joined by NUL. ``None`` for a record with nothing to compare."""
    parts = said(record, system_turns)
    if parts is None:
        return None
    return "\x00".join(" ".join(_PUNCTUATION.sub(" ", part.lower()).split()) for part in parts)


def _digest(data: bytes) -> bytes:
    return hashlib.blake2b(data, digest_size=16).digest()


def text_keys(records, system_turns: bool = False) -> np.ndarray:
    """``S16`` [n]: a 16-byte digest of each record's :func:`normalised_text` (``b""`` where it has none).
    ``records``: JSON strings or parsed dicts.

    A streamed pool keeps these instead of the texts, 16 bytes a sample and no Python object
    each; two texts collide with probability about 2**-128 per pair, so equal digests mean
    equal texts for any pool that fits on disks. (NumPy drops an ``S`` value's trailing zero
    bytes, which keeps distinct digests distinct.)
    """
    out = np.zeros(len(records), dtype="S16")
    for i, r in enumerate(records):
        text = normalised_text(r, system_turns)
        if text is not None:
            out[i] = _digest(text.encode())
    return out


# (false positive, false negative) weights of the LSH shape: a candidate pair is checked against
# the signature estimate anyway, so a false positive costs one comparison and a false negative a
# missed duplicate; equal weights found under half of the pairs at the threshold (tests/test_dedup.py)
LSH_WEIGHTS = (0.05, 0.95)


def lsh_shape(threshold: float) -> tuple[int, int]:
    """(bands, rows per band) of the LSH for ``threshold`` over :data:`NUM_PERM` permutations: datasketch's
    choice for :data:`LSH_WEIGHTS` (a pair at the threshold shares a band with probability over 0.9)."""
    from datasketch import MinHashLSH

    lsh = MinHashLSH(threshold=threshold, num_perm=NUM_PERM, weights=LSH_WEIGHTS)
    return lsh.b, lsh.r


def shingles(text: str) -> set[bytes]:
    """The word :data:`SHINGLE_WORDS`-grams of ``text`` (words: :func:`selectflow.select.quality.words`,
    across turns); a text with fewer words is one shingle; none without a word."""
    from selectflow.select.quality import words

    found = words(text)
    n = min(SHINGLE_WORDS, len(found))
    return {" ".join(found[i:i + n]).encode() for i in range(len(found) - n + 1)} if found else set()


def signatures(texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """``(uint32 [n, NUM_PERM] MinHash signatures, bool [n] has a word)`` of ``texts`` (datasketch, seeded)."""
    from datasketch import MinHash

    sig = np.zeros((len(texts), NUM_PERM), dtype=np.uint32)
    ok = np.zeros(len(texts), dtype=bool)
    for i, text in enumerate(texts):
        grams = shingles(text)
        if grams:
            m = MinHash(num_perm=NUM_PERM, seed=MINHASH_SEED)
            m.update_batch(list(grams))
            sig[i], ok[i] = m.hashvalues, True
    return sig, ok


# odd 64-bit multipliers: a band key is the dot product of its rows with them, mod 2**64
_BAND_MULT = (np.random.default_rng(20261204).integers(0, 2**63, size=NUM_PERM, dtype=np.uint64) * np.uint64(2)
              + np.uint64(1))


def near_keys(records, threshold: float, system_turns: bool = False) -> dict[str, np.ndarray]:
    """Per record: ``near_band`` uint64 [n, bands] (LSH band keys, :func:`lsh_shape`), ``near_sig``
    uint16 [n, NUM_PERM] (each MinHash value's low 16 bits: two different values agree by chance
    with probability 2**-16, a bias of under 0.0001 on the estimate) and ``near_ok`` bool [n] (the
    text has a word)."""
    texts = [near_text(r, system_turns) for r in records]
    return {**keys_of_signatures(*signatures(texts), threshold), "near_numbers": number_keys(texts)}


def number_keys(texts: list[str]) -> np.ndarray:
    """uint64 [n]: a digest of the numbers each text holds, as a sorted multiset (0: none), so a reordered
    copy keeps its digest. Two texts whose numbers differ say different things (another sum, date, dose,
    version) however alike their words are, and are never near-duplicates: templated records
    (``Add 12 and 34.``) are the commonest false merge."""
    out = np.zeros(len(texts), dtype=np.uint64)
    for i, text in enumerate(texts):
        numbers = sorted(_NUMBER.findall(text))
        if numbers:
            out[i] = int.from_bytes(hashlib.blake2b(" ".join(numbers).encode(), digest_size=8).digest(), "little")
    return out


def near_text(record: str | dict, system_turns: bool = False) -> str:
    """The text a record's shingles come from: :func:`normalised_text`, turns joined by a space."""
    return (normalised_text(record, system_turns) or "").replace("\x00", " ")


def keys_of_signatures(sig: np.ndarray, ok: np.ndarray, threshold: float) -> dict[str, np.ndarray]:
    """:func:`near_keys` from MinHash signatures (uint32 [n, NUM_PERM]) and their ``ok`` flags."""
    b, r = lsh_shape(threshold)
    with np.errstate(over="ignore"):
        band = (sig[:, :b * r].astype(np.uint64).reshape(len(sig), b, r) * _BAND_MULT[:r]).sum(axis=2)
    band += np.arange(b, dtype=np.uint64)  # the same rows in two bands give two keys
    return {"near_band": band, "near_sig": (sig & 0xFFFF).astype(np.uint16), "near_ok": ok}


def drop_near_duplicates(order: np.ndarray, keys: dict[str, np.ndarray], threshold: float, sample_id: np.ndarray,
                         keep: np.ndarray, reason: np.ndarray, similarity: np.ndarray) -> int:
    """Among the still-kept samples ``order`` (best first), drop each one whose estimated Jaccard
    similarity to an earlier kept one that shares an LSH band with it is at least ``threshold``;
    ``reason`` names the most similar such copy (``duplicate_of:<id>``) and ``similarity`` gets the
    estimate. ``keys``: :func:`near_keys` of the whole pool. Return how many were dropped.

    Sorted, not hashed: per band, the kept samples sorted by key; only samples that share a
    bucket with another are visited, in order, each compared with the earlier kept members
    of its buckets.
    """
    rows = order[keep[order] & keys["near_ok"][order]]
    if len(rows) < 2:
        return 0
    band, sig = keys["near_band"][rows], keys["near_sig"]
    numbers = keys.get("near_numbers", np.zeros(len(keep), dtype=np.uint64))
    n, b = band.shape
    members = []  # per band: (positions sorted by key, start of each position's bucket, end of it)
    shared = np.zeros(n, dtype=bool)
    for j in range(b):  # int32 positions: 12 bytes a sample and band
        by_key = np.argsort(band[:, j], kind="stable").astype(np.int32)  # positions ascending within a bucket
        sorted_keys = band[by_key, j]
        start = np.searchsorted(sorted_keys, sorted_keys, side="left").astype(np.int32)
        end = np.searchsorted(sorted_keys, sorted_keys, side="right").astype(np.int32)
        where = np.empty(n, dtype=np.int32)
        where[by_key] = np.arange(n, dtype=np.int32)
        members.append((by_key, start[where], end[where]))
        shared |= (end - start > 1)[where]
    alive = np.ones(n, dtype=bool)
    dropped = 0
    for pos in np.flatnonzero(shared):
        earlier = np.unique(np.concatenate([by_key[s:e][by_key[s:e] < pos] for by_key, s_, e_ in members
                                            for s, e in [(s_[pos], e_[pos])]]))
        earlier = earlier[alive[earlier] & (numbers[rows[earlier]] == numbers[rows[pos]])]
        if not len(earlier):
            continue
        est = (sig[rows[earlier]] == sig[rows[pos]]).mean(axis=1)
        best = int(np.argmax(est))
        if est[best] >= threshold:
            alive[pos] = False
            at, of = rows[pos], rows[earlier[best]]
            keep[at], reason[at], similarity[at] = False, f"duplicate_of:{sample_id[of]}", float(est[best])
            dropped += 1
    return dropped


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


def drop_duplicates(shard, score: np.ndarray, keep: np.ndarray, reason: np.ndarray, similarity: np.ndarray | None = None,
                    *, near_threshold: float | None = None, system_turns: bool = False) -> int:
    """Drop kept samples that repeat another one; keep the best-quality copy; return how many were dropped.

    Two samples are duplicates when their normalised texts (:func:`normalised_text`) are equal
    or their routing (``moe_probs``, to 6 decimals) is identical, compared by their digests
    (:func:`text_keys`, :func:`routing_keys`) in both a streamed and a whole pool; then, with
    ``near_threshold``, when their texts' estimated Jaccard similarity reaches it
    (:func:`drop_near_duplicates`). The copy with the highest score stays (ties: the smallest
    ``sample_id``); the others get ``keep=False``, reason ``duplicate_of:<id of the copy kept>``
    and ``similarity`` 1 (exact) or the estimate (near). ``keep``, ``reason`` and ``similarity``
    are changed in place.
    """
    kept = np.flatnonzero(keep)
    kept = kept[np.lexsort((shard.sample_id[kept].astype(str), -score[kept]))]  # best copy first
    similarity = np.full(len(keep), np.nan) if similarity is None else similarity
    facts = shard.facts or {}  # a streamed pool carries the keys (pool_facts); else they are made here
    keys = []
    if "text_key" in facts:
        keys.append(facts["text_key"][kept])
    elif shard.record is not None:
        keys.append(text_keys(shard.record[kept], system_turns))
    keys.append(facts["routing_key"][kept] if "routing_key" in facts else routing_keys(shard.moe_probs[kept]))
    dropped = sum(_drop_repeats(kept, key, shard.sample_id, keep, reason, similarity) for key in keys)
    if near_threshold is not None and ("near_band" in facts or shard.record is not None):
        if "near_band" in facts:
            near = facts
        else:  # a whole pool: the keys of every record, so that positions are the pool's
            near = near_keys(shard.record, near_threshold, system_turns)
        dropped += drop_near_duplicates(kept, near, near_threshold, shard.sample_id, keep, reason, similarity)
    return dropped


def _drop_repeats(order: np.ndarray, key: np.ndarray, sample_id: np.ndarray, keep: np.ndarray,
                  reason: np.ndarray, similarity: np.ndarray) -> int:
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
    similarity[rows[repeat]] = 1.0
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
