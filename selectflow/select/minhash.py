"""MinHash and LSH of texts' word shingles: the signature maths of near-duplicate dedup (pure; no I/O).

* :func:`shingles`: a text's word :data:`SHINGLE_WORDS`-grams; :func:`shingle_hashes`: their CRC-32s
  (uint32 [m], sorted), whose exact :func:`jaccard` the duplicate check takes;
* :func:`signatures`: uint32 [n, :data:`NUM_PERM`] MinHash signatures (:func:`datasketch_minhash`,
  seeded) of (text, answer) pairs, and which have a word;
* :func:`keys_of_signatures`: what a pool keeps of a signature: uint32 [n, bands] LSH band keys
  (:func:`lsh_shape`) and its first :data:`PREFILTER_PERM` values cut to 8 bits (uint8), whose
  agreement :func:`estimate` turns into a Jaccard estimate.

Which texts are compared and how duplicates are dropped: :mod:`selectflow.select.dedup`.
"""

from __future__ import annotations

import zlib

import numpy as np

NUM_PERM = 128  # MinHash permutations: the estimated Jaccard's standard error is at most 0.044
SHINGLE_WORDS = 3  # words per shingle (bench/bench_near_dedup.py measures 2, 3 and 5)
MINHASH_SEED = 1


# the pass reads back only pairs whose MinHash estimate from the signature's first PREFILTER_PERM
# values (8 bits each, 32 bytes a sample) is within PREFILTER_MARGIN of the threshold: LSH buckets
# shared by chance (pairs of Jaccard ~0) are not read; a pair at the threshold falls that far
# below it with probability under 0.001 (standard error 0.087 at 32 permutations)
PREFILTER_PERM = 32
PREFILTER_MARGIN = 0.3


# (false positive, false negative) weights of the LSH shape: a candidate pair is checked with
# the exact Jaccard anyway, so a false positive costs one comparison and a false negative a
# missed duplicate; equal weights found under half of the pairs at the threshold (tests/select/test_dedup.py)
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
    return {" ".join(found[i : i + n]).encode() for i in range(len(found) - n + 1)} if found else set()


def datasketch_minhash(grams: list[bytes]) -> np.ndarray:
    """uint32 [NUM_PERM]: the MinHash of a shingle set (datasketch, seeded; its permutations made once)."""
    from datasketch import MinHash

    global _TEMPLATE_MINHASH
    if _TEMPLATE_MINHASH is None:
        _TEMPLATE_MINHASH = MinHash(num_perm=NUM_PERM, seed=MINHASH_SEED)
    m = MinHash(
        num_perm=NUM_PERM,
        seed=MINHASH_SEED,
        permutations=_TEMPLATE_MINHASH.permutations,
        scheme=_TEMPLATE_MINHASH.scheme,
    )
    m.update_batch(grams)
    return m.hashvalues.astype(np.uint32)


_TEMPLATE_MINHASH = None


def signatures(parts: list[tuple[str, str]], minhash=datasketch_minhash) -> tuple[np.ndarray, np.ndarray]:
    """``(uint32 [n, NUM_PERM] MinHash signatures of the texts, bool [n] the text and its answer have a
    word)`` of ``parts`` (:func:`selectflow.select.dedup.near_parts`); ``minhash``: a shingle list's signature."""
    sig = np.zeros((len(parts), NUM_PERM), dtype=np.uint32)
    ok = np.zeros(len(parts), dtype=bool)
    for i, (text, answer) in enumerate(parts):
        grams = shingles(text)
        if grams and shingles(answer):
            sig[i], ok[i] = minhash(list(grams)), True
    return sig, ok


# odd 64-bit multipliers: a band key is the high half of the dot product of its rows with them, mod 2**64
_BAND_MULT = np.random.default_rng(20261204).integers(0, 2**63, size=NUM_PERM, dtype=np.uint64) * np.uint64(
    2
) + np.uint64(1)


def keys_of_signatures(sig: np.ndarray, ok: np.ndarray, threshold: float) -> dict[str, np.ndarray]:
    """:func:`selectflow.select.dedup.near_keys` but the numbers, from :func:`signatures`."""
    b, r = lsh_shape(threshold)
    with np.errstate(over="ignore"):
        band = (sig[:, : b * r].astype(np.uint64).reshape(len(sig), b, r) * _BAND_MULT[:r]).sum(axis=2)
    return {
        "near_band": (band >> np.uint64(32)).astype(np.uint32),
        "near_sig": (sig[:, :PREFILTER_PERM] & 0xFF).astype(np.uint8),
        "near_ok": ok,
    }


def estimate(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Estimated Jaccard similarity of MinHash signatures cut to 8 bits (uint8 [..., perm], broadcast):
    the share of agreeing values, less the 1/256 that agree by chance."""
    return np.clip(((a == b).mean(axis=-1) - 1 / 256) / (1 - 1 / 256), 0.0, 1.0)


def shingle_hashes(text: str) -> np.ndarray:
    """uint32 [m], sorted: a CRC-32 of each of :func:`shingles` of ``text`` (two of a text's shingles
    collide with probability about m**2 / 2**33: a shingle more or less, now and then, in a Jaccard)."""
    return np.unique(np.fromiter((zlib.crc32(g) for g in shingles(text)), dtype=np.uint32))


def jaccard(a: np.ndarray, b: np.ndarray) -> float:
    """Jaccard similarity of two sorted sets (:func:`shingle_hashes`); 0 when both are empty."""
    shared = len(np.intersect1d(a, b, assume_unique=True))
    union = len(a) + len(b) - shared
    return shared / union if union else 0.0
