"""Quality scores against hand-computed values, and the errors for absent data."""

import json
import math
import re

import numpy as np
import pytest

from selectflow.router.routerfile import RouterShard
from selectflow.runtime.errors import SelectFlowError
from selectflow.select.pool import pool_of
from selectflow.select.quality import (
    MIN_GROUP,
    assess,
    boilerplate_share,
    distinct_ngram_share,
    prompt_coverage,
    quality_scores,
    robust_z,
    words,
)


def as_pool(s):
    """The pool of the one shard ``s`` held in memory (record field ``score`` read for method ``field``)."""
    return pool_of([(None, s)], field="score", system_turns=False)


def pool(n=3, **kw):
    return as_pool(shard(n, **kw))


def shard(n=3, *, logits=None, nll=None, alone=None, resp_tokens=None, records=None, eos=None):
    ids = np.array([f"s{i}" for i in range(n)], dtype=object)
    return RouterShard(
        sample_id=ids,
        moe_probs=np.full((n, 2, 4), 0.25, dtype=np.float32),
        nll_response=np.asarray(nll if nll is not None else np.ones(n), dtype=np.float32),
        n_tokens=np.full(n, 10, dtype=np.int32),
        n_response_tokens=np.asarray(resp_tokens if resp_tokens is not None else np.full(n, 5), dtype=np.int32),
        quality_logits=None if logits is None else np.asarray(logits, dtype=np.float32),
        nll_response_alone=None if alone is None else np.asarray(alone, dtype=np.float32),
        nll_eos=None if eos is None else np.asarray(eos, dtype=np.float32),
        record=None if records is None else np.array([json.dumps(r) for r in records], dtype=object),
    )


def test_gate_is_mean_over_layers_of_softmax_index_0():
    logits = [[[2.0, 0.0], [0.0, 0.0]], [[0.0, 3.0], [-1.0, 1.0]], [[100.0, -100.0], [5.0, 5.0]]]
    score, keep = quality_scores(pool(logits=logits), "gate")
    sig = lambda z: 1 / (1 + math.exp(-z))  # noqa: E731 - softmax of two logits = sigmoid of their difference
    expected = [(sig(2) + 0.5) / 2, (sig(-3) + sig(-2)) / 2, (1.0 + 0.5) / 2]
    np.testing.assert_allclose(score, expected, rtol=1e-12)
    assert keep.all() and score.dtype == np.float64


def test_auto_uses_combined_else_gate_else_perplexity():
    logits = [[[1.0, 0.0]] * 2] * 3
    with_gate = pool(logits=logits, alone=[2.0, 2.0, 2.0])
    np.testing.assert_allclose(quality_scores(with_gate, "auto")[0], quality_scores(with_gate, "combined")[0])
    only_gate = pool(logits=logits)
    np.testing.assert_allclose(quality_scores(only_gate, "auto")[0], quality_scores(only_gate, "gate")[0])
    no_gate = pool(nll=[1.0, 1.5, 3.0], alone=[2.0, 2.0, 2.0])
    np.testing.assert_allclose(quality_scores(no_gate, "auto")[0], quality_scores(no_gate, "combined")[0])
    no_alone = pool(nll=[1.0, 1.5, 3.0])
    np.testing.assert_allclose(quality_scores(no_alone, "auto")[0], [-1.0, -1.5, -3.0])


def norm(response):
    return {"sample_id": "x", "dataset": "d", "prompt": "q", "response": response, "record": {}}


def test_combined_against_a_naive_reference_and_its_direction():
    nll = [1.0, 1.0, 2.0, 1.0, 1.0, 1.0, np.nan, 1.0]
    alone = [4.0, 2.0, 4.0, 2.0, 1.0, 2.0, 2.0, 2.0]
    eos = [0.1, 0.1, 0.1, 3.0, 0.1, np.nan, 0.1, 0.1]
    resp = ["a fine answer"] * 6 + ["x", ""]
    s = pool(n=8, nll=nll, alone=alone, eos=eos, records=[norm(r) for r in resp])
    a = assess(s, "combined")
    for i in range(8):  # log(1/IFD) + log p(eos); an unknown eos (cut by max_length) adds nothing
        want = math.log(alone[i] / nll[i]) - (0.0 if math.isnan(eos[i]) else eos[i])
        if math.isfinite(want):
            assert a.score[i] == pytest.approx(want, rel=1e-6)
    # the prompt helps more -> higher; the model expects the end less -> lower
    assert a.score[0] > a.score[1] > a.score[3]
    assert a.score[0] > a.score[2]
    # p(eos) after sample 3 is under half the median's (0.1 + log 2 < 3): unfinished
    assert a.reason.tolist() == ["", "", "", "unfinished", "ifd>=1", "", "nonfinite", "no_response_tokens"]
    assert a.keep.tolist() == [r == "" for r in a.reason]
    assert {"nll_response", "nll_response_alone", "nll_eos", "n_response_tokens", "distinct_3grams"} <= set(a.inputs)


