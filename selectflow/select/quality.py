"""Per-sample quality scores from router data; higher is better for every method.

``assess(pool, method, field, cut, cut_z)`` takes a :class:`~selectflow.select.pool.Pool` of ``n``
samples (its arrays and record facts, :func:`record_facts`) and returns an :class:`Assessment`:
``score`` float64 [n], ``keep`` bool [n] (samples with ``keep=False`` never become candidates),
``reason`` [n] (why a sample was dropped, ``""`` when kept) and ``inputs`` (the raw per-sample
numbers the score is made of, written to ``quality.tsv``). ``quality_scores`` returns only ``(score, keep)``.

==============  ======================================================================
method          score (higher ranks higher) and what it drops
==============  ======================================================================
``combined``    ``log(1 / IFD) + log p(eos)`` = ``log(nll_response_alone / nll_response)
                - nll_eos``: how much the prompt lowers the response's loss, plus how
                sure the model is that the response ends where it ends (``nll_eos`` NaN,
                i.e. cut by ``max_length``: term 0, and ``unfinished`` not judged).
                Drops responses without a word (``no_response_tokens``; words are
                :func:`words`: ``\\w+`` runs, a Han or kana character each, never
                punctuation), ``nonfinite`` NLLs, ``ifd>=1`` (the prompt
                does not help: off-topic or boilerplate answers), ``repetitive``
                responses (under half of their word 3-grams distinct: degenerate loops)
                and ``unfinished`` ones (p(eos) after the response under half of
                the pool's median p(eos), i.e. ``nll_eos`` over the median of the
                finite ``nll_eos`` + log 2: the model expects more, as after truncated
                or rambling text; relative to the pool, so a model that ends answers
                with another token does not drop them all).
                Measured on the demo pools (bench/bench_selection_quality.py), it puts
                empty, truncated, repeated and off-topic records at the bottom, where
                ``ifd`` puts them at the top.
``gate``        Select-MoE quality gate: per layer ``softmax(quality_logits)[0]``
                (index 0 = "good"), averaged over layers; drops ``nonfinite``
``ifd``         Cherry's IFD = ``nll_response / nll_response_alone``, **higher** ranks
                higher (the paper's direction: the prompt is hard to follow); drops
                ``ifd>=1`` (the prompt does not help), ``no_response_tokens`` and
                ``nonfinite``. On a model that knows the pool this ranks junk first
                (measured): prefer ``combined``.
``perplexity``  ``-nll_response`` (lower loss ranks higher); drops ``no_response_tokens``
                (no response token, or no word)
                and ``nonfinite``
``field``       numeric field ``field`` of the original input record; drops nothing
``auto``        ``combined`` when the pool has ``nll_response_alone`` (``router_dump.ifd:
                true``, the default), else ``gate`` when it has ``quality_logits``, else
                ``perplexity``: the order measured on the demo (README, Selection), where
                the warmed-up gate selected 79 % good records and ``combined`` 99 %
==============  ======================================================================
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import math
import re
from array import array
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from dataclasses import field as dc_field

import numpy as np

from selectflow.runtime.errors import SelectFlowError
from selectflow.schema import schema_enum

log = logging.getLogger(__name__)

METHODS = schema_enum("selection", "quality_method")
CUTS = schema_enum("selection", "quality_cut")
# a dataset with fewer samples is judged by the whole pool's median and MAD (too few for its own)
MIN_GROUP = 50
# MAD x this = the standard deviation of a normal distribution; mean absolute deviation x
# sqrt(pi / 2) likewise, the fallback when over half of a group share one value (MAD 0)
MAD_TO_SIGMA = 1.4826
MEAN_AD_TO_SIGMA = math.sqrt(math.pi / 2)
# a response whose word 3-grams are less than half distinct is a degenerate loop
MIN_DISTINCT_TRIGRAMS = 0.5
# unfinished: the model gives the end of the response under half the probability it gives
# the end of the pool's median response
EOS_FACTOR = 2.0


@dataclass
class Assessment:
    score: np.ndarray  # [n] float64, higher is better
    keep: np.ndarray  # [n] bool
    reason: np.ndarray  # [n] object: why dropped ("" when kept)
    inputs: dict[str, np.ndarray] = dc_field(default_factory=dict)  # raw per-sample inputs of the score


def resolve_method(pool, method: str) -> str:
    """The method ``method`` stands for on ``pool`` (``auto`` resolved)."""
    if method not in METHODS:
        raise SelectFlowError(f"unknown quality method {method!r}; use one of {', '.join(METHODS)}")
    if method == "auto":  # the best available, as measured in bench/bench_selection_quality.py
        if pool.nll_response_alone is not None:
            return "combined"
        return "gate" if pool.gate_good is not None else "perplexity"
    return method


def quality_scores(pool, method: str, field: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Return ``(score float64 [n], keep bool [n])`` for ``pool`` under ``method``."""
    a = assess(pool, method, field)
    return a.score, a.keep


