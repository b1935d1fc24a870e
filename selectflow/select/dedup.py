"""Duplicate samples in the pool: the same text, nearly the same text, or the same routing; the
best-quality copy stays.

What a sample *says* is compared, not how its file wrote it: its user turns and its answer
(the last assistant turn), lower-cased, with punctuation replaced by a space and runs of space
collapsed (:func:`normalised_text`). System turns and the prompt template (``### User:``…) are
left out, so the same instruction and answer in an Alpaca file and in a messages file with a
system turn are one sample; ``selection.dedup_system_turns: true`` counts system turns too.

* exact: equal normalised texts (a 16-byte digest each, :func:`text_keys`), or routing equal
  to 6 decimals (:func:`routing_keys`);
* near: MinHash (datasketch, :data:`~selectflow.select.minhash.NUM_PERM` permutations) of the text's
  word :data:`~selectflow.select.minhash.SHINGLE_WORDS`-grams, candidate pairs from LSH bands
  (:func:`~selectflow.select.minhash.lsh_shape`; the signature maths: :mod:`selectflow.select.minhash`), a pair
  merged when the Jaccard similarity of their shingle sets, computed exactly, is at least
  ``selection.near_duplicate_threshold``, their answers' at least :data:`ANSWER_MIN` and their
  numbers are the same (:func:`near_keys`, :func:`drop_near_duplicates`);
* shared answer, last (``selection.shared_answer_min_words``, default 4, and
  ``shared_answer_max_samples``, default 2): the same answer of at least that many words under other
  user turns, where it stands under at most that many kept samples (:func:`answer_keys`): two
  questions rarely share one long answer (an answer swapped in from another record), while an answer
  under many questions is more likely a label; only the best-quality sample keeps it. Punctuation
  stays in this key (``Same as a ** b`` and ``a * b`` differ).

The pool (:class:`selectflow.select.pool.Pool`) keeps only keys, per sample: two 16-byte
digests (three with the shared-answer pass), the LSH band keys (4 bytes a band: 96 bytes at the
default threshold 0.6), the signature's first :data:`~selectflow.select.minhash.PREFILTER_PERM` values cut to 8 bits
(32 bytes), a digest of the numbers (8 bytes) and a flag; the rest of the signature is dropped
with each shard. The near-duplicate pass reads back the records of the samples in a candidate
pair whose estimate is near the threshold (and only those) for the exact check.
"""

from __future__ import annotations

import hashlib
import json
import re

import numpy as np

from selectflow.data.records import detect_format
from selectflow.select.minhash import (
    PREFILTER_MARGIN,
    estimate,
    jaccard,
    keys_of_signatures,
    shingle_hashes,
    signatures,
)
from selectflow.select.quality import words

_PUNCTUATION = re.compile(r"[^\w\s]")
_TEMPLATE = re.compile(r"### (System|User|Assistant):\n")
_NUMBER = re.compile(r"\b\d+\b")  # a number standing alone (not the digits of a word like "utf8")
# Two samples are copies when they ask and answer alike: the same question with the answer cut
# short, emptied or replaced by one repeated word is another (junk) sample, however much of the
# whole text it shares. Such answers overlap by under 0.2; of the 374 planted docstring copies at
# Jaccard 0.6 or more in bench/bench_near_dedup.py, 2 overlap by under 0.3 (0.27, 0.29)
ANSWER_MIN = 0.3


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
            items, role_key, text_key = (
                (original["conversations"], "from", "value")
                if fmt == "sharegpt"
                else (original["messages"], "role", "content")
            )
            return _dialogue_turns(items, role_key, text_key)
    parts = _TEMPLATE.split(rec.get("prompt", ""))
    turns = [(role.lower(), text) for role, text in zip(parts[1::2], parts[2::2])]
    return turns + [("answer", rec.get("response", ""))]


def _dialogue_turns(items, role_key: str, text_key: str) -> list[tuple[str, str]]:
    turns = []
    for item in items if isinstance(items, list) else []:
        if not isinstance(item, dict):
            continue
        role = {"human": "user", "gpt": "assistant"}.get(
            str(item.get(role_key)).lower(), str(item.get(role_key)).lower()
        )
        text = item.get(text_key)
        if isinstance(text, list):  # OpenAI content parts
            text = "\n".join(str(p.get("text", "")) for p in text if isinstance(p, dict))
        turns.append((role, text if isinstance(text, str) else ""))
    last = max((i for i, (r, _) in enumerate(turns) if r == "assistant"), default=None)
    if last is None:
        return turns
    return turns[:last] + [("answer", turns[last][1])]