def test_combined_drops_degenerate_repetition_not_ordinary_text():
    resp = ["the cat " * 20, "ok " * 30, "Boil the rice for ten minutes, then add salt and serve it warm.", "Yes."]
    s = pool(n=4, nll=[1.0] * 4, alone=[2.0] * 4, eos=[0.1] * 4, records=[norm(r) for r in resp])
    a = assess(s, "combined")
    assert a.reason.tolist() == ["repetitive", "repetitive", "", ""]


def test_distinct_ngram_share_against_a_naive_count():
    texts = ["a b c a b c", "one two three four", "x", "Go, go, go!", "well... well... well... fine"]
    for text, got in zip(texts, distinct_ngram_share(texts, 3)):
        found = [w for w in re.split(r"[^a-z]+", text.lower()) if w]  # ASCII text: words are runs of letters
        grams = [" ".join(found[i : i + 3]) for i in range(len(found) - 2)]
        assert got == (len(set(grams)) / len(grams) if grams else 1.0)


def test_prompt_coverage_against_a_hand_count():
    """IDF over the five samples (df: words in the prompt or the response); role tags weigh little."""
    recs = [
        {"prompt": "What is the capital of France?", "response": "The capital of France is Paris."},
        {"prompt": "What is the capital of Peru?", "response": "Boil the rice for ten minutes."},  # another's answer
        {
            "prompt": "### User:\nName the largest ocean.\n\n### Assistant:\n",
            "response": "The Pacific is the largest ocean.",
        },
        {"prompt": "... ?!", "response": "anything"},  # a prompt without words: nothing to judge
        {"sample_id": "x"},  # no prompt, no response: not judged
    ]
    docs = [set(re.findall(r"[a-z]+", (r.get("prompt", "") + " " + r.get("response", "")).lower())) for r in recs]
    idf = {w: math.log(5 / sum(w in d for d in docs)) for w in set().union(*docs)}

    def share(prompt, response):
        return sum(idf[w] for w in prompt & response) / sum(idf[w] for w in prompt)

    want = [
        share({"what", "is", "the", "capital", "of", "france"}, {"the", "capital", "of", "france", "is", "paris"}),
        share({"what", "is", "the", "capital", "of", "peru"}, {"boil", "the", "rice", "for", "ten", "minutes"}),
        share({"user", "assistant", "name", "the", "largest", "ocean"}, {"the", "pacific", "is", "largest", "ocean"}),
        1.0,
        1.0,
    ]
    calls = []

    def batches():  # two batches, out of order, one as JSON strings; read twice
        calls.append(1)
        yield np.array([2, 0]), [recs[2], json.dumps(recs[0])]
        yield np.array([3, 1, 4]), [recs[3], recs[1], recs[4]]

    got = prompt_coverage(batches, 5)
    np.testing.assert_allclose(got, want)
    assert len(calls) == 2 and got[0] > 0.5 > got[1] > 0  # the swapped answer covers only "the" of its prompt