def assess(pool, method: str, field: str | None = None, cut: str = "fixed", cut_z: float | None = None) -> Assessment:
    """Score, keep flag, drop reason and raw inputs of every sample of ``pool`` under ``method``;
    ``cut`` ``pool`` drops robust-z outliers beyond ``cut_z`` (module docstring). ``field``: the
    record field of method ``field``, whose values the pool holds (``Pool.field_value``)."""
    method = resolve_method(pool, method)
    if cut not in CUTS:
        raise SelectFlowError(f"unknown quality cut {cut!r} (selection.quality_cut); use one of {', '.join(CUTS)}")
    if cut == "pool" and (cut_z is None or not cut_z > 0):
        raise SelectFlowError(f"quality cut 'pool' needs a positive selection.quality_cut_z, got {cut_z!r}")
    if method == "gate":
        score, keep = _gate(pool)
        reason = np.where(keep, "", "nonfinite").astype(object)
    elif method == "field":
        score, keep = _field(pool, field)
        reason = np.full(len(pool), "", dtype=object)
    else:
        score, keep, reason = _nll_based(pool, method)
    if cut == "pool" and method != "field":
        for name, z in pool_z(pool, reason == "").items():
            reason[(reason == "") & (z > cut_z)] = f"outlier:{name}"
    return Assessment(score, reason == "", reason, _inputs(pool))


def pool_signals(pool) -> dict[str, np.ndarray]:
    """The model's per-sample signals the ``pool`` cut judges, float64 [n], higher is worse:
    ``log_ifd`` (log nll_response / nll_response_alone; with ``nll_response_alone``), ``nll_eos``
    (with it; NaN, a cut response, is not judged) and ``nll_response``."""
    nll = np.asarray(pool.nll_response, dtype=np.float64)
    out = {}
    if pool.nll_response_alone is not None:
        with np.errstate(divide="ignore", invalid="ignore"):
            out["log_ifd"] = np.log(nll / np.asarray(pool.nll_response_alone, dtype=np.float64))
    if pool.nll_eos is not None:
        out["nll_eos"] = np.asarray(pool.nll_eos, dtype=np.float64)
    out["nll_response"] = nll
    return out


def pool_z(pool, judged: np.ndarray) -> dict[str, np.ndarray]:
    """:func:`robust_z` of each of :func:`pool_signals` per dataset, statistics over the ``judged`` samples."""
    return {name: robust_z(x, pool.dataset, judged) for name, x in pool_signals(pool).items()}


