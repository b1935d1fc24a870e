"""Duplicates: what a sample says across formats, and near-duplicates by MinHash + LSH against exact Jaccard."""

import json
from collections import Counter

import numpy as np
import pytest

from selectflow.data.records import prompt_and_response
from selectflow.select.dedup import (
    ANSWER_MIN,
    answer_keys,
    drop_near_duplicates,
    near_keys,
    near_parts,
    normalised_text,
    text_keys,
)
from selectflow.select.minhash import NUM_PERM, lsh_shape, shingles, signatures

QUESTION, ANSWER = "How do I set ${foo} in a shell?", "Run export foo=1; then $foo expands to 1."
SYSTEM = "You are a helpful assistant."


def normalised(record: dict, fmt: str) -> dict:
    """A normalised record as split_into_shards writes it."""
    prompt, response = prompt_and_response(record, fmt)
    return {"sample_id": "x", "dataset": fmt, "line": 1, "prompt": prompt, "response": response, "record": record}


FORMS = {
    "alpaca": ({"instruction": QUESTION, "output": ANSWER}, "alpaca"),
    "messages_with_system": (
        {
            "messages": [
                {"role": "system", "content": SYSTEM},
                {"role": "user", "content": QUESTION},
                {"role": "assistant", "content": ANSWER},
            ]
        },
        "messages",
    ),
    "sharegpt": (
        {"conversations": [{"from": "human", "value": QUESTION}, {"from": "gpt", "value": ANSWER}]},
        "sharegpt",
    ),
    "messages_parts": (
        {
            "messages": [
                {"role": "user", "content": [{"type": "text", "text": QUESTION}]},
                {"role": "assistant", "content": ANSWER},
            ]
        },
        "messages",
    ),
}


def test_one_sample_in_every_format_has_one_text_key():
    records = [normalised(rec, fmt) for rec, fmt in FORMS.values()]
    keys = text_keys(records, system_turns=False)
    assert len(set(keys.tolist())) == 1 and keys[0] != b""
    assert (
        normalised_text(records[0], system_turns=False)
        == "how do i set foo in a shell\x00run export foo 1 then foo expands to 1"
    )
    # system turns count when asked: the messages copy with a system turn is then another text
    with_system = text_keys(records, system_turns=True)
    assert with_system[1] != with_system[0] and with_system[0] == with_system[2] == with_system[3]
    # a different answer is a different sample
    other = normalised({"instruction": QUESTION, "output": "Use set foo=1."}, "alpaca")
    assert text_keys([other], system_turns=False)[0] != keys[0]


def exact_jaccard(a: str, b: str) -> float:
    x, y = shingles(a), shingles(b)
    return len(x & y) / len(x | y)


def corpus(n: int, seed: int, words: int = 60) -> list[str]:
    rng = np.random.default_rng(seed)
    vocab = [f"w{i}" for i in range(3000)]
    return [" ".join(rng.choice(vocab, size=words)) for _ in range(n)]


def edit(text: str, rng, changes: int, swaps: int) -> str:
    words = text.split()
    for at in rng.choice(len(words), size=changes, replace=False):
        words[at] = f"new{rng.integers(10**6)}"
    for _ in range(swaps):
        at = int(rng.integers(len(words) - 1))
        words[at], words[at + 1] = words[at + 1], words[at]
    return " ".join(words)


