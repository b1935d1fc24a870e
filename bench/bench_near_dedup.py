"""Near-duplicate dedup (selectflow.select.dedup): recall on planted near-duplicates, false merges, time and memory.

Usage: python bench/bench_near_dedup.py [--base 2000] [--planted 400] [--scale 100000] [--thresholds 0.5,0.6,0.7,0.8]

* Text: real English, the docstrings of this Python's standard library (offline, the same on
  every machine with this Python), 25+ words each, split into instruction (first sentence)
  and answer (the rest).
* Planted near-duplicates: copies of ``--planted`` of them with 1-3 words replaced, or two
  words swapped, or a word moved, or one word replaced plus a swap ("a few words changed or
  reordered"); recall = planted copies dropped as a duplicate of their source. Every copy also
  changes format (Alpaca -> messages with a system turn), which exact dedup must see through too.
* False merges: on the demo pool (selectflow.data.demo, 3000 records; its planted
  near-duplicates, ``duplicate_of``, are true merges) and among the docstrings that were not
  planted: samples dropped as near-duplicates of a sample that is not their planted source.
* Signatures: datasketch (the method) and rensa (RMinHash), the same LSH and check after.
* Scale: ``--scale`` records streamed in shards of 1000 (keys kept per shard, as
  build_candidates does), then the dedup pass; time and peak RSS, each engine in a fresh
  process. The baseline is the same process without the dedup (reading and keeping the texts'
  digests only).

The label fields are read here, never by the selection code.
"""

from __future__ import annotations

import argparse
import ast
import json
import random
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from selectflow.data.demo import make_demo_pool  # noqa: E402
from selectflow.data.records import prompt_and_response  # noqa: E402
from selectflow.select import dedup, minhash  # noqa: E402


def docstrings(min_words: int = 25) -> list[str]:
    """Distinct docstrings (whitespace collapsed) of the standard library, in a fixed order."""
    seen, out = set(), []
    for path in sorted(Path(sysconfig.get_paths()["stdlib"]).rglob("*.py")):
        if "test" in path.parts or "site-packages" in path.parts:
            continue
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError, ValueError):
            continue
        for node in ast.walk(tree):
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                doc = ast.get_docstring(node)
                if doc:
                    text = " ".join(doc.split())
                    if len(text.split()) >= min_words and text not in seen:
                        seen.add(text)
                        out.append(text)
    return out


def alpaca(text: str) -> dict:
    cut = text.find(". ")
    cut = cut + 1 if 0 < cut < len(text) - 20 else len(text) // 2
    return {"instruction": text[:cut].strip(), "output": text[cut:].strip()}


def as_messages(rec: dict) -> dict:
    return {
        "messages": [
            {"role": "system", "content": "You are a helpful assistant."},
            {"role": "user", "content": rec["instruction"]},
            {"role": "assistant", "content": rec["output"]},
        ]
    }


def normalised(rec: dict, sid: str) -> dict:
    fmt = "messages" if "messages" in rec else "alpaca"
    prompt, response = prompt_and_response(rec, fmt)
    return {"sample_id": sid, "dataset": fmt, "prompt": prompt, "response": response, "record": rec}


def perturb(text: str, rng: random.Random, vocab: list[str]) -> tuple[str, str]:
    """A few words changed or reordered; and which edit it was."""
    words = text.split()
    kind = rng.choice(["replace1", "replace2", "replace3", "swap", "move", "replace1_swap"])
    if kind.startswith("replace"):
        for at in rng.sample(range(len(words)), int(kind[7])):
            words[at] = rng.choice(vocab)
    if kind.endswith("swap"):
        at = rng.randrange(len(words) - 1)
        words[at], words[at + 1] = words[at + 1], words[at]
    if kind == "move":
        word = words.pop(rng.randrange(len(words)))
        words.insert(rng.randrange(len(words) + 1), word)
    return " ".join(words), kind


def rensa_minhash(grams: list[bytes]) -> np.ndarray:
    from rensa import RMinHash

    m = RMinHash(num_perm=minhash.NUM_PERM, seed=minhash.MINHASH_SEED)
    m.update([g.decode() for g in grams])
    return np.asarray(m.digest(), dtype=np.uint32)