def robust_z(x: np.ndarray, groups: np.ndarray | None = None, judged: np.ndarray | None = None) -> np.ndarray:
    """``(x - median) / (1.4826 · MAD)`` per sample, float64 [n], the median and MAD of its group
    (``groups`` [n], one group when None) over the group's ``judged`` samples with finite ``x``.
    A group of under :data:`MIN_GROUP` such samples takes the statistics of all groups together;
    MAD 0 falls back to sqrt(pi/2) · mean absolute deviation; both 0 (all equal): z 0 at the
    median, ±inf elsewhere. Non-finite ``x`` gives NaN (not judged)."""
    x = np.asarray(x, dtype=np.float64)
    usable = np.isfinite(x) & (np.ones(len(x), dtype=bool) if judged is None else np.asarray(judged, dtype=bool))
    groups = np.zeros(len(x), dtype=np.int8) if groups is None else np.asarray(groups)
    z = np.full(len(x), np.nan)
    whole = _center_scale(x[usable])
    for g in np.unique(groups):
        members = groups == g
        own = usable & members
        center, scale = _center_scale(x[own]) if own.sum() >= MIN_GROUP else whole
        at = members & np.isfinite(x)
        with np.errstate(divide="ignore", invalid="ignore"):
            z[at] = np.where(x[at] == center, 0.0, (x[at] - center) / scale)
    return z


def _center_scale(x: np.ndarray) -> tuple[float, float]:
    """Median and robust standard deviation of ``x`` (NaN, NaN when empty)."""
    if not len(x):
        return math.nan, math.nan
    center = float(np.median(x))
    deviation = np.abs(x - center)
    scale = MAD_TO_SIGMA * float(np.median(deviation))
    return center, scale if scale > 0 else MEAN_AD_TO_SIGMA * float(deviation.mean())


def record_facts(records, field: str | None = None) -> dict[str, np.ndarray]:
    """What the methods read from the records, per sample: ``empty_response`` (bool: the response
    holds no word, :func:`words`; records without the key are not judged), ``distinct_3grams`` (float64) and, with
    ``field``,
    ``field_value`` (object: the record's value or None). ``records``: JSON strings (each
    parsed once) or the parsed dicts.

    The pool (:func:`selectflow.select.pool.scan_pool`) keeps these instead of the records.
    """
    parsed = [json.loads(r) if isinstance(r, str) else r for r in records]
    out = {
        "empty_response": np.array([not words(rec.get("response", "x")) for rec in parsed], dtype=bool),
        "distinct_3grams": distinct_ngram_share([rec.get("response", "") for rec in parsed], 3),
    }
    if field:
        out["field_value"] = np.array([rec.get("record", {}).get(field) for rec in parsed] + [None], dtype=object)[:-1]
    return out


def _inputs(pool) -> dict[str, np.ndarray]:
    out = {"nll_response": np.asarray(pool.nll_response, dtype=np.float64)}
    if pool.nll_response_alone is not None:
        out["nll_response_alone"] = np.asarray(pool.nll_response_alone, dtype=np.float64)
    if pool.nll_eos is not None:
        out["nll_eos"] = np.asarray(pool.nll_eos, dtype=np.float64)
    out["n_response_tokens"] = np.asarray(pool.n_response_tokens)
    if pool.gate_good is not None:
        out["gate_mean"] = _gate(pool)[0]
    if pool.distinct_3grams is not None:
        out["distinct_3grams"] = pool.distinct_3grams
    return out


# scripts written without spaces between words (Han, kana): each character counts as a word
_UNSPACED = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0002fa1f"
_WORD = re.compile(f"[{_UNSPACED}]|[^\\W{_UNSPACED}]+")


def words(text: str) -> list[str]:
    """The words of ``text``, lower-cased: runs of letters, digits and ``_`` (``\\w+``), each Han or
    kana character on its own; punctuation, symbols and spaces are no words."""
    return _WORD.findall(text.lower())


def distinct_ngram_share(texts: list[str], n: int = 3) -> np.ndarray:
    """Per text: distinct word n-grams / all word n-grams (:func:`words`; 1.0 when it has fewer than n words)."""
    out = np.ones(len(texts), dtype=np.float64)
    for i, text in enumerate(texts):
        found = words(text)
        n_grams = len(found) - n + 1
        if n_grams > 0:
            out[i] = len(set(zip(*(found[j:] for j in range(n))))) / n_grams
    return out