def test_boilerplate_share_against_a_hand_count():
    """A sentence the answers to three different, unrelated prompts hold is boilerplate; two prompts, one
    prompt three times (duplicates), or three prompts alike (a templated task's label) are not. The share
    counts words, sentences compared by their words."""
    filler = "I hope this helps!"  # 4 words
    recs = [
        {"prompt": "Q1?", "response": "Paris is the capital. " + filler},  # 4 + 4 words, 4 boilerplate
        {"prompt": "Q2?", "response": "i hope THIS helps"},  # the same words: the same sentence
        {"prompt": "Q3?", "response": "Boil the rice.\nI hope this helps!  Enjoy."},  # 3 + 4 + 1 words
        {"prompt": "Q4?", "response": "Twice shared. Other text"},  # "twice shared" under two prompts only
        {"prompt": "Q5?", "response": "Twice shared."},
        {"prompt": "Q6?", "response": "Thrice. Said."},  # "thrice" under one prompt three times
        {"prompt": "Q6?", "response": "Thrice."},
        {"prompt": "Q6?", "response": "Thrice."},
        {"prompt": "Q7?", "response": "..."},  # no word: 0
        {"sample_id": "x"},  # no response: 0
        # a label under three prompts alike (likeness 4/6 a pair) among 13 prompts: 3 of their 78 pairs are
        # alike, under 5 %, so the 0.95 quantile of the pairs' likeness is 0 and the label is no boilerplate
        *({"prompt": f"Is {k} an even number?", "response": "Yes, it is even."} for k in (4, 6, 8)),
        *({"prompt": f"Q{k}?", "response": f"Answer {k}."} for k in (8, 9, 10, 11)),
    ]
    want = [4 / 8, 1.0, 4 / 8] + [0.0] * 14
    calls = []

    def batches():  # two batches, out of order, one record as a JSON string; read three times
        calls.append(1)
        yield np.array([9, 2, 0]), [recs[9], json.dumps(recs[2]), recs[0]]
        yield np.array([1, 3, 4, 5, 6, 7, 8, *range(10, 17)]), [recs[i] for i in (1, 3, 4, 5, 6, 7, 8, *range(10, 17))]

    np.testing.assert_allclose(boilerplate_share(batches, 17), want)
    assert len(calls) == 3


def test_boilerplate_share_equals_brute_force():
    """Random records, half of a templated task and half of random prompts, over a small vocabulary of
    sentences, against a plain recount: per sentence (its words) the set of prompts (their words) whose
    responses hold it; boilerplate where they are at least 3 and their mean pairwise Jaccard is at most
    the 0.95 quantile of the Jaccard of every pair of the prompts."""
    rng = np.random.default_rng(4)
    sentences = ["alpha beta.", "Gamma!", "delta epsilon zeta?", "eta", "theta iota.", "kappa lambda mu nu."]
    labels = ["Yes, it is even.", "No, it is odd."]
    vocabulary = [f"w{k}" for k in range(15)]
    recs = []
    for _ in range(60):
        if rng.random() < 0.5:  # the templated task: its label, at times with another sentence
            prompt = f"is {rng.integers(0, 6)} an even number"
            response = " ".join([rng.choice(labels), *rng.choice(sentences, rng.integers(0, 2))])
        else:
            prompt = " ".join(rng.choice(vocabulary, 3, replace=False))
            response = " ".join(rng.choice(sentences, rng.integers(0, 4)))
        recs.append({"prompt": prompt, "response": response})

    def split(text):
        return [tuple(words(s)) for s in re.split(r"(?<=[.!?])\s+|\n+", text) if words(s)]

    def jaccard(a, b):
        return len(set(a) & set(b)) / len(set(a) | set(b))

    prompts_of = {}
    for r in recs:
        for s in split(r["response"]):
            prompts_of.setdefault(s, set()).add(tuple(words(r["prompt"])))
    prompts = sorted(set().union(*prompts_of.values()))
    assert len(prompts) <= 256 and max(map(len, prompts_of.values())) <= 16  # no sampling: every prompt compared
    cut = np.quantile([jaccard(a, b) for i, a in enumerate(prompts) for b in prompts[i + 1 :]], 0.95)
    shared = {s for s, ps in prompts_of.items() if len(ps) >= 3}
    alike = {s for s in shared if np.mean([jaccard(a, b) for a in prompts_of[s] for b in prompts_of[s] if a < b]) > cut}
    assert shared - alike and alike  # both kinds occur: boilerplate and a label under prompts alike
    want = []
    for r in recs:
        found = split(r["response"])
        total = sum(map(len, found))
        want.append(sum(len(s) for s in found if s in shared - alike) / total if total else 0.0)
    got = boilerplate_share(lambda: [(np.arange(60), recs)], 60)
    np.testing.assert_allclose(got, want)
    assert 0 < np.mean(got > 0) < 1


def test_boilerplate_share_samples_the_prompts_of_a_large_pool():
    """Past 16 prompts a sentence and 256 prompts the pool, samples of them are compared: filler under
    560 unrelated prompts is boilerplate, a label under 40 prompts of one template is not (under 1 % of the
    pairs of prompts are two of the template's, so it stands out)."""
    rng = np.random.default_rng(5)
    vocabulary = [f"w{k}" for k in range(400)]
    recs = [
        {"prompt": " ".join(rng.choice(vocabulary, 6, replace=False)), "response": f"Point {k}. I hope this helps!"}
        for k in range(560)
    ]
    recs += [{"prompt": f"Is {k} an even number?", "response": f"Number {k}. Yes, it is even."} for k in range(40)]
    got = boilerplate_share(lambda: [(np.arange(600), recs)], 600)
    np.testing.assert_allclose(got, [4 / 6] * 560 + [0.0] * 40)