def signatures(parts: list[tuple[str, str]], engine: str):
    """minhash.signatures with the engine's MinHash (datasketch: the method's)."""
    return minhash.signatures(parts, **({} if engine == "datasketch" else {"minhash": rensa_minhash}))


def near_keys(parts: list[tuple[str, str]], threshold: float, engine: str) -> dict:
    """dedup.near_keys of (text, answer) pairs with the engine's MinHash."""
    return {
        **minhash.keys_of_signatures(*signatures(parts, engine), threshold),
        "near_numbers": dedup.number_keys([t for t, _ in parts]),
    }


def run_dedup(records: list[dict], threshold: float, engine: str, seed: int = 0):
    """Exact then near dedup of ``records`` in a random quality order; (keep, reason, similarity, seconds)."""
    n = len(records)
    ids = np.array([r["sample_id"] for r in records], dtype=object)
    order = np.random.default_rng(seed).permutation(n)
    keep, reason, sim = np.ones(n, bool), np.full(n, "", dtype=object), np.full(n, np.nan)
    t0 = time.perf_counter()
    text = dedup.text_keys(records, system_turns=False)
    dedup._drop_repeats(order, text[order], ids, keep, reason, sim)
    keys = near_keys([dedup.near_parts(r, system_turns=False) for r in records], threshold, engine)
    dedup.drop_near_duplicates(
        order, keys, threshold, ids, keep, reason, sim, lambda rows: [records[i] for i in rows], system_turns=False
    )
    return keep, reason, sim, time.perf_counter() - t0


def quality_of_dedup(args) -> list[dict]:
    docs = docstrings()
    rng = random.Random(0)
    rng.shuffle(docs)
    base = docs[: args.base]
    vocab = sorted({w for d in base for w in d.split() if w.isalpha()})
    records = [normalised(alpaca(t), f"doc:{i}") for i, t in enumerate(base)]
    planted, kinds = {}, {}
    for j, i in enumerate(rng.sample(range(len(base)), args.planted)):
        sid = f"copy:{j}"
        planted[sid] = f"doc:{i}"
        text, kinds[sid] = perturb(base[i], rng, vocab)
        kinds[sid] += " (<40 words)" if len(base[i].split()) < 40 else " (40+ words)"
        records.append(normalised(as_messages(alpaca(text)), sid))
    demo = make_demo_pool(3000, seed=0)
    demo_records = [normalised({k: r[k] for k in ("instruction", "input", "output")}, r["id"]) for r in demo]
    demo_truth = {r["id"]: r.get("duplicate_of") for r in demo}
    exact = {}
    for r, key in zip(demo_records, dedup.text_keys(demo_records, system_turns=False)):
        exact.setdefault(key, r["sample_id"])
    rows = []
    for shingle in args.shingles:
        minhash.SHINGLE_WORDS = shingle
        for threshold in args.thresholds:
            for engine in args.engines:
                keep, reason, sim, secs = run_dedup(records, threshold, engine)
                of = {
                    r["sample_id"]: reason[i][13:]
                    for i, r in enumerate(records)
                    if reason[i].startswith("duplicate_of:")
                }

                def root(sid, of=of):  # the kept sample a dropped one stands for (duplicate_of chains end at one)
                    while sid in of:
                        sid = of[sid]
                    return sid

                hit = {c: root(c) == root(src) for c, src in planted.items()}  # either copy stays, the other goes
                found = sum(hit.values())
                # a merge of two samples that are not one planted pair (or two copies of one source)
                wrong = [(sid, src) for sid, src in of.items() if planted.get(sid, sid) != planted.get(src, src)]
                wrong_docs = len(wrong)
                keep_d, reason_d, sim_d, _ = run_dedup(demo_records, threshold, engine)
                near = [
                    (r["sample_id"], reason_d[i][13:])
                    for i, r in enumerate(demo_records)
                    if reason_d[i].startswith("duplicate_of:") and sim_d[i] < 1
                ]
                key_of = dict(
                    zip((r["sample_id"] for r in demo_records), dedup.text_keys(demo_records, system_turns=False))
                )

                def true_pair(a, b, key_of=key_of):
                    root = lambda s: exact[key_of[s]]  # noqa: E731 - the first record with the same text
                    src = lambda s: root(demo_truth.get(s) or s)  # noqa: E731 - a planted copy's source
                    return src(a) == src(b)

                false_demo = sum(not true_pair(a, b) for a, b in near)
                rows.append(
                    {
                        "shingle": shingle,
                        "threshold": threshold,
                        "engine": engine,
                        "recall": found / len(planted),
                        "false_docs": wrong_docs / len(base),
                        "demo_near_drops": len(near),
                        "false_demo": false_demo / len(demo_records),
                        "seconds_per_1k": 1000 * secs / len(records),
                    }
                )
                print(
                    f"shingle {shingle} threshold {threshold:.2f} {engine:10s}: recall {found}/{len(planted)} "
                    f"= {found / len(planted):.1%}; false merges: docstrings {wrong_docs}/{len(base)} "
                    f"= {wrong_docs / len(base):.2%}, demo pool {false_demo}/{len(demo_records)} "
                    f"= {false_demo / len(demo_records):.2%} (near drops there {len(near)}); "
                    f"{1000 * secs / len(records):.2f} s per 1000 records",
                    flush=True,
                )
                if engine == args.engines[0] and threshold == args.thresholds[0]:
                    text = {r["sample_id"]: dedup.near_text(r, system_turns=False) for r in records}
                    for a, b in wrong[:3]:
                        print(f"    a docstring merge not planted: {text[a][:90]!r} ~ {text[b][:90]!r}")
                if engine == args.engines[0]:
                    by_kind = {}
                    for c, k in kinds.items():
                        by_kind.setdefault(k, []).append(hit[c])
                    print(
                        "    recall by edit: " + ", ".join(f"{k} {sum(v)}/{len(v)}" for k, v in sorted(by_kind.items()))
                    )
    return rows