def rec(text: str) -> dict:
    half = text.index(" ", len(text) // 2)
    return normalised({"instruction": text[:half], "output": text[half + 1 :]}, "alpaca")


def test_minhash_estimate_agrees_with_exact_jaccard():
    rng = np.random.default_rng(0)
    base = corpus(40, 1)
    pairs = [
        (t, edit(t, rng, int(c), int(s))) for t, c, s in zip(base, rng.integers(0, 12, 40), rng.integers(0, 4, 40))
    ]
    texts = [x for p in pairs for x in p]
    sig, ok = signatures([near_parts({"prompt": "", "response": t}, system_turns=False) for t in texts])
    assert ok.all()
    err = [(sig[2 * i] == sig[2 * i + 1]).mean() - exact_jaccard(a, b) for i, (a, b) in enumerate(pairs)]
    # 128 permutations: standard error <= 0.044; no estimate 4 of them off
    assert np.abs(err).max() < 0.18 and abs(np.mean(err)) < 0.03, err


def answer_of(text: str) -> str:
    return text[text.index(" ", len(text) // 2) + 1 :]


@pytest.mark.parametrize("threshold", [0.5, 0.7, 0.85])
def test_near_duplicates_best_copy_kept_against_a_pairwise_reference(threshold):
    """LSH + greedy pass vs a naive one over all pairs with the exact Jaccard of the texts and of their
    answers: the same drops and the same similarities, except pairs the LSH may miss (within 0.1 of
    the threshold: a pair at it shares a band with probability over 0.9)."""
    rng = np.random.default_rng(int(threshold * 100))
    base = corpus(60, 2)
    texts = base + [
        edit(t, rng, int(c), int(s)) for t, c, s in zip(base[:40], rng.integers(0, 8, 40), rng.integers(0, 3, 40))
    ]
    # the same first half (question) with the answer cut short or replaced: not copies however alike the texts
    texts += [t[: t.index(" ", len(t) // 2)] + " " + " ".join(answer_of(t).split()[:4]) for t in base[40:50]]
    texts += [t[: t.index(" ", len(t) // 2)] + " " + edit(answer_of(t), rng, 20, 0) for t in base[50:60]]
    n = len(texts)
    ids = np.array([f"s{i:03d}" for i in rng.permutation(n)], dtype=object)
    order = np.argsort(-rng.random(n))  # quality order, best first
    keep, reason, sim = np.ones(n, bool), np.full(n, "", dtype=object), np.full(n, np.nan)
    records = [rec(t) for t in texts]
    keys = near_keys(records, threshold, system_turns=False)
    asked = []

    def records_of(rows):
        asked.extend(rows)
        return [records[i] for i in rows]

    dropped = drop_near_duplicates(order, keys, threshold, ids, keep, reason, sim, records_of, system_turns=False)

    def copies(i, j):
        return (
            exact_jaccard(texts[i], texts[j]) >= threshold
            and exact_jaccard(answer_of(texts[i]), answer_of(texts[j])) >= ANSWER_MIN
        )

    # the reference: best first, drop a sample that is a copy of an earlier kept one
    want = np.ones(n, bool)
    for pos, i in enumerate(order):
        want[i] = not any(copies(i, j) for j in order[:pos] if want[j])
    close = {
        i for i in range(n) for j in range(n) if i != j and abs(exact_jaccard(texts[i], texts[j]) - threshold) < 0.1
    }
    differ = set(np.flatnonzero(keep != want))
    assert differ <= close, sorted(differ - close)
    assert dropped == int((~keep).sum()) >= 2 and (~want).sum() >= 2
    for i in np.flatnonzero(~keep):
        of = int(np.flatnonzero(ids == reason[i].split(":", 1)[1])[0])
        assert keep[of] and list(order).index(of) < list(order).index(i)  # the kept copy ranks higher
        assert copies(i, of) and sim[i] == pytest.approx(exact_jaccard(texts[i], texts[of]), abs=0.02)
        # the most similar earlier kept copy is named
        assert (
            sim[i]
            >= max(exact_jaccard(texts[i], texts[j]) for j in order[: list(order).index(i)] if keep[j] and copies(i, j))
            - 0.02
        )
    # cut-short and rewritten answers share their question's half of the text and are kept
    assert keep[100:].all() and max(exact_jaccard(texts[i], texts[i - 60]) for i in range(100, 110)) >= 0.5
    assert len(asked) < n  # only samples sharing a bucket are read back


def test_lsh_shape_uses_every_band_it_can():
    for threshold in (0.5, 0.7, 0.9):
        b, r = lsh_shape(threshold)
        assert b * r <= NUM_PERM and b >= 1 and r >= 1
        # a pair at the threshold shares a band with probability 1 - (1 - t^r)^b: most do, few far under it
        assert 1 - (1 - threshold**r) ** b > 0.9 and 1 - (1 - (threshold - 0.3) ** r) ** b < 0.2


def test_text_without_words_is_never_a_near_duplicate():
    keys = near_keys(
        [{"prompt": "", "response": t} for t in ("...", "?!", "...", "a b c d e")], 0.5, system_turns=False
    )
    assert keys["near_ok"].tolist() == [False, False, False, True]
    keep, reason, sim = np.ones(4, bool), np.full(4, "", dtype=object), np.full(4, np.nan)
    assert (
        drop_near_duplicates(
            np.arange(4),
            keys,
            0.5,
            np.array(list("abcd"), dtype=object),
            keep,
            reason,
            sim,
            lambda rows: pytest.fail("no sample shares a bucket"),
            system_turns=False,
        )
        == 0
    )


def write_record_shards(tmp_path, ids, records, rng, per_shard, nll=None):
    """Router shards of ``per_shard`` samples holding normalised ``records`` (random routing; ``nll``: each
    sample's response loss, else drawn per shard); their paths."""
    from selectflow.router.routerfile import RouterShard, write_router_shard

    paths = []
    for k, lo in enumerate(range(0, len(ids), per_shard)):
        part = list(range(lo, min(len(ids), lo + per_shard)))
        moe_probs = rng.dirichlet(np.ones(4), size=(len(part), 2)).astype(np.float32)
        paths.append(tmp_path / f"shard_{k:05d}.h5")
        write_router_shard(
            paths[-1],
            RouterShard(
                sample_id=np.array([ids[i] for i in part], dtype=object),
                moe_probs=moe_probs,
                nll_response=rng.uniform(1, 2, len(part)).astype(np.float32) if nll is None else nll[part],
                n_tokens=np.full(len(part), 9, np.int32),
                n_response_tokens=np.full(len(part), 4, np.int32),
                record=np.array(
                    [json.dumps({"sample_id": ids[i], "dataset": "d", **records[i]}) for i in part], dtype=object
                ),
            ),
        )
    return paths


def test_streamed_and_whole_pool_near_dedup_agree(tmp_path):
    """build_candidates streamed (keys made per shard) and on the whole pool (keys of every record at once): the
    same quality.tsv."""
    from selectflow.config import selection_section
    from selectflow.stages.select import build_candidates
    from tests.pool_reference import build_candidates_whole

    rng = np.random.default_rng(5)
    base = corpus(30, 3)
    texts = base + [edit(t, rng, 2, 1) for t in base[:15]]
    n = len(texts)
    ids = [f"d:{i}" for i in range(n)]
    records = [rec(t) for t in texts]
    paths = write_record_shards(tmp_path, ids, records, rng, per_shard=8)  # copies and originals in different shards
    sel = selection_section(
        quality_method="perplexity",
        selection_percentage=0.2,
        routing_strata=1,
        device="cpu",
        near_duplicate_threshold=0.6,
    )
    build_candidates(paths, tmp_path / "s.h5", tmp_path / "s.tsv", sel)
    build_candidates_whole(paths, tmp_path / "m.h5", tmp_path / "m.tsv", sel)
    streamed = (tmp_path / "s.tsv").read_text()
    assert streamed == (tmp_path / "m.tsv").read_text()
    assert streamed.count("duplicate_of:") >= 13  # 2 words changed and 1 swap of 60: Jaccard about 0.75


def test_texts_whose_numbers_differ_are_never_near_duplicates():
    words = "boil the rice in salted water for about {} minutes then drain it and serve it warm with butter"
    texts = [
        words.format(12),
        words.format(13),
        words.format(12).replace("then drain", "drain"),
        words.format(12) + " on 3 plates",
        "on 3 plates " + words.format(12),
    ]
    keys = near_keys([rec(t) for t in texts], 0.6, system_turns=False)
    keep, reason, sim = np.ones(5, bool), np.full(5, "", dtype=object), np.full(5, np.nan)
    drop_near_duplicates(
        np.arange(5),
        keys,
        0.6,
        np.array(list("abcde"), dtype=object),
        keep,
        reason,
        sim,
        lambda rows: [rec(texts[i]) for i in rows],
        system_turns=False,
    )
    # 13 minutes is another recipe; a word dropped is a copy; the same numbers in another order too
    assert reason.tolist() == ["", "", "duplicate_of:a", "", "duplicate_of:d"]


def test_a_copy_must_answer_alike():
    """The same long question with the answer cut short, emptied of words or one word repeated is another
    sample (junk the quality step judges), though the texts' Jaccard passes the threshold; a word changed
    in the answer is a copy."""
    question = corpus(1, 7, words=60)[0]
    answer = "boil the rice in salted water then drain it and serve it warm with butter"
    texts = [
        f"{question} {answer}",
        f"{question} {answer.replace('warm', 'hot')}",
        f"{question} {' '.join(answer.split()[:4])}",
        f"{question} {' '.join(['rice'] * 30)}",
        f"{question} ...",
    ]
    records = [normalised({"instruction": question, "output": t[len(question) + 1 :]}, "alpaca") for t in texts]
    keys = near_keys(records, 0.6, system_turns=False)
    assert keys["near_ok"].tolist() == [True, True, True, True, False]  # an answer without a word: exact dedup only
    assert min(exact_jaccard(texts[0], t) for t in texts[1:4]) >= 0.6
    keep, reason, sim = np.ones(5, bool), np.full(5, "", dtype=object), np.full(5, np.nan)
    drop_near_duplicates(
        np.arange(5),
        keys,
        0.6,
        np.array(list("abcde"), dtype=object),
        keep,
        reason,
        sim,
        lambda rows: [records[i] for i in rows],
        system_turns=False,
    )
    assert reason.tolist() == ["", "duplicate_of:a", "", "", ""]
    assert sim[1] == pytest.approx(exact_jaccard(texts[0], texts[1]))


def test_answer_keys_compare_the_answer_alone_with_its_punctuation():
    """The answer's key ignores the question, case and runs of space, keeps punctuation, and is empty for
    an answer under ``min_words`` words."""
    long_answer = "Same as a ** b, for numbers a and b."
    records = [
        normalised({"instruction": "What does operator.pow do?", "output": long_answer}, "alpaca"),
        normalised(
            {
                "messages": [
                    {"role": "user", "content": "Explain pow."},
                    {"role": "assistant", "content": "same as A **  b, for numbers a and B."},
                ]
            },
            "messages",
        ),
        normalised(
            {"instruction": "What does operator.mul do?", "output": "Same as a * b, for numbers a and b."}, "alpaca"
        ),
        normalised({"instruction": "Is it true?", "output": "Yes, it is."}, "alpaca"),
        normalised({"instruction": "Is it false?", "output": "Yes, it is."}, "alpaca"),
    ]
    keys = answer_keys(records, min_words=4)
    assert keys[0] == keys[1] != b""  # the same answer under two questions, two formats
    assert keys[2] not in (keys[0], b"")  # "a * b" is not "a ** b"
    assert keys[3] == keys[4] == b""  # three words: a short answer may answer many questions
    assert answer_keys(records[3:], min_words=3)[0] == answer_keys(records[3:], min_words=3)[1] != b""


@pytest.mark.parametrize("min_words, max_samples", [(1, None), (4, None), (1, 2), (2, 4)])
def test_shared_answers_dropped_against_a_reference(tmp_path, min_words, max_samples):
    """build_candidates with ``shared_answer_min_words`` (and ``shared_answer_max_samples``): in quality
    order, a sample whose text an earlier kept one has is ``duplicate_of`` it; else one whose answer (of
    ``min_words``+ words, under at most ``max_samples`` of the samples still kept) an earlier kept one has is
    ``same_answer_as`` it; streamed and whole-pool agree."""
    import pandas as pd

    from selectflow.config import selection_section
    from selectflow.stages.select import build_candidates
    from tests.pool_reference import build_candidates_whole

    rng = np.random.default_rng(min_words)
    answers = [" ".join(f"w{a}x{j}" for j in range(1 + a % 6)) + "." for a in range(24)]  # 1 to 6 words
    # answers under 1 to about 12 questions: a skewed draw
    pairs = [(f"Question {i} about item {rng.integers(1000)}?", answers[int(rng.zipf(1.6)) % 24]) for i in range(60)]
    pairs += [pairs[i] for i in rng.integers(0, 60, 10)]  # exact copies: duplicate_of first
    n = len(pairs)
    ids = [f"d:{i:03d}" for i in range(n)]
    nll = rng.uniform(1, 2, n).astype(np.float32)
    records = [normalised({"instruction": q, "output": a}, "alpaca") for q, a in pairs]
    paths = write_record_shards(tmp_path, ids, records, rng, per_shard=16, nll=nll)
    sel = selection_section(
        quality_method="perplexity",
        quality_cut="fixed",
        selection_percentage=0.2,
        routing_strata=1,
        device="cpu",
        near_duplicate_threshold=None,
        shared_answer_min_words=min_words,
        shared_answer_max_samples=max_samples,
    )
    build_candidates(paths, tmp_path / "s.h5", tmp_path / "s.tsv", sel)
    build_candidates_whole(paths, tmp_path / "m.h5", tmp_path / "m.tsv", sel)
    assert (tmp_path / "s.tsv").read_text() == (tmp_path / "m.tsv").read_text()
    got = pd.read_csv(tmp_path / "s.tsv", sep="\t", keep_default_na=False).set_index("sample_id")["reason"]

    # the reference, in quality order (perplexity: lower loss first): exact copies over the whole pool,
    # then shared answers among the samples still kept
    order = sorted(range(n), key=lambda i: (float(nll[i]), ids[i]))
    want, texts, owner = {}, {}, {}
    for i in order:
        want[ids[i]] = f"duplicate_of:{texts[pairs[i]]}" if pairs[i] in texts else ""
        texts.setdefault(pairs[i], ids[i])
    under = Counter(pairs[i][1] for i in order if not want[ids[i]])
    for i in order:
        answer = pairs[i][1]
        if not want[ids[i]] and len(answer.split()) >= min_words and under[answer] <= (max_samples or n):
            if answer in owner:
                want[ids[i]] = f"same_answer_as:{owner[answer]}"
            owner.setdefault(answer, ids[i])
    assert got.replace("candidate", "").to_dict() == want
    assert sum(r.startswith("same_answer_as:") for r in want.values()) >= 3
    if max_samples:  # answers the cap leaves alone are shared on this pool too
        assert max(under[a] for a in under if len(a.split()) >= min_words) > max_samples
    # selection_summary.tsv counts the exact copies as duplicates and the shared answers apart
    from selectflow.select.write import summary_table

    table = pd.read_csv(tmp_path / "s.tsv", sep="\t", keep_default_na=False, na_values=["nan"])
    row = summary_table(table.assign(selected=False)).iloc[0]
    n_copies = sum(r.startswith("duplicate_of:") for r in want.values())
    assert n_copies >= 5
    assert (row["duplicates"], row["near_duplicates"]) == (n_copies, 0)
    assert row["shared_answers"] == sum(r.startswith("same_answer_as:") for r in want.values())
