"""Scale of the selection steps: time and peak RSS of candidates, FPS (1 and 2 ranks), selected_data, the chain.

Synthetic router shards in the real layout (``selectflow.router.routerfile``): L=16 layers,
E=64 experts (OLMoE-sized routing, 4 KB a sample), ~1 KB JSON records, NLLs and ``nll_eos``
(quality method ``auto`` = ``combined``). Each step runs in a fresh Python process, so its
peak RSS (``ru_maxrss``) is its own. Baselines measured in the same run:

* ``candidates`` streamed (this code) vs the in-memory path of before (``concat_shards`` of the
  whole pool, then the same scoring: ``tests/pool_reference.py``) — the old path is skipped above
  ``--old-max`` samples;
* ``selected_data`` reading only the selected rows vs reading every shard whole;
* FPS on 2 gloo ranks (torchrun) vs one process, same picks checked;
* ``compare_pool`` (compare's pool of every kept sample: two passes, features written to their rows)
  vs the code before (stacked and re-ordered: ``tests/pool_reference.py``), same pool checked.

``--steps chain`` runs ``continue_selection`` (candidates, FPS, selected_data in one process, as
``selectflow continue-selection`` does) and checks its peak RSS against the bound
1.5 × candidate feature bytes + 1 GiB; it prints each step's time and the peak RSS so far.

    python bench/bench_scale.py --n 20000              # a quick run
    python bench/bench_scale.py --n 1000000 --k 10000 --candidates 0.1 --steps chain   # the 1M check
    python bench/bench_scale.py --n 1000000 --candidates 0.1 --steps candidates,candidates_nogates --gates

``--gates``: the shards also hold ``quality_logits`` [n, L, 2] float32, as a model with Select-MoE's
quality gates dumps them; ``candidates_nogates`` then runs ``candidates`` again on a copy of the
shards without them (a baseline in the same run: what the gates cost).

Prints one line per step and the ratios.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
L, E = 16, 64
WORDS = (
    "model route expert token layer data sample quality answer question explain because result value "
    "method train select pool window index memory shard"
).split()


# records are built from pre-built blocks of words: realistic size and text, distinct, and
# fast enough to write 2M of them (a Python loop over 150 words a record took ~35 min)
BLOCK_WORDS, N_BLOCKS, BLOCKS_PROMPT, BLOCKS_RESPONSE = 10, 4096, 4, 11


def word_blocks(seed: int = 0) -> np.ndarray:
    """[N_BLOCKS] str: runs of BLOCK_WORDS random WORDS."""
    rng = np.random.default_rng(seed)
    words = np.array(WORDS, dtype=object)[rng.integers(0, len(WORDS), size=(N_BLOCKS, BLOCK_WORDS))]
    return np.array([" ".join(row) for row in words], dtype=object)


def make_shard(path: Path, lo: int, m: int, seed: int, gates: bool = False) -> None:
    """Shard of samples ``lo`` .. ``lo + m``: Dirichlet(0.3) routing, ~1 KB records, NLLs, with ``gates`` the
    quality gates' logits [m, L, 2] (standard normal); skipped if complete."""
    from selectflow.router.routerfile import RouterShard, shard_header, write_router_shard
    from selectflow.runtime.errors import SelectFlowError

    if path.exists():
        try:
            if len(shard_header(path)[1]) == m:
                return
        except SelectFlowError:
            pass
    rng = np.random.default_rng([seed, lo])
    gamma = rng.standard_gamma(0.3, size=(m, L, E), dtype=np.float32)
    probs = gamma / gamma.sum(axis=2, keepdims=True)
    blocks = word_blocks(seed)[rng.integers(0, N_BLOCKS, size=(m, BLOCKS_PROMPT + BLOCKS_RESPONSE))]
    ids = [f"bench:{i}" for i in range(lo, lo + m)]
    records = []
    for i, sid, row in zip(range(lo, lo + m), ids, blocks):
        prompt, response = " ".join(row[:BLOCKS_PROMPT]), " ".join(row[BLOCKS_PROMPT:])
        records.append(
            json.dumps(
                {
                    "sample_id": sid,
                    "dataset": "bench",
                    "line": i,
                    "prompt": prompt,
                    "response": response,
                    "record": {"instruction": prompt, "output": response},
                }
            )
        )
    alone = rng.uniform(1.0, 3.0, size=m).astype(np.float32)
    write_router_shard(
        path,
        RouterShard(
            sample_id=np.array(ids, dtype=object),
            moe_probs=probs,
            nll_response=(alone * rng.uniform(0.3, 1.1, size=m)).astype(np.float32),
            n_tokens=np.full(m, 300, dtype=np.int32),
            n_response_tokens=np.full(m, 200, dtype=np.int32),
            nll_response_alone=alone,
            nll_eos=rng.uniform(0.1, 1.0, size=m).astype(np.float32),
            record=np.array(records, dtype=object),
            quality_logits=rng.standard_normal((m, L, 2), dtype=np.float32) if gates else None,
        ),
    )