@pytest.mark.parametrize(
    "text, expected",
    [
        ("The answer is 42 ..........", ["the", "answer", "is", "42"]),  # an ellipsis is no word
        ("def f(x):\n    return x[0] + 1  # first", ["def", "f", "x", "return", "x", "0", "1", "first"]),
        ("| a | b |\n|---|---|\n| 1 | 2 |", ["a", "b", "1", "2"]),  # table rules are no words
        ("东京是日本的首都。", list("东京是日本的首都")),  # Han: a word a character
        ("ひらがな カタカナ", list("ひらがなカタカナ")),
        ("한국어 문장", ["한국어", "문장"]),  # Hangul is written with spaces
        ("Ünïcödé naïve_name", ["ünïcödé", "naïve_name"]),
        ("... ?! — *** $$$", []),
    ],
)
def test_words_are_word_characters_not_punctuation(text, expected):
    assert words(text) == expected


@pytest.mark.parametrize(
    "response, why",
    [
        ("The answer is 42 ..........", ""),  # was 'repetitive' when the dots counted as words
        ("Wait for it . . . . . . . . . . . . . . . . and done.", ""),
        ("| col | val |\n|-----|-----|\n| a | 1 |\n| b | 2 |\n| c | 3 |", ""),
        ("```python\nfor i in range(3):\n    print(i, i * 2)\n```", ""),
        ("东京是日本的首都，人口很多。", ""),
        ("好" * 40, "repetitive"),  # a loop in Han text is still a loop
        ("the cat " * 20, "repetitive"),
        ("...", "no_response_tokens"),
        ("?!", "no_response_tokens"),
        ("—", "no_response_tokens"),
        ("   \n ", "no_response_tokens"),
    ],
)
def test_combined_word_checks_count_words(response, why):
    s = pool(n=1, nll=[1.0], alone=[2.0], eos=[0.1], records=[norm(response)])
    assert assess(s, "combined").reason.tolist() == [why]
    assert assess(s, "perplexity").reason.tolist() == ["no_response_tokens" if why == "no_response_tokens" else ""]


def test_ifd_ratio_and_drops():
    s = pool(
        n=6,
        nll=[1.0, 2.0, 3.0, np.nan, 1.0, 1.0],
        alone=[2.0, 2.0, 2.0, 2.0, 0.0, 4.0],
        resp_tokens=[5, 5, 5, 0, 5, 0],
    )
    score, keep = quality_scores(s, "ifd")
    np.testing.assert_allclose(score[:3], [0.5, 1.0, 1.5])
    # IFD >= 1, NaN NLL, division by zero, and no response tokens are all dropped
    assert keep.tolist() == [True, False, False, False, False, False]


def test_perplexity_is_negative_nll():
    score, keep = quality_scores(pool(nll=[0.5, 2.0, np.nan], resp_tokens=[3, 3, 0]), "perplexity")
    np.testing.assert_allclose(score[:2], [-0.5, -2.0])
    assert keep.tolist() == [True, True, False]


def test_field_reads_original_record():
    recs = [{"sample_id": f"s{i}", "dataset": "d", "record": {"score": v}} for i, v in enumerate([3, 1.5, -2])]
    score, keep = quality_scores(pool(records=recs), "field", "score")
    assert score.tolist() == [3.0, 1.5, -2.0] and keep.all()


@pytest.mark.parametrize("value, phrase", [(None, "has no field"), ("high", "non-numeric"), (True, "non-numeric")])
def test_field_missing_or_non_numeric_names_sample_and_field(value, phrase):
    recs = [
        {"sample_id": "s0", "dataset": "d", "record": {"score": 1}},
        {"sample_id": "s1", "dataset": "d", "record": {} if value is None else {"score": value}},
    ]
    with pytest.raises(SelectFlowError, match=rf"'s1'.*{phrase}.*'score'"):
        quality_scores(pool(n=2, records=recs), "field", "score")


