"""Time and peak RSS of selection.diversity's methods against FPS on N synthetic candidates.

Candidates as ``bench/bench_scale.py`` makes their routing: Dirichlet(0.3) over E experts in each
of L layers (default L=16, E=64: D = 1024 Wasserstein grid features), random quality. Each
method runs in a fresh Python process (``--one``), which builds the same seeded features, then
times the selection call alone; ``ru_maxrss`` is read before the call (features built) and
after, so ``extra MiB`` is what the method itself added at its peak. Baseline, in the same run:
streaming FPS (``selectflow.select.fps.fps_streaming``) for the same k.

    python bench/bench_diversity.py --n 100000 --k 1000            # the README's figures
    python bench/bench_diversity.py --n 20000 --k 1000 --layers 4 --experts 16   # quick

The k-NN graph of ``fps_density``, ``fps_lof``, the snapped methods and ``facility_location`` is
what the workflow builds: exact up to ``--knn-exact-max`` candidates, approximate above
(``selection.knn_exact_max`` and ``knn_probes``, the schema's defaults unless given;
``--knn-exact-max 1000000`` times the exact graph; ``bench/bench_knn.py`` compares the two).

``fps_quality`` is quality-weighted FPS (``selection.fps_weight: quality``; its weights, from
the random quality, are computed inside the timer). ``fps_density`` is density-weighted FPS
(``selection.fps_weight: density``; its weights, from the k-NN graph of ``--neighbors``, are
computed inside the timer); ``fps_lof`` the same with ``selection.fps_weight: lof`` (local
outlier factors over the same graph), ``fps_lofcut`` with ``lof_cut`` (the schema's ``lof_cut_z``),
``fps_lofcut_hold`` the same with the lowest share by the random quality held back on top
(``selection.fps_quality_hold_back``, the schema's default): the workflow's default FPS.
``fps_lofcut_relevance`` the same with the least relevant 10 % held back on top too
(``selection.fps_relevance_hold_back: 0.1``), the prompt coverage of N synthetic records (prompts of
20 and responses of 60 words drawn from a Zipf(1.3) vocabulary, made before the timer starts, as the
candidates stage reads them, in batches of 10,000) computed inside the timer (``coverage s``: that part).
``fps_lofcut_boilerplate`` the default FPS with ``selection.fps_boilerplate_cut_z`` (the schema's) on top: the
boilerplate share of the same records (their responses in sentences of 10 words; one response in 20
ends with one of 5 sign-off sentences, so some sentences recur) computed inside the timer
(``boilerplate s``: that part).
``stratified`` is ``selection.diversity: stratified`` with the default's hold-backs (``lof_cut`` over the same
graph and the quality hold-back, as ``fps_lofcut_hold``) as its weights: the draw itself is O(N) on top.
``fps_snap`` is snapped FPS (``selection.fps_snap: density``; the
k-NN graph of ``--neighbors`` it snaps over is built inside the timer); ``fps_qsnap`` the same with
``selection.fps_snap: quality`` (quality ranks instead of spreads), ``fps_lsnap`` with
``selection.fps_snap: length`` (random response tokens, 1 to 200, instead of spreads).
``target`` (selection.target) selects toward ``--targets`` synthetic target records made like
the candidates (their features are built before the timer starts).

Prints one line per method and the ratios against FPS.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
METHODS = (
    "fps",
    "fps_quality",
    "fps_density",
    "fps_lof",
    "fps_lofcut",
    "fps_lofcut_hold",
    "fps_lofcut_relevance",
    "fps_lofcut_boilerplate",
    "fps_snap",
    "fps_qsnap",
    "fps_lsnap",
    "facility_location",
    "kmeans",
    "stratified",
    "target",
)
# the methods whose FPS weight (selection.fps_weight) reads the k-NN graph
GRAPH_WEIGHTS = {
    "fps_density": "density",
    "fps_lof": "lof",
    "fps_lofcut": "lof_cut",
    "fps_lofcut_hold": "lof_cut",
    "fps_lofcut_relevance": "lof_cut",
    "fps_lofcut_boilerplate": "lof_cut",
    "stratified": "lof_cut",
}
TEXT_METHODS = ("fps_lofcut_relevance", "fps_lofcut_boilerplate")  # read the synthetic records
RELEVANCE_SHARE = 0.1  # fps_lofcut_relevance's selection.fps_relevance_hold_back
RECORD_BATCH = 10_000


def records(n: int, seed: int) -> list[dict]:
    """``n`` synthetic records: a prompt of 20 words and a response of 60 in sentences of 10, from a Zipf(1.3)
    vocabulary; one response in 20 ends with one of 5 sign-off sentences."""
    rng = np.random.default_rng(seed)
    prompt, response = rng.zipf(1.3, size=(n, 20)) % 50_000, rng.zipf(1.3, size=(n, 60)) % 50_000
    sign_off = rng.integers(0, 100, size=n)

    def answer(r, s):
        text = ". ".join(" ".join(f"w{w}" for w in r[i : i + 10]) for i in range(0, len(r), 10)) + "."
        return text + (f" I hope answer {s} helps." if s < 5 else "")

    return [
        {"prompt": " ".join(f"w{w}" for w in p), "response": answer(r, s)}
        for p, r, s in zip(prompt, response, sign_off)
    ]


def features(n: int, layers: int, experts: int, seed: int) -> np.ndarray:
    from selectflow.select.distance import features as grid

    rng = np.random.default_rng(seed)
    out = []
    for lo in range(0, n, 16384):  # in pieces: no float64 [n, L, E] temporary
        g = rng.standard_gamma(0.3, size=(min(16384, n - lo), layers, experts)).astype(np.float32)
        out.append(grid(g / g.sum(axis=2, keepdims=True), "wasserstein"))
    return np.concatenate(out)


def one(args) -> dict:
    import faiss  # noqa: F401 - imported before ``before``: the libraries' own memory is no method's
    import torch  # noqa: F401

    from selectflow.config import selection_section
    from selectflow.schema import schema_default
    from selectflow.select import diversity
    from selectflow.select.fps import Snap, fps_streaming
    from selectflow.select.quality import boilerplate_share, prompt_coverage
    from selectflow.select.target import toward_target

    x = features(args.n, args.layers, args.experts, args.seed)
    texts = records(args.n, args.seed + 4) if args.one in TEXT_METHODS else None
    extra = {}
    probes = selection_section(knn_exact_max=args.knn_exact_max, knn_probes=args.knn_probes).knn_probes_for(args.n)
    quality = np.random.default_rng(args.seed + 1).normal(size=args.n)
    tokens = np.random.default_rng(args.seed + 3).integers(1, 201, size=args.n)  # fps_lsnap's response tokens
    ids = np.array([f"s{i:07d}" for i in range(args.n)], dtype=object)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    t0 = time.perf_counter()
    if args.one == "fps":
        picks = fps_streaming(
            x, args.k, device=args.device, chunk=args.chunk, log_interval=10**9, metric="wasserstein"
        ).picks
    elif args.one == "fps_quality" or args.one in GRAPH_WEIGHTS:  # selection.fps_weight: quality, …
        if args.one == "fps_quality":
            weight = diversity.quality_weight(quality, ids)
        else:
            nbr, dist = diversity.knn_graph(x, args.neighbors, "wasserstein", device=args.device, probes=probes)
            lof_cut_z = schema_default("selection", "lof_cut_z")
            weight = diversity.graph_weight(GRAPH_WEIGHTS[args.one], x, ids, nbr, dist, "wasserstein", lof_cut_z)
        if args.one in ("fps_lofcut_hold", "stratified", *TEXT_METHODS):  # selection.fps_quality_hold_back on top
            share = schema_default("selection", "fps_quality_hold_back")
            weight = diversity.quality_hold_back(weight, quality, ids, share)
        batches = [
            (np.arange(lo, min(lo + RECORD_BATCH, args.n)), texts[lo : lo + RECORD_BATCH])
            for lo in range(0, args.n, RECORD_BATCH)
        ] if texts else []  # fmt: skip
        dataset = np.full(args.n, "pool", dtype=object)
        if args.one == "fps_lofcut_relevance":  # the candidates' prompt coverage, then the relevance hold-back
            t1 = time.perf_counter()
            coverage = prompt_coverage(lambda: iter(batches), args.n)
            extra["coverage_s"] = time.perf_counter() - t1
            weight = diversity.relevance_hold_back(weight, quality, coverage, dataset, ids, RELEVANCE_SHARE)
        if args.one == "fps_lofcut_boilerplate":  # the candidates' boilerplate share, then its hold-back
            t1 = time.perf_counter()
            share = boilerplate_share(lambda: iter(batches), args.n)
            extra["boilerplate_s"] = time.perf_counter() - t1
            z_cut = schema_default("selection", "fps_boilerplate_cut_z")
            weight = diversity.boilerplate_hold_back(weight, share, dataset, z_cut)
        if args.one == "stratified":  # the draw, the held back last
            picks = diversity.stratified(args.n, args.k, 0, weight=weight)
        else:
            picks = fps_streaming(
                x, args.k, device=args.device, chunk=args.chunk, log_interval=10**9, metric="wasserstein", weight=weight
            ).picks
    elif args.one in ("fps_snap", "fps_qsnap", "fps_lsnap"):  # selection.fps_snap: density, quality, length
        nbr, dist = diversity.knn_graph(x, args.neighbors, "wasserstein", device=args.device, probes=probes)
        mode = {"fps_snap": "density", "fps_qsnap": "quality", "fps_lsnap": "length"}[args.one]
        snap = Snap(nbr, diversity.snap_score(mode, dist, quality, ids, tokens))
        picks = fps_streaming(
            x, args.k, device=args.device, chunk=args.chunk, log_interval=10**9, metric="wasserstein", snap=snap
        ).picks
    elif args.one == "target":  # selection.target: --targets target records, routed like the candidates
        targets = features(args.targets, args.layers, args.experts, args.seed + 2)
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        t0 = time.perf_counter()
        picks = toward_target(targets, x, args.k, "wasserstein", chunk=args.chunk, device=args.device)
    else:
        picks = diversity.select(
            args.one,
            x,
            quality,
            ids,
            args.k,
            metric="wasserstein",
            n_neighbors=args.neighbors,
            n_clusters=args.clusters,
            chunk=args.chunk,
            device=args.device,
            probes=probes,
        )
    seconds = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    assert len(set(picks.tolist())) == args.k
    return {"method": args.one, "s": seconds, "peak_MiB": peak, "extra_MiB": peak - before, **extra}


def main() -> None:
    from selectflow.schema import schema_default

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=100000, help="candidates")
    p.add_argument("--k", type=int, default=1000, help="picks")
    p.add_argument("--layers", type=int, default=16)
    p.add_argument("--experts", type=int, default=64)
    p.add_argument("--neighbors", type=int, default=10, help="selection.diversity_neighbors")
    p.add_argument("--clusters", type=int, default=20, help="selection.diversity_clusters")
    for key in ("knn_exact_max", "knn_probes"):  # above knn_exact_max candidates the k-NN graph is approximate
        flag, default = f"--{key.replace('_', '-')}", schema_default("selection", key)
        p.add_argument(flag, type=int, default=default, help=f"selection.{key} (default: the schema's, %(default)s)")
    p.add_argument("--targets", type=int, default=220, help="target records of method target (selection.target)")
    p.add_argument("--chunk", type=int, default=1000, help="distance rows per chunk (selection.distance_batch_size)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="where FPS and the k-NN distances run")
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    p.add_argument("--one", choices=METHODS, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.one:
        print(json.dumps(one(args)))
        return
    print(
        f"N {args.n}, k {args.k}, L {args.layers}, E {args.experts} (D {args.layers * args.experts}), "
        f"{args.neighbors} neighbours, {args.clusters} clusters, k-NN graph "
        + (f"approximate ({args.knn_probes} probes)" if args.n > args.knn_exact_max else "exact")
        + "; each method in a fresh process",
        flush=True,
    )
    rows = {}
    for method in dict.fromkeys(["fps", *args.methods]):
        cmd = [sys.executable, __file__, "--one", method, *sys.argv[1:]]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True, cwd=REPO).stdout
        rows[method] = json.loads(out.strip().splitlines()[-1])
        r = rows[method]
        print(
            f"{method:20s} {r['s']:9.1f} s  peak RSS {r['peak_MiB']:8.0f} MiB  (+{r['extra_MiB']:.0f} MiB in the call)"
            + (f"  (coverage s {r['coverage_s']:.1f})" if "coverage_s" in r else "")
            + (f"  (boilerplate s {r['boilerplate_s']:.1f})" if "boilerplate_s" in r else ""),
            flush=True,
        )
    base = rows["fps"]
    for method, r in rows.items():
        if method != "fps":
            print(
                f"{method} / fps: time x{r['s'] / base['s']:.2f}, peak RSS x{r['peak_MiB'] / base['peak_MiB']:.2f}, "
                f"added in the call {r['extra_MiB']:.0f} vs {base['extra_MiB']:.0f} MiB"
            )


if __name__ == "__main__":
    main()