def prompt_coverage(batches: Callable[[], Iterable[tuple[np.ndarray, Sequence]]], n: int) -> np.ndarray:
    """Per sample, float64 [n]: the share of its prompt's words that its response uses too, each word
    weighed by its inverse document frequency over the ``n`` samples (``log(n / df)``, df = the samples
    whose prompt or response has the word; :func:`words`), so words every prompt has (role tags, "what")
    weigh nothing and a question's own terms weigh most. 1.0 where the prompt has no word of positive
    weight (nothing to judge). An answer that ignores its question (another question's answer, filler,
    another language) covers little of it.

    ``batches()`` yields ``(positions [b], records [b])`` covering the samples ``0 .. n-1`` once, each
    record a router shard's (its ``prompt`` and ``response``; a record without them is not judged), as a
    JSON string or a dict; it is called twice (the document frequencies, then the shares), so one batch of
    records is held at a time.
    """

    def word_sets(records):
        for rec in records:
            rec = json.loads(rec) if isinstance(rec, str) else rec
            yield set(words(rec.get("prompt", ""))), set(words(rec.get("response", "")))

    df: Counter = Counter()
    for _, records in batches():
        for prompt, response in word_sets(records):
            df.update(prompt | response)
    out = np.ones(n, dtype=np.float64)
    for positions, records in batches():
        for i, (prompt, response) in zip(positions, word_sets(records)):
            weight = {w: math.log(n / df[w]) for w in prompt}
            total = math.fsum(weight.values())  # exactly rounded: the same whatever order a set iterates in
            if total > 0:
                out[i] = math.fsum(weight[w] for w in prompt & response) / total
    return out


# a sentence ends at . ! or ? before white space, or at a line break
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+|\n+")
# a sentence in the responses to at least this many different prompts is boilerplate: one answer or a
# near-duplicate pair is 1 or 2 prompts (the shared-answer rule's bound, shared_answer_max_samples)
BOILERPLATE_MIN_PROMPTS = 3
# ... unless its prompts are more alike (mean pairwise Jaccard of their word sets) than this quantile of
# the likeness of random pairs of the samples' prompts: then it is a templated task's label ("Yes, it is
# even." under "Is 42 even?", "Is 17 even?", ...), not text that answers any question alike
BOILERPLATE_LIKENESS_QUANTILE = 0.95
# the prompts compared: a sentence's first this many (by digest, a pseudo-random sample of them) and,
# for the random pairs, every pair of the pool's first this many prompts
BOILERPLATE_SENTENCE_PROMPTS = 16
BOILERPLATE_BASELINE_PROMPTS = 256


def jaccard(a: set, b: set) -> float:
    """|a ∩ b| / |a ∪ b| (0.0 for two empty sets)."""
    union = len(a | b)
    return len(a & b) / union if union else 0.0


def mean_pairwise_jaccard(sets: Sequence[set]) -> float:
    """The mean :func:`jaccard` over the pairs of ``sets`` (at least two)."""
    return float(np.mean([jaccard(a, b) for a, b in itertools.combinations(sets, 2)]))