def test_errors_for_unknown_method_and_absent_data():
    with pytest.raises(SelectFlowError, match="unknown quality method 'best'"):
        quality_scores(pool(), "best")
    with pytest.raises(SelectFlowError, match="router_dump.ifd"):
        quality_scores(pool(), "combined")
    with pytest.raises(SelectFlowError, match="quality_logits"):
        quality_scores(pool(), "gate")
    with pytest.raises(SelectFlowError, match="needs the name"):
        quality_scores(pool(), "field")


def test_unfinished_is_relative_to_the_pools_median_end():
    # a model that ends every response with low p(eos) drops none of them ...
    s = pool(n=4, nll=[1.0] * 4, alone=[2.0] * 4, eos=[3.0, 3.2, 2.9, 0.1], records=[norm("an answer")] * 4)
    a = assess(s, "combined")
    assert a.keep.all() and a.score[3] > a.score[0]  # the score still uses nll_eos
    # ... and drops one whose end is under half as likely as the median's (median 2.95 + log 2 = 3.64)
    s = pool(n=5, nll=[1.0] * 5, alone=[2.0] * 5, eos=[3.0, 3.2, 2.9, 0.1, 3.7], records=[norm("an answer")] * 5)
    assert assess(s, "combined").reason.tolist() == ["", "", "", "", "unfinished"]


def naive_z(x, groups, judged, min_group):
    """Robust z by hand: per group median and 1.4826 MAD of its judged finite values (pooled when small)."""
    x = np.asarray(x, dtype=float)
    ok = judged & np.isfinite(x)

    def stats(v):
        med = np.median(v)
        return med, 1.4826 * np.median(np.abs(v - med))

    out = np.full(len(x), np.nan)
    for g in set(groups):
        m = np.array([gg == g for gg in groups])
        med, mad = stats(x[m & ok]) if (m & ok).sum() >= min_group else stats(x[ok])
        out[m] = (x[m] - med) / mad
    return out


def test_robust_z_against_numpy_median_mad_per_dataset():
    rng = np.random.default_rng(0)
    groups = np.array(["a"] * 60 + ["b"] * 70 + ["c"] * 5, dtype=object)
    x = np.concatenate([rng.normal(0, 1, 60), rng.normal(10, 3, 70), rng.normal(5, 1, 5)])
    x[3], x[70] = np.nan, 40.0  # a NaN is not judged; an outlier in b
    judged = np.ones(len(x), dtype=bool)
    judged[[10, 80]] = False  # left out of the statistics, still scored
    z = robust_z(x, groups, judged)
    want = naive_z(x, groups, judged, MIN_GROUP)
    np.testing.assert_allclose(z, want, rtol=1e-9)
    assert np.isnan(z[3]) and z[70] > 5  # 40 is far out in b's spread, not in a's terms
    # c (5 samples, under MIN_GROUP) is judged by the whole pool, not by its own median
    assert not np.allclose(z[130:], naive_z(x, ["c"] * len(x), judged & (groups == "c"), 1)[130:])


def test_robust_z_falls_back_to_mean_deviation_when_mad_is_zero():
    x = np.array([1.0] * 60 + [2.0, 5.0])
    z = robust_z(x)
    mean_ad = np.mean(np.abs(x - 1.0))
    np.testing.assert_allclose(z, (x - 1.0) / (math.sqrt(math.pi / 2) * mean_ad))
    assert robust_z(np.array([3.0] * 60)).tolist() == [0.0] * 60


def ifd_shard(ifd_by_dataset, seed=0):
    """Records of datasets with IFDs as given (alone 4.0), p(eos) alike; spread ±2 % around each value."""
    rng = np.random.default_rng(seed)
    ifd, names = [], []
    for name, values in ifd_by_dataset.items():
        for v in values:
            ifd.append(v * (1 + rng.uniform(-0.02, 0.02)))
            names.append(name)
    n = len(ifd)
    records = [{**norm(f"answer number {i} is fine"), "dataset": d} for i, d in enumerate(names)]
    eos = 0.5 + rng.uniform(-0.01, 0.01, n)
    return shard(n=n, nll=4.0 * np.array(ifd), alone=[4.0] * n, eos=eos, records=records), np.array(ifd)