def said(record: str | dict, system_turns: bool) -> list[str] | None:
    """What a normalised record (JSON or parsed) says: its user turns (and system turns with
    ``system_turns``), then its answer; None for a record with neither prompt nor response."""
    rec = json.loads(record) if isinstance(record, str) else record
    if "prompt" not in rec and "response" not in rec and not rec.get("record"):
        return None
    wanted = ("user", "system", "answer") if system_turns else ("user", "answer")
    return [text for role, text in _turns(rec) if role in wanted]


def normalised_text(record: str | dict, system_turns: bool) -> str | None:
    """:func:`said`, lower-cased, punctuation replaced by a space, runs of space collapsed; turns
    joined by NUL. ``None`` for a record with nothing to compare."""
    parts = said(record, system_turns)
    if parts is None:
        return None
    return "\x00".join(" ".join(_PUNCTUATION.sub(" ", part.lower()).split()) for part in parts)


def _digest(data: bytes) -> bytes:
    return hashlib.blake2b(data, digest_size=16).digest()


def text_keys(records, system_turns: bool) -> np.ndarray:
    """``S16`` [n]: a 16-byte digest of each record's :func:`normalised_text` (``b""`` where it has none).
    ``records``: JSON strings or parsed dicts.

    The pool keeps these instead of the texts, 16 bytes a sample and no Python object
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


def answer_keys(records, min_words: int) -> np.ndarray:
    """``S16`` [n]: a 16-byte digest of each record's answer (its last assistant turn), lower-cased with
    runs of space collapsed, when it has at least ``min_words`` words (:func:`~selectflow.select.quality.words`);
    ``b""`` otherwise (a short answer, a label or a number, may rightly answer many questions).
    ``records``: JSON strings or parsed dicts."""
    out = np.zeros(len(records), dtype="S16")
    for i, r in enumerate(records):
        rec = json.loads(r) if isinstance(r, str) else r
        answer = [text for role, text in _turns(rec) if role == "answer"]
        if answer and len(words(answer[-1])) >= min_words:
            out[i] = _digest(" ".join(answer[-1].lower().split()).encode())
    return out


def near_keys(records, threshold: float, system_turns: bool) -> dict[str, np.ndarray]:
    """Per record: ``near_band`` uint32 [n, bands] (LSH band keys, :func:`~selectflow.select.minhash.lsh_shape`;
    two keys agree by chance with probability 2**-32, a pair the exact check then turns away), ``near_sig`` uint8
    [n, PREFILTER_PERM] (the signature's first values, low 8 bits: :func:`estimate`), ``near_numbers``
    uint64 [n] (:func:`number_keys`) and ``near_ok`` bool [n] (the text and its answer have a word; a
    sample without is never a near-duplicate, only an exact one). The rest of the signature is not kept."""
    parts = [near_parts(r, system_turns) for r in records]
    return {**keys_of_signatures(*signatures(parts), threshold), "near_numbers": number_keys([t for t, _ in parts])}


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


def near_text(record: str | dict, system_turns: bool) -> str:
    """The text a record's shingles come from: :func:`normalised_text`, turns joined by a space."""
    return near_parts(record, system_turns)[0]


def near_parts(record: str | dict, system_turns: bool) -> tuple[str, str]:
    """(:func:`near_text`, its answer normalised alike; ``""`` for a record without an answer)."""
    rec = json.loads(record) if isinstance(record, str) else record
    text = normalised_text(rec, system_turns)
    if text is None:
        return "", ""
    has_answer = any(role == "answer" for role, _ in _turns(rec))
    return text.replace("\x00", " "), text.rsplit("\x00", 1)[-1] if has_answer else ""


def _shared_buckets(band: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(positions into ``rows``, bucket numbers 0, 1, …) of every (sample, band) whose bucket holds
    another of ``rows``, sorted by bucket then position. One band at a time: sorted, not hashed."""
    positions, buckets, first = [], [], 0
    for j in range(band.shape[1]):
        key = band[rows, j]
        by_key = np.argsort(key, kind="stable")
        key = key[by_key]
        bucket = np.cumsum(np.concatenate([[True], key[1:] != key[:-1]])) - 1
        shared = np.bincount(bucket)[bucket] > 1
        positions.append(by_key[shared].astype(np.int32))  # ascending within a bucket (stable sort)
        buckets.append(bucket[shared] + first)
        first += int(bucket[-1]) + 1
    bucket = np.concatenate(buckets)
    return np.concatenate(positions), np.cumsum(np.concatenate([[True], bucket[1:] != bucket[:-1]])) - 1


# records read back at a time for the exact check (a few MB of JSON)
READ_CHUNK = 4096


class _MemberSets:
    """:func:`shingle_hashes` of the texts and answers of some pool rows, read back :data:`READ_CHUNK`
    records at a time in pool order (shard by shard) and kept as one flat uint32
    array and its offsets a chunk: 4 bytes a shingle, no Python object a sample."""

    def __init__(self, rows: np.ndarray, records_of, system_turns: bool):
        self.by_row = np.argsort(rows, kind="stable")
        self.place = np.empty(len(rows), dtype=np.int64)
        self.place[self.by_row] = np.arange(len(rows))
        self.chunks = []  # per chunk: (texts, their offsets, answers, their offsets)
        for lo in range(0, len(rows), READ_CHUNK):
            sets = [[], []]
            for record in records_of(rows[self.by_row[lo : lo + READ_CHUNK]]):
                for out, part in zip(sets, near_parts(record, system_turns)):
                    out.append(shingle_hashes(part))
            self.chunks.append(
                tuple(x for values in sets for x in (np.concatenate(values), np.cumsum([0] + [len(v) for v in values])))
            )

    def __getitem__(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """(text, answer) hashes of the ``i``-th row."""
        c, at = divmod(int(self.place[i]), READ_CHUNK)
        texts, text_at, answers, answer_at = self.chunks[c]
        return texts[text_at[at] : text_at[at + 1]], answers[answer_at[at] : answer_at[at + 1]]


def drop_near_duplicates(
    order: np.ndarray,
    keys: dict[str, np.ndarray],
    threshold: float,
    sample_id: np.ndarray,
    keep: np.ndarray,
    reason: np.ndarray,
    similarity: np.ndarray,
    records_of,
    system_turns: bool,
) -> int:
    """Among the still-kept samples ``order`` (best first), drop each one that shares an LSH band
    with an earlier kept one whose numbers are the same, whose Jaccard similarity to it (of the
    texts' shingle sets, exact) is at least ``threshold`` and whose answers' at least
    :data:`ANSWER_MIN`; ``reason`` names the most similar such copy (``duplicate_of:<id>``) and
    ``similarity`` gets the Jaccard. ``keys``: :func:`near_keys` of the whole pool;
    ``records_of(rows)``: the records of pool rows (JSON strings or dicts), asked for the samples that
    share a bucket only. Return how many were dropped.

    Only samples that share a bucket with another are visited, each with the earlier members of its
    buckets whose signature estimate is within :data:`PREFILTER_MARGIN` of the threshold; only
    those pairs' records are read back, then the samples are checked in order against the earlier
    ones still kept. Memory: about 34 bytes a kept sample, one band at a time, 16 a (sample, band)
    whose bucket is shared, and the shingle hashes of the samples read back (4 bytes a shingle of
    the text and of the answer).
    """
    rows = order[keep[order] & keys["near_ok"][order]]
    if len(rows) < 2:
        return 0
    member, bucket = _shared_buckets(keys["near_band"], rows)
    if not len(member):
        return 0
    numbers, sig = keys["near_numbers"], keys["near_sig"]
    start = np.searchsorted(bucket, np.arange(bucket[-1] + 2))  # bucket i: member[start[i]:start[i + 1]]
    by_pos = np.argsort(member, kind="stable")
    visits = np.split(bucket[by_pos], np.flatnonzero(np.diff(member[by_pos])) + 1)
    candidates = {}  # position: its earlier bucket-mates with the same numbers and an estimate near enough
    for pos, its in zip(np.unique(member), visits):
        earlier = np.unique(np.concatenate([member[start[i] : start[i + 1]] for i in its]))
        earlier = earlier[earlier < pos]
        earlier = earlier[numbers[rows[earlier]] == numbers[rows[pos]]]
        earlier = earlier[estimate(sig[rows[earlier]], sig[rows[pos]]) >= threshold - PREFILTER_MARGIN]
        if len(earlier):
            candidates[int(pos)] = earlier
    if not candidates:
        return 0
    read = np.unique(np.concatenate([np.fromiter(candidates, dtype=np.int64), *candidates.values()]))
    sets = _MemberSets(rows[read], records_of, system_turns)
    alive = np.ones(len(rows), dtype=bool)
    dropped = 0
    for pos, earlier in candidates.items():
        at = rows[pos]
        best, best_sim = None, -1.0
        text, answer = sets[np.searchsorted(read, pos)]
        for q in earlier[alive[earlier]]:
            other_text, other_answer = sets[np.searchsorted(read, q)]
            sim = jaccard(text, other_text)
            if sim >= threshold and sim > best_sim and jaccard(answer, other_answer) >= ANSWER_MIN:
                best, best_sim = rows[q], sim
        if best is not None:
            alive[pos] = False
            keep[at], reason[at], similarity[at] = False, f"duplicate_of:{sample_id[best]}", best_sim
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


def drop_duplicates(
    pool,
    score: np.ndarray,
    keep: np.ndarray,
    reason: np.ndarray,
    similarity: np.ndarray | None = None,
    *,
    near_threshold: float | None = None,
    system_turns: bool,
    answer_max_samples: int | None = None,
) -> int:
    """Drop kept samples that repeat another one; keep the best-quality copy; return how many were dropped.

    ``pool``: a :class:`selectflow.select.pool.Pool`. Two samples are duplicates when their
    normalised texts (:func:`normalised_text`) are equal or their routing (``moe_probs``, to 6
    decimals) is identical, compared by their digests (``pool.text_key``, :func:`text_keys`, none
    without records; ``pool.routing_key``, :func:`routing_keys`); then, with ``near_threshold``
    and the pool's near keys (:func:`near_keys`, made at that threshold), when their texts'
    Jaccard similarity reaches it (:func:`drop_near_duplicates`, the records of the candidate
    pairs read back through ``pool.rows``). The copy with the highest score stays (ties: the
    smallest ``sample_id``); the others get ``keep=False``, reason ``duplicate_of:<id of the copy
    kept>`` and ``similarity`` 1 (exact) or the Jaccard (near). ``keep``, ``reason`` and
    ``similarity`` are changed in place; ``pool.near`` is emptied once used. Last, with the pool's
    answer keys (:func:`answer_keys`), a still-kept sample whose answer a better one has gets reason
    ``same_answer_as:<id>`` (similarity NaN: the samples differ, so it stands for no other in the strata),
    only where the answer stands under at most ``answer_max_samples`` still-kept samples (None: any number).
    """
    kept = np.flatnonzero(keep)
    kept = kept[np.lexsort((pool.sample_id[kept].astype(str), -score[kept]))]  # best copy first
    similarity = np.full(len(keep), np.nan) if similarity is None else similarity
    keys = [key[kept] for key in (pool.text_key, pool.routing_key) if key is not None]
    dropped = sum(_drop_repeats(kept, key, pool.sample_id, keep, reason, similarity) for key in keys)
    if near_threshold is not None and pool.near:
        dropped += drop_near_duplicates(
            kept, pool.near, near_threshold, pool.sample_id, keep, reason, similarity, pool.rows.records, system_turns
        )
        pool.near.clear()  # spent: gone before the features are read
    if pool.answer_key is not None:
        key = pool.answer_key[kept]
        if answer_max_samples is not None:  # an answer under many samples is a template or a label: not compared
            values, counts = np.unique(key[keep[kept] & (key != b"")], return_counts=True)
            key = np.where(np.isin(key, values[counts > answer_max_samples]), b"", key)
        dropped += _drop_repeats(kept, key, pool.sample_id, keep, reason, similarity, "same_answer_as", np.nan)
    return dropped


def _drop_repeats(
    order: np.ndarray,
    key: np.ndarray,
    sample_id: np.ndarray,
    keep: np.ndarray,
    reason: np.ndarray,
    similarity: np.ndarray,
    why: str = "duplicate_of",
    similar: float = 1.0,
) -> int:
    """Among the still-kept samples ``order`` (best first) with a key (``S16``, ``b""``: none), drop
    every one whose ``key`` an earlier one has (reason ``<why>:<id of that one>``, ``similarity`` ``similar``);
    return how many.

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
    similarity[rows[repeat]] = similar
    for at, of in zip(rows[repeat], rows[best[repeat]]):
        reason[at] = f"{why}:{sample_id[of]}"
    return len(repeat)


def duplicates_of(order_ids: np.ndarray, reason: np.ndarray) -> np.ndarray:
    """How many samples each of ``order_ids`` stands for: itself plus the duplicates dropped in its favour."""
    at = {sid: i for i, sid in enumerate(order_ids)}
    weight = np.ones(len(order_ids))
    for r in reason:
        if isinstance(r, str) and r.startswith("duplicate_of:") and r[13:] in at:
            weight[at[r[13:]]] += 1
    return weight