def boilerplate_share(batches: Callable[[], Iterable[tuple[np.ndarray, Sequence]]], n: int) -> np.ndarray:
    """Per sample, float64 [n]: the share of its response's words (:func:`words`) that stand in
    *boilerplate sentences*. A sentence (split at ``.``, ``!`` or ``?`` before white space and at line
    breaks; compared by its words, lower-cased) is boilerplate where the responses to at least
    :data:`BOILERPLATE_MIN_PROMPTS` different prompts of the ``n`` samples hold it and those prompts are
    unrelated: their mean pairwise likeness (Jaccard of their word sets, over a sample of
    :data:`BOILERPLATE_SENTENCE_PROMPTS` of them) at most the :data:`BOILERPLATE_LIKENESS_QUANTILE`
    quantile of the likeness of random pairs of the samples' prompts (every pair of a sample of
    :data:`BOILERPLATE_BASELINE_PROMPTS`). Text that answers any question alike (refusals, filler, a
    sign-off) recurs under many unrelated prompts; an answer to its own question rarely recurs, and a
    templated task's label ("Yes, it is even.") recurs under prompts alike. 0.0 for a response without
    a word.

    ``batches()`` as :func:`prompt_coverage`'s, called three times: the (sentence, prompt) pairs, the
    sampled prompts' words (only their records parsed), then the shares. A sentence or prompt is kept as
    an 8-byte digest of its words (16 bytes a (sentence, prompt) pair, 8 a sample for its prompt); the
    words of the sampled prompts alone are kept."""

    def digest(tokens: list[str]) -> int:
        return int.from_bytes(hashlib.blake2b(" ".join(tokens).encode(), digest_size=8).digest(), "little")

    def loaded(records):
        return (json.loads(rec) if isinstance(rec, str) else rec for rec in records)

    def sentences_of(rec) -> list[list[str]]:
        return [found for part in _SENTENCE_END.split(rec.get("response", "")) if (found := words(part))]

    # (sentence, prompt) pairs, each once: 16 bytes a pair, not a set of prompts per sentence; and each
    # sample's prompt digest, so that the later passes need not parse a prompt again
    pairs, prompt_of = array("Q"), np.zeros(n, dtype=np.uint64)
    for positions, records in batches():
        for i, rec in zip(positions, loaded(records)):
            prompt = prompt_of[i] = digest(words(rec.get("prompt", "")))
            for sentence in {digest(s) for s in sentences_of(rec)}:
                pairs.extend((sentence, prompt))
    pairs = np.unique(np.frombuffer(pairs, dtype=np.uint64).reshape(-1, 2), axis=0)  # by sentence, then prompt
    sentence, first, count = np.unique(pairs[:, 0], return_index=True, return_counts=True)
    shared = np.flatnonzero(count >= BOILERPLATE_MIN_PROMPTS)
    sampled = {
        int(s): pairs[at : at + min(c, BOILERPLATE_SENTENCE_PROMPTS), 1].tolist()
        for s, at, c in zip(sentence[shared], first[shared], count[shared])
    }
    baseline = np.unique(pairs[:, 1])[:BOILERPLATE_BASELINE_PROMPTS].tolist()
    del pairs, sentence, first, count, shared
    if sampled:  # the sampled prompts' words, then which shared sentences stand under unrelated prompts
        prompt_words = dict.fromkeys([p for ps in sampled.values() for p in ps] + baseline)
        needed = np.isin(prompt_of, np.fromiter(prompt_words, dtype=np.uint64, count=len(prompt_words)))
        for positions, records in batches():  # only the records of the sampled prompts are parsed
            for i, rec in zip(positions, records):
                if needed[i]:
                    rec = json.loads(rec) if isinstance(rec, str) else rec
                    prompt_words[int(prompt_of[i])] = set(words(rec.get("prompt", "")))
        random_pairs = [jaccard(prompt_words[a], prompt_words[b]) for a, b in itertools.combinations(baseline, 2)]
        cut = np.quantile(random_pairs, BOILERPLATE_LIKENESS_QUANTILE)
        # (a tolerance: a mean of equal likenesses may round above the quantile of the same ones)
        boilerplate = {
            s for s, ps in sampled.items() if mean_pairwise_jaccard([prompt_words[p] for p in ps]) <= cut + 1e-12
        }
    else:
        boilerplate = set()
    out = np.zeros(n, dtype=np.float64)
    for positions, records in batches():
        for i, rec in zip(positions, loaded(records)):
            sentences = sentences_of(rec)
            total = sum(len(s) for s in sentences)
            if total:
                out[i] = sum(len(s) for s in sentences if digest(s) in boilerplate) / total
    return out


def _unfinished(nll_eos: np.ndarray) -> np.ndarray:
    """p(eos) after the response under 1 / EOS_FACTOR of the pool's median p(eos) (NaN: not judged)."""
    finite = nll_eos[np.isfinite(nll_eos)]
    if not len(finite):
        return np.zeros(len(nll_eos), dtype=bool)
    with np.errstate(invalid="ignore"):
        return nll_eos > np.median(finite) + math.log(EOS_FACTOR)