def make_shards(
    root: Path, n: int, shard_size: int, seed: int = 0, workers: int = 2, gates: bool = False
) -> list[Path]:
    """``n`` samples in shards of ``shard_size`` under ``root``, written by ``workers`` processes (complete ones
    kept); ``gates``: with quality gates' logits."""
    from concurrent.futures import ProcessPoolExecutor

    root.mkdir(parents=True, exist_ok=True)
    jobs = [
        (root / f"shard_{k:05d}.h5", lo, min(shard_size, n - lo), seed, gates)
        for k, lo in enumerate(range(0, n, shard_size))
    ]
    with ProcessPoolExecutor(workers) as pool:
        list(pool.map(make_shard, *zip(*jobs)))
    return [path for path, *_ in jobs]


# each step: a Python snippet run in a fresh process; argv: json of its arguments
STEP = r"""
import json, resource, sys, time
args = json.loads(sys.argv[1])
from selectflow.config import selection_section
sel = selection_section(args["sel"])
t = time.perf_counter()
if args["step"] == "candidates":
    from selectflow.stages.select import build_candidates
    build_candidates(args["paths"], args["out"] + "/candidates.h5", args["out"] + "/candidates_quality.tsv", sel)
elif args["step"] == "candidates_old":
    # the code before streaming: the whole pool in memory (concat_shards), then the same functions
    from tests.pool_reference import build_candidates_whole
    build_candidates_whole(args["paths"], args["out"] + "/candidates_old.h5",
                           args["out"] + "/candidates_quality_old.tsv", sel)
elif args["step"].startswith("compare_"):
    # compare's steps at compare's defaults: its pool (rule compare_pool) over the candidates step's outputs,
    # and its random baseline on that pool
    import yaml
    from selectflow.config import CompareConfig, section
    from selectflow.configdoc import SCHEMA
    from selectflow.schema import with_defaults
    from selectflow.stages import compare
    raw = {"datasets": {"a": "a.jsonl"}, "model": {"path": "m"}}
    cmp = section(CompareConfig, {**with_defaults(raw, yaml.safe_load(SCHEMA.read_text()))["compare"], "train": None})
    if args["step"] == "compare_pool":
        build_pool = compare.build_pool
    elif args["step"] == "compare_pool_old":  # every shard's kept features stacked, then re-ordered (three copies)
        from tests.pool_reference import build_compare_pool_concat as build_pool
    if args["step"] in ("compare_pool", "compare_pool_old"):
        build_pool(args["paths"], args["out"] + "/candidates.h5", args["out"] + "/candidates_quality.tsv",
                   args["out"] + f"/{args['step']}.h5", cmp, sel)
    else:
        if args["step"] == "compare_random_old":  # the same job, reading the pool's features as it did before
            read_pool = compare.read_pool
            compare.read_pool = lambda path, features=True: read_pool(path)
        from selectflow.select import baselines
        if args["step"] == "compare_semdedup_old":  # its walk before the blocks: a distance call a row
            from tests.pool_reference import near_in_order_row_by_row
            baselines._near_in_order = near_in_order_row_by_row
        if args["step"] == "compare_score_first_old":  # before: every feature in memory, a kept row against all
            from tests.pool_reference import score_first_walk_whole
            baselines.score_first_walk = score_first_walk_whole
            compare._pool_for = lambda method, path: compare.read_pool(path)
        method = args["step"].removeprefix("compare_").removesuffix("_old")
        compare.pick_baseline(method, args["out"] + "/compare_pool.h5", args["out"] + f"/{args['step']}.tsv", cmp)
elif args["step"] == "fps":
    from selectflow.stages.select import run_fps
    run_fps(args["out"] + "/candidates.h5", args["out"] + f"/curve_{sel.fps_gpus}.tsv", sel)
elif args["step"] == "selected_data":
    from selectflow.stages.select import write_selection
    write_selection(args["out"] + "/curve_1.tsv", args["out"] + "/candidates_quality.tsv", args["paths"],
                    args["out"] + "/selected.jsonl", args["out"] + "/summary.tsv", args["out"] + "/quality.tsv")
elif args["step"] == "selected_data_old":
    # before: every shard read whole to find the selected records
    from selectflow.router.routerfile import read_router_shard
    from selectflow.runtime.tables import read_tsv
    wanted = set(read_tsv(args["out"] + "/curve_1.tsv", "curve")["sample_id"])
    found = {}
    for p in args["paths"]:
        s = read_router_shard(p)
        found.update({sid: json.loads(r) for sid, r in zip(s.sample_id, s.record) if sid in wanted})
    assert len(found) == len(wanted)
elif args["step"] == "chain":
    # continue-selection in this one process; each of its steps reports its time and the peak RSS so far
    import resource
    from selectflow.stages import select as stage
    def timed(fn):
        def run(*a, **kw):
            t0 = time.perf_counter()
            out = fn(*a, **kw)
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
            print("STEP " + json.dumps({"step": fn.__name__, "seconds": time.perf_counter() - t0, "peak_rss": peak}),
                  flush=True)
            return out
        return run
    from selectflow.select import candidates
    candidates.drop_duplicates = timed(candidates.drop_duplicates)
    for name in ("build_candidates", "run_fps", "write_selection"):
        setattr(stage, name, timed(getattr(stage, name)))
    stage.continue_selection(args["out"] + "/shards", args["out"] + "/chain/selected_data.jsonl", sel)
seconds = time.perf_counter() - t
# the FPS ranks are children (torchrun's): the larger of this process and its largest child
peak = max(resource.getrusage(who).ru_maxrss for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)) * 1024
print("RESULT " + json.dumps({"seconds": seconds, "peak_rss": peak}))
"""