def test_pool_cut_drops_junk_between_clean_and_the_fixed_cut_per_dataset():
    # dataset a: clean records at IFD 0.70 and 3 junk at 0.87 (under ifd>=1: the fixed cut keeps them);
    # dataset b: every record at 0.87, its normal level: nothing there is far out
    s, ifd = ifd_shard({"a": [0.70] * 97 + [0.87] * 3, "b": [0.87] * 80})
    fixed = assess(as_pool(s), "combined")
    assert fixed.keep.all()
    a = assess(as_pool(s), "combined", cut="pool", cut_z=3.5)
    junk = np.zeros(len(ifd), dtype=bool)
    junk[97:100] = True
    assert a.reason[junk].tolist() == ["outlier:log_ifd"] * 3
    assert a.keep[~junk].all()
    np.testing.assert_array_equal(a.score, fixed.score)  # the cut drops; the score stays the method's
    # the same verdicts as a robust z by hand on log IFD (the other signals: nothing far out)
    want = (
        naive_z(
            np.log(ifd.astype(np.float32)),
            [json.loads(r)["dataset"] for r in s.record],
            np.ones(len(ifd), dtype=bool),
            MIN_GROUP,
        )
        > 3.5
    )
    np.testing.assert_array_equal(~a.keep, want)
    # every method but field gets the cut
    assert assess(as_pool(s), "perplexity", cut="pool", cut_z=3.5).reason[junk].tolist() == ["outlier:log_ifd"] * 3
    # judged as one pool (no dataset names), b's normal level would be far out: all of b dropped
    s.record = np.array(
        [json.dumps({k: v for k, v in json.loads(r).items() if k != "dataset"}) for r in s.record], dtype=object
    )
    assert (~assess(as_pool(s), "combined", cut="pool", cut_z=3.5).keep[100:]).all()


def test_pool_cut_keeps_the_fixed_drops_and_leaves_field_alone():
    s, _ = ifd_shard({"a": [0.70] * 60 + [1.2]})
    assert assess(as_pool(s), "combined", cut="pool", cut_z=3.5).reason[-1] == "ifd>=1"  # first failing check named
    recs = [{**json.loads(r), "record": {"score": float(i)}} for i, r in enumerate(s.record)]
    f = pool(n=61, nll=s.nll_response, alone=s.nll_response_alone, records=recs)
    assert assess(f, "field", "score", cut="pool", cut_z=3.5).keep.all()


def test_pool_cut_needs_a_known_cut_and_a_positive_z():
    s = as_pool(ifd_shard({"a": [0.7] * 60})[0])
    with pytest.raises(SelectFlowError, match="quality cut 'median'"):
        assess(s, "combined", cut="median", cut_z=3.0)
    with pytest.raises(SelectFlowError, match="quality_cut_z"):
        assess(s, "combined", cut="pool")


@pytest.mark.parametrize("whole", [False, True])
def test_selection_quality_cut_pool_reaches_the_quality_table(tmp_path, whole):
    import pandas as pd

    from selectflow.config import selection_section
    from selectflow.router.routerfile import write_router_shard
    from selectflow.stages.select import build_candidates
    from tests.pool_reference import build_candidates_whole

    s, _ = ifd_shard({"a": [0.70] * 97 + [0.87] * 3, "b": [0.87] * 80})
    s.moe_probs = np.random.default_rng(1).dirichlet(np.ones(4), size=(len(s), 2)).astype(np.float32)
    paths = []
    for k, part in enumerate((slice(0, 90), slice(90, None))):  # the junk of a spans both shards
        piece = RouterShard(
            sample_id=s.sample_id[part],
            moe_probs=s.moe_probs[part],
            nll_response=s.nll_response[part],
            n_tokens=s.n_tokens[part],
            n_response_tokens=s.n_response_tokens[part],
            nll_response_alone=s.nll_response_alone[part],
            nll_eos=s.nll_eos[part],
            record=s.record[part],
        )
        paths.append(tmp_path / f"shard_{k}.h5")
        write_router_shard(paths[-1], piece)
    reasons = {}
    build = build_candidates_whole if whole else build_candidates
    for cut in ("fixed", "pool"):
        sel = selection_section(quality_method="combined", quality_cut=cut, selection_percentage=0.5, device="cpu")
        build(paths, tmp_path / f"{cut}.h5", tmp_path / f"{cut}.tsv", sel)
        table = pd.read_csv(tmp_path / f"{cut}.tsv", sep="\t").set_index("sample_id")
        reasons[cut] = table["reason"]
    junk = [f"s{i}" for i in range(97, 100)]
    assert not reasons["fixed"][junk].str.startswith("outlier").any()
    assert reasons["pool"][junk].tolist() == ["outlier:log_ifd"] * 3
    assert not reasons["pool"].drop(junk).str.startswith("outlier").any()