def _nll_based(pool, method: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """ifd, perplexity, combined: score, keep and reason, first failing check named."""
    n = len(pool)
    nll = np.asarray(pool.nll_response, dtype=np.float64)
    n_resp = np.asarray(pool.n_response_tokens)
    empty = n_resp <= 0
    if pool.empty_response is not None:  # eos alone is not a response (records without the key: not judged)
        empty |= pool.empty_response
    if method == "perplexity":
        score = -nll
        checks = [("no_response_tokens", empty), ("nonfinite", ~np.isfinite(score))]
    else:
        if pool.nll_response_alone is None:
            raise SelectFlowError(
                f"quality method {method!r} needs nll_response_alone, which the router data lacks; enable "
                "router_dump.ifd in the config and rerun router_dump (or use quality method 'perplexity' or 'field')"
            )
        with np.errstate(divide="ignore", invalid="ignore"):
            ifd = nll / np.asarray(pool.nll_response_alone, dtype=np.float64)
            if method == "ifd":
                score = ifd
            else:
                eos = (
                    np.zeros(n)
                    if pool.nll_eos is None
                    else np.nan_to_num(np.asarray(pool.nll_eos, dtype=np.float64), nan=0.0)
                )
                score = -np.log(ifd) - eos
        checks = [
            ("no_response_tokens", empty),
            ("nonfinite", ~np.isfinite(score) | ~np.isfinite(ifd)),
            ("ifd>=1", ifd >= 1.0),
        ]
        if method == "combined" and pool.distinct_3grams is not None:
            checks.append(("repetitive", pool.distinct_3grams < MIN_DISTINCT_TRIGRAMS))
        if method == "combined" and pool.nll_eos is not None:
            checks.append(("unfinished", _unfinished(np.asarray(pool.nll_eos, dtype=np.float64))))
    reason = np.full(n, "", dtype=object)
    for name, bad in checks:
        reason[(reason == "") & bad] = name
    return score, reason == "", reason


def gate_good(logits: np.ndarray) -> np.ndarray:
    """Select-MoE's quality score float64 [n] of the gates' ``logits`` [n, L, 2]: per layer p(good), the
    softmax's index 0, averaged over the layers. :class:`~selectflow.select.pool.Pool` keeps this one
    value a sample, computed a shard at a time, instead of the logits."""
    logits = np.asarray(logits, dtype=np.float64)
    # softmax over the two gate outputs, written as a logistic of the difference (stable for large logits)
    return (1.0 / (1.0 + np.exp(logits[..., 1] - logits[..., 0]))).mean(axis=1)


def _gate(pool) -> tuple[np.ndarray, np.ndarray]:
    if pool.gate_good is None:
        raise SelectFlowError(
            "quality method 'gate' needs quality_logits, but the router data has none (the model has no "
            "quality gates); use quality method 'ifd', 'perplexity' or 'field'"
        )
    score = np.asarray(pool.gate_good, dtype=np.float64)
    return score, np.isfinite(score)


def _field(pool, field: str | None) -> tuple[np.ndarray, np.ndarray]:
    if not field:
        raise SelectFlowError("quality method 'field' needs the name of a numeric record field (quality.field)")
    if pool.field_value is None:
        raise SelectFlowError("quality method 'field' needs the records, but the router data has no 'record' dataset")
    score = np.empty(len(pool), dtype=np.float64)
    for i, (sid, value) in enumerate(zip(pool.sample_id, pool.field_value)):
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        if not ok:
            what = "has no field" if value is None else f"has a non-numeric value {value!r} in field"
            raise SelectFlowError(
                f"sample {sid!r}: the input record {what} {field!r}; quality method 'field' needs a finite "
                "number there in every record"
            )
        score[i] = value
    return score, np.ones(len(pool), dtype=bool)