def same_h5(path_a, path_b, rows: int = 65536) -> bool:
    """The two HDF5 files hold the same datasets, compared ``rows`` rows at a time: a step forked from this
    process would start at its peak RSS (``ru_maxrss`` survives fork and exec), so it never holds them whole."""
    import h5py

    with h5py.File(path_a) as a, h5py.File(path_b) as b:
        return sorted(a) == sorted(b) and all(
            a[name].shape == b[name].shape
            and all(
                np.array_equal(a[name][lo : lo + rows], b[name][lo : lo + rows]) for lo in range(0, len(a[name]), rows)
            )
            for name in a
        )


def run_step(step: str, args: dict) -> dict:
    """Run ``step`` in a fresh process; print its time and peak RSS as soon as it ends (a 2M run takes ~15 min)."""
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.Popen(
        [sys.executable, "-c", STEP, json.dumps({**args, "step": step})],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    result = None
    for line in proc.stdout:
        if line.startswith("STEP "):
            inner = json.loads(line[5:])
            print(
                f"    {inner['step']}: {inner['seconds']:.1f} s, peak RSS so far {inner['peak_rss'] / 2**30:.2f} GiB",
                flush=True,
            )
        elif line.startswith("RESULT "):
            result = json.loads(line[7:])
    err = proc.stderr.read()
    if proc.wait() != 0 or result is None:
        raise SystemExit(f"step {step} failed:\n{err[-3000:]}")
    ranks = f" on {args['sel']['fps_gpus']} ranks" if "fps_gpus" in args["sel"] else ""
    print(f"  {step}{ranks}: {result['seconds']:.1f} s, peak RSS {result['peak_rss'] / 2**30:.2f} GiB", flush=True)
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=20000, help="pool samples (default %(default)s)")
    ap.add_argument("--shard-size", type=int, default=5000)
    ap.add_argument("--k", type=int, default=50, help="FPS picks (the FPS time scales linearly in k)")
    ap.add_argument("--candidates", type=float, default=0.2, help="importance_selection_percentage")
    ap.add_argument("--old-max", type=int, default=300000, help="skip the in-memory baselines above this N")
    ap.add_argument("--strata", type=int, default=40, help="routing_strata (default %(default)s, the schema's)")
    ap.add_argument(
        "--steps",
        default="candidates,fps,ranks,selected_data",
        help="comma-separated, of candidates, compare_pool (after candidates: compare's pool of every kept "
        "sample, against the code before it), compare_semdedup (with compare_pool: compare's semdedup baseline "
        "job, against its walk a row a call before), compare_score_first (the same for score_first, against its "
        "walks over every feature in memory before), fps, ranks (FPS on 2 gloo ranks), selected_data, chain "
        "(continue-selection in one process), chain_exact_only (the same without near-duplicate "
        "dedup), candidates_nogates (with --gates: candidates on the same shards without the gates' "
        "logits); default %(default)s",
    )
    ap.add_argument("--metric", default=None, help="selection.metric (default: the schema's)")
    ap.add_argument("--gates", action="store_true", help="the shards hold quality gates' logits [n, L, 2]")
    ap.add_argument(
        "--workdir",
        default=None,
        help="folder to hold the run's temporary folder of shards (created if missing; default: the system's)",
    )
    args = ap.parse_args()
    for step in ("compare_semdedup", "compare_score_first"):
        if step in args.steps.split(",") and "compare_pool" not in args.steps.split(","):
            ap.error(f"--steps {step} needs compare_pool (the pool it picks from)")
    if args.workdir is not None:
        Path(args.workdir).mkdir(parents=True, exist_ok=True)

    with tempfile.TemporaryDirectory(dir=args.workdir) as work:
        work = Path(work)
        t = time.perf_counter()
        paths = make_shards(work / "shards", args.n, args.shard_size, gates=args.gates)
        size = sum(p.stat().st_size for p in paths)
        print(
            f"N={args.n:,}: {len(paths)} shards, {size / 2**30:.2f} GiB on disk, written in "
            f"{time.perf_counter() - t:.0f} s",
            flush=True,
        )
        sel = {
            "selection_percentage": args.k / args.n,
            "importance_selection_percentage": args.candidates,
            "routing_strata": args.strata,
            "device": "cpu",
            "distance_batch_size": 65536,
        }
        if args.metric is not None:
            sel["metric"] = args.metric
        common = {"paths": [str(p) for p in paths], "out": str(work), "sel": sel}
        m = round(args.candidates * args.n)
        feature_bytes = m * L * E * 4
        steps = args.steps.split(",")
        rows, pool_bytes = {}, 0
        if "chain" in steps:
            rows["continue-selection (one process)"] = run_step("chain", common)
        if "chain_exact_only" in steps:  # the same with near-duplicate dedup off: what it costs
            rows["continue-selection, exact dedup only"] = run_step(
                "chain", {**common, "sel": {**sel, "near_duplicate_threshold": None}}
            )
        if "candidates" in steps:
            rows["candidates"] = run_step("candidates", common)
        if "candidates_nogates" in steps and args.gates:
            plain = make_shards(work / "shards_nogates", args.n, args.shard_size)  # the same samples, no gates
            (work / "nogates").mkdir()
            rows["candidates, no gates (baseline)"] = run_step(
                "candidates", {**common, "paths": [str(p) for p in plain], "out": str(work / "nogates")}
            )
        if "candidates" in steps and args.n <= args.old_max:
            rows["candidates (in-memory, before)"] = run_step("candidates_old", common)
            assert same_h5(work / "candidates.h5", work / "candidates_old.h5"), "candidates differ"
            assert (work / "candidates_quality.tsv").read_bytes() == (work / "candidates_quality_old.tsv").read_bytes()
        if "compare_pool" in steps:  # after candidates: compare's pool of every kept sample, and the code before
            rows["compare_pool"] = run_step("compare_pool", common)
            rows["compare_pool (stacked, before)"] = run_step("compare_pool_old", common)
            rows["compare random baseline"] = run_step("compare_random", common)
            rows["compare random baseline (features read, before)"] = run_step("compare_random_old", common)
            assert (work / "compare_random.tsv").read_bytes() == (work / "compare_random_old.tsv").read_bytes()
            assert same_h5(work / "compare_pool.h5", work / "compare_pool_old.h5"), "compare pools differ"
            import h5py

            with h5py.File(work / "compare_pool.h5") as f:
                pool_bytes = f["features"].size * 4
        if "compare_semdedup" in steps:  # after compare_pool: the semdedup baseline job, and its walk before
            rows["compare semdedup baseline"] = run_step("compare_semdedup", common)
            rows["compare semdedup baseline (a row a call, before)"] = run_step("compare_semdedup_old", common)
            assert (work / "compare_semdedup.tsv").read_bytes() == (work / "compare_semdedup_old.tsv").read_bytes()
        if "compare_score_first" in steps:  # after compare_pool: the score_first job, and its walks before
            rows["compare score_first baseline"] = run_step("compare_score_first", common)
            rows["compare score_first baseline (features in memory, before)"] = run_step(
                "compare_score_first_old", common
            )
            assert (work / "compare_score_first.tsv").read_bytes() == (
                work / "compare_score_first_old.tsv"
            ).read_bytes()
        if "fps" in steps:
            rows["fps, 1 process"] = run_step("fps", common)
        if "ranks" in steps:
            rows["fps, 2 ranks (gloo)"] = run_step("fps", {**common, "sel": {**sel, "fps_gpus": 2}})
            assert (work / "curve_1.tsv").read_bytes() == (work / "curve_2.tsv").read_bytes(), "FPS picks differ"
        if "selected_data" in steps:
            rows["selected_data"] = run_step("selected_data", common)
        if "selected_data" in steps and args.n <= args.old_max:
            rows["selected_data (whole shards, before)"] = run_step("selected_data_old", common)
    print(f"candidates: {m:,}, features {feature_bytes / 2**30:.2f} GiB; FPS k={args.k}; routing_strata {args.strata}")
    print(f"{'step':40s} {'time s':>9s} {'peak RSS GiB':>13s} {'/ bound':>8s}")
    budget = 1.5 * feature_bytes + 2**30
    # compare's pool holds every kept sample's features, not the candidates': its own bound, 1.5 x those + 1 GiB
    bound = {name: 1.5 * pool_bytes + 2**30 if name.startswith("compare") else budget for name in rows}
    for name, r in rows.items():
        print(f"{name:40s} {r['seconds']:9.1f} {r['peak_rss'] / 2**30:13.2f} {r['peak_rss'] / bound[name]:8.2f}")
    print(
        f"bound: 1.5 x candidate feature bytes + 1 GiB = {budget / 2**30:.2f} GiB"
        + (f" (compare_pool: of the kept samples' {pool_bytes / 2**30:.2f} GiB)" if "compare_pool" in rows else "")
        + "; every step of this tree "
        + (
            "within it"
            if all(r["peak_rss"] <= bound[n] for n, r in rows.items() if "before" not in n)
            else "NOT within it"
        )
    )
    for new, old in (
        ("candidates", "candidates (in-memory, before)"),
        ("selected_data", "selected_data (whole shards, before)"),
        ("compare_pool", "compare_pool (stacked, before)"),
        ("compare random baseline", "compare random baseline (features read, before)"),
        ("compare semdedup baseline", "compare semdedup baseline (a row a call, before)"),
        ("compare score_first baseline", "compare score_first baseline (features in memory, before)"),
    ):
        if old in rows:
            print(
                f"{new}: peak RSS {rows[new]['peak_rss'] / rows[old]['peak_rss']:.2f}x, time "
                f"{rows[new]['seconds'] / rows[old]['seconds']:.2f}x of before"
            )
    if "fps, 1 process" not in rows or "fps, 2 ranks (gloo)" not in rows:
        return
    one, two = rows["fps, 1 process"]["seconds"], rows["fps, 2 ranks (gloo)"]["seconds"]
    print(
        f"fps: 2 ranks take {two / one:.2f}x the time of 1 process (same picks); per step "
        f"{one / args.k * 1e3:.1f} ms vs {two / args.k * 1e3:.1f} ms (each includes reading the features)"
    )


if __name__ == "__main__":
    main()