SCALE_CHILD = r"""
import json, resource, sys, time
from types import SimpleNamespace
import numpy as np
sys.path.insert(0, sys.argv[1])
sys.path.insert(0, sys.argv[1] + "/bench")
from bench_near_dedup import docstrings, normalised, alpaca, near_keys
from selectflow.schema import schema_default
from selectflow.select import dedup

n, shard, engine, threshold = int(sys.argv[2]), 1000, sys.argv[3], float(sys.argv[4])
sentences = [s.strip() + "." for d in docstrings() for s in d.split(". ") if len(s.split()) >= 4]
rng = np.random.default_rng(0)
if engine not in ("none", "answers"):  # imports and the LSH shape (datasketch pulls in scipy) before the start line
    near_keys([("warm up now", "warm up now")], threshold, engine)
# engine answers: the shared-answer pass at the schema's defaults instead of near-duplicates
MIN_WORDS = schema_default("selection", "shared_answer_min_words")
MAX_SAMPLES = schema_default("selection", "shared_answer_max_samples")
base_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def record(pick, i):
    return normalised(alpaca(" ".join(sentences[j] for j in pick)), f"r:{i}")


kept_picks = []
t0 = time.perf_counter()
parts = {"text": []}
for lo in range(0, n, shard):  # one shard of records at a time; only the keys stay
    # each record: 2-8 random docstring sentences (records share a sentence now and then, as real pools do)
    picks = [rng.choice(len(sentences), size=rng.integers(2, 9), replace=False) for _ in range(min(shard, n - lo))]
    recs = [record(p, lo + i) for i, p in enumerate(picks)]
    kept_picks.extend(picks)  # what the records are made of: the dedup pass reads some back, as from shards
    parts["text"].append(dedup.text_keys(recs, system_turns=False))
    if engine == "answers":
        parts.setdefault("answer", []).append(dedup.answer_keys(recs, MIN_WORDS))
    elif engine != "none":
        keys = near_keys([dedup.near_parts(r, system_turns=False) for r in recs], threshold, engine)
        for k, v in keys.items():
            parts.setdefault(k, []).append(v)
t_keys = time.perf_counter() - t0
ids = np.array([f"r:{i}" for i in range(n)], dtype=object)
order = rng.permutation(n)
keep, reason, sim = np.ones(n, bool), np.full(n, "", dtype=object), np.full(n, np.nan)
dedup._drop_repeats(order, np.concatenate(parts["text"])[order], ids, keep, reason, sim)
near = 0
t1 = time.perf_counter()
if engine == "answers":  # the workflow's pass: drop_duplicates on the kept samples, best first = order
    score = np.empty(n)
    score[order] = -np.arange(n, dtype=float)
    answer_key = np.concatenate(parts["answer"])
    pool = SimpleNamespace(sample_id=ids, text_key=None, routing_key=None, near={}, answer_key=answer_key)
    near = dedup.drop_duplicates(pool, score, keep, reason, sim, system_turns=False, answer_max_samples=MAX_SAMPLES)
elif engine != "none":
    keys = {k: np.concatenate(v) for k, v in parts.items() if k != "text"}
    near = dedup.drop_near_duplicates(order, keys, threshold, ids, keep, reason, sim,
                                      lambda rows: [record(kept_picks[i], i) for i in rows], system_turns=False)
t_pass = time.perf_counter() - t1
print(json.dumps({"engine": engine, "n": n, "keys_s": t_keys, "pass_s": t_pass, "near": near,
                  "exact": int((sim == 1).sum()),
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "start_rss_mb": base_rss / 1024}))
"""


def scale(args) -> None:
    rows = []
    for engine in ["none", *args.engines]:
        out = subprocess.run(
            [sys.executable, "-c", SCALE_CHILD, str(REPO), str(args.scale), engine, str(args.thresholds[0])],
            capture_output=True,
            text=True,
            check=True,
        )
        row = json.loads(out.stdout.strip().splitlines()[-1])
        rows.append(row)
        print(
            f"{args.scale} records, {engine:10s}: keys {row['keys_s']:.1f} s (streamed, 1000 a shard), "
            f"dedup pass {row['pass_s']:.2f} s, {row['near']} {'shared answers' if engine == 'answers' else 'near'} "
            f"and {row['exact']} exact duplicates; "
            f"peak RSS {row['peak_rss_mb']:.0f} MB ({row['start_rss_mb']:.0f} MB after imports)",
            flush=True,
        )
    base = rows[0]
    for row in rows[1:]:
        print(
            f"{row['engine']}: {(row['keys_s'] + row['pass_s']) / max(base['keys_s'], 1e-9):.1f}x the time of "
            f"reading the records and their exact keys alone ({base['keys_s']:.1f} s), "
            f"+{row['peak_rss_mb'] - base['peak_rss_mb']:.0f} MB peak RSS, "
            f"+{(row['peak_rss_mb'] - row['start_rss_mb']) - (base['peak_rss_mb'] - base['start_rss_mb']):.0f} MB "
            "of it past the imports"
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--base", type=int, default=2000, help="docstrings in the recall pool")
    ap.add_argument("--planted", type=int, default=400, help="near-duplicates planted among them")
    ap.add_argument("--thresholds", default="0.5,0.6,0.7,0.8")
    ap.add_argument("--shingles", default="3", help="words per shingle, comma-separated (the method uses 3)")
    ap.add_argument(
        "--engines",
        default="datasketch,rensa",
        help="MinHash engines; with --only-scale also 'answers': the shared-answer pass (selection.shared_answer_*)",
    )
    ap.add_argument("--scale", type=int, default=100_000, help="records of the time and memory run (0: skip)")
    ap.add_argument("--only-scale", action="store_true", help="only the time and memory run")
    args = ap.parse_args()
    args.thresholds = [float(t) for t in args.thresholds.split(",")]
    args.shingles = [int(s) for s in args.shingles.split(",")]
    args.engines = args.engines.split(",")
    if not args.only_scale:
        quality_of_dedup(args)
    if args.scale:
        scale(args)


if __name__ == "__main__":
    main()
