"""Approximate k-NN graph (``selection.knn_exact_max`` / ``knn_probes``) against the exact one, same run.

The k-NN graph of the candidates feeds ``fps_weight: lof`` (and ``density``,
``fps_snap``, ``diversity: facility_location``). Exact, it costs O(m²·D) time; above
``knn_exact_max`` candidates it comes from FAISS inverted lists instead
(:func:`selectflow.select.diversity.ivf_graph`). Each graph is built in a fresh Python process
(``--one``) on the same seeded features; the memory in the call is the peak RSS during the call
(Linux: the high-water mark reset once the features are built, so building them does not hide
it) less the RSS before it. The exact graph is the baseline; for each ``--probes`` value the script prints the
time and peak-RSS ratios and what the approximation changes:

* recall: the share of each candidate's exact ``--neighbors`` + 1 nearest found, over all candidates;
* spread and lof: Spearman correlation of the mean neighbour distance and of the lof weights
  (:func:`~selectflow.select.diversity.lof_weight`) with the exact graph's;
* picks: the share of lof-weighted FPS's ``--k`` picks (``fps_streaming``, the default method)
  that the exact graph's weights also pick (FPS is chaotic: one different pick early changes the
  rest), and the mean exact lof weight of each graph's picks (1 = the least outlying candidate,
  0 the most; ``random`` the mean of ``--k`` random candidates), which says whether the
  approximate picks hold back the outliers as the exact ones do.

Features: Dirichlet(0.3) routing over E experts in each of L layers, as ``bench/bench_diversity.py``
makes them (no structure: the hard case for inverted lists); ``--centres C`` draws each sample half
from one of C shared routing patterns instead (clustered, as routing of real text is);
``--candidates PATH`` takes the ``features`` of a ``candidates.h5`` the workflow wrote.

    python bench/bench_knn.py --n 100000 --layers 4 --experts 16            # D = 64
    python bench/bench_knn.py --n 50000 --layers 16 --experts 64 --probes 16 32
    python bench/bench_knn.py --candidates results/demo/candidates.h5
    python bench/bench_knn.py --n 50000 --ivfflat      # also FAISS's IndexIVFFlat, as a baseline
    python bench/bench_knn.py --n 200000 --ivfflat --no-exact   # no exact graph: too slow at this m

``--ivfflat`` also builds, for each ``--probes``, the same graph with FAISS's ``IndexIVFFlat``
(its own inverted lists, holding a float32 copy of the features; the neighbours it finds given
their exact distances): what the workflow's approximate graph was built with up to ``d1b7f4e``.
The script then prints the workflow's graph's time and memory in the call against it, and how
many neighbours the two graphs share. ``--no-exact`` leaves the exact graph out (and with it the
recall and the lof comparisons), for an m where it would take hours.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def features(args) -> np.ndarray:
    from selectflow.select.distance import features as grid

    if args.candidates:
        import h5py

        with h5py.File(args.candidates, "r") as f:
            return f["features"][()]
    rng = np.random.default_rng(args.seed)
    centres = None
    if args.centres:
        g = rng.standard_gamma(0.3, size=(args.centres, args.layers, args.experts))
        centres = g / g.sum(axis=2, keepdims=True)
    out = []
    for lo in range(0, args.n, 16384):  # in pieces: no float64 [n, L, E] temporary
        g = rng.standard_gamma(0.3, size=(min(16384, args.n - lo), args.layers, args.experts))
        p = g / g.sum(axis=2, keepdims=True)
        if centres is not None:
            p = 0.5 * p + 0.5 * centres[rng.integers(0, args.centres, len(p))]
        out.append(grid(p.astype(np.float32), "wasserstein"))
    return np.concatenate(out)


def ivfflat_graph(x: np.ndarray, neighbors: int, probes: int) -> tuple[np.ndarray, np.ndarray]:
    """The baseline: FAISS ``IndexIVFFlat`` (L1, lists by L2 k-means with seed 0, as many lists as
    the workflow's graph) over a float32 copy of ``x``; the neighbours found by (exact L1 distance, index)."""
    import faiss

    from selectflow.select.diversity import ivf_lists

    m, dim = x.shape
    kk = min(neighbors + 1, m)
    lists = ivf_lists(m)
    index = faiss.IndexIVFFlat(faiss.IndexFlatL2(dim), dim, lists, faiss.METRIC_L1)
    index.cp.seed = 0
    index.train(x)
    index.add(x)
    index.nprobe = min(probes, lists)
    nbr = np.concatenate([index.search(x[lo : lo + 8192], kk)[1] for lo in range(0, m, 8192)])
    del index
    dist = np.stack([np.abs(x[nbr[i]] - x[i]).sum(1, dtype=np.float32) for i in range(m)])
    order = np.lexsort((nbr, dist), axis=1)
    return np.take_along_axis(nbr, order, 1), np.take_along_axis(dist, order, 1)


def rss_mib() -> tuple[float, float]:
    """This process's (RSS, peak RSS) in MiB: ``/proc/self/status`` where there is one, else ``ru_maxrss`` for both."""
    try:
        status = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines() if ":" in line)
        return float(status["VmRSS"].split()[0]) / 1024, float(status["VmHWM"].split()[0]) / 1024
    except (OSError, KeyError):
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        return peak, peak


def reset_peak() -> None:
    """Reset the peak RSS to the current RSS (Linux ``clear_refs`` 5); elsewhere a no-op."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def one(args) -> dict:
    """Build one graph (``--one exact``, ``--one P`` probes or ``--one ivfflatP``) and save it under ``--save``."""
    import faiss  # noqa: F401 - imported before ``before``: the libraries' own memory is no method's
    import torch  # noqa: F401

    from selectflow.select.diversity import knn_graph

    x = features(args)
    reset_peak()
    before = rss_mib()[0]
    t0 = time.perf_counter()
    if args.one.startswith("ivfflat"):
        nbr, dist = ivfflat_graph(x, args.neighbors, int(args.one.removeprefix("ivfflat")))
    else:
        probes = None if args.one == "exact" else int(args.one)
        nbr, dist = knn_graph(x, args.neighbors, "wasserstein", probes=probes)
    seconds = time.perf_counter() - t0
    peak = rss_mib()[1]
    np.save(f"{args.save}/{args.one}.nbr.npy", nbr)
    np.save(f"{args.save}/{args.one}.dist.npy", dist)
    return {"graph": args.one, "s": seconds, "peak_MiB": peak, "extra_MiB": peak - before, "m": len(x), "D": x.shape[1]}


def lof_picks(x: np.ndarray, nbr: np.ndarray, dist: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The lof weights of a graph and lof-weighted FPS's ``k`` picks with them."""
    from selectflow.select.diversity import lof_weight, mean_spread
    from selectflow.select.fps import fps_streaming

    ids = np.array([f"s{i:07d}" for i in range(len(x))], dtype=object)
    weight = lof_weight(mean_spread(dist), nbr, ids)
    picks = fps_streaming(x, k, metric="wasserstein", device="cpu", log_interval=10**9, weight=weight).picks
    return weight, picks


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=100000, help="candidates (synthetic features)")
    p.add_argument("--layers", type=int, default=16)
    p.add_argument("--experts", type=int, default=64)
    p.add_argument("--centres", type=int, default=0, help="shared routing patterns (0: none, iid samples)")
    p.add_argument("--candidates", help="a candidates.h5: its features instead of synthetic ones")
    p.add_argument("--neighbors", type=int, default=10, help="selection.diversity_neighbors")
    p.add_argument("--probes", type=int, nargs="+", default=[32], help="selection.knn_probes values to try")
    p.add_argument("--k", type=int, default=1000, help="lof-weighted FPS picks compared")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--ivfflat", action="store_true", help="also FAISS's IndexIVFFlat for each --probes (baseline)")
    p.add_argument("--no-exact", action="store_true", help="no exact graph (needs --ivfflat): no recall, no lof")
    p.add_argument("--one", help=argparse.SUPPRESS)
    p.add_argument("--save", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.no_exact and not args.ivfflat:
        p.error("--no-exact leaves nothing to compare against without --ivfflat")
    if args.one:
        print(json.dumps(one(args)))
        return
    from scipy.stats import spearmanr

    from selectflow.select.diversity import graph_recall, mean_spread

    source = args.candidates or (
        f"N {args.n}, L {args.layers}, E {args.experts}, " + (f"{args.centres} centres" if args.centres else "iid")
    )
    print(f"k-NN graph of {source}; {args.neighbors} neighbours; each graph in a fresh process", flush=True)
    with tempfile.TemporaryDirectory() as save:
        rows = {}
        baselines = [f"ivfflat{p}" for p in args.probes] if args.ivfflat else []
        exact = [] if args.no_exact else ["exact"]
        for graph in [*exact, *map(str, args.probes), *baselines]:
            cmd = [sys.executable, __file__, "--one", graph, "--save", save, *sys.argv[1:]]
            out = subprocess.run(cmd, check=True, capture_output=True, text=True, cwd=REPO).stdout
            rows[graph] = r = json.loads(out.strip().splitlines()[-1])
            print(
                f"{graph:>10s} {r['s']:9.1f} s  peak RSS {r['peak_MiB']:7.0f} MiB (+{r['extra_MiB']:.0f} in the call)"
                f"  [m {r['m']}, D {r['D']}]",
                flush=True,
            )
        x = features(args)
        graphs = {g: (np.load(f"{save}/{g}.nbr.npy"), np.load(f"{save}/{g}.dist.npy")) for g in rows}
    k = min(args.k, len(x))
    if not args.no_exact:
        exact_w, exact_picks = lof_picks(x, *graphs["exact"], k)
        drawn = np.random.default_rng(args.seed + 1).choice(len(x), k, replace=False)
        print(
            f"mean exact lof weight of the picks: exact graph {exact_w[exact_picks].mean():.4f}, "
            f"random {exact_w[drawn].mean():.4f}",
            flush=True,
        )
    for graph in map(str, args.probes):
        nbr, dist = graphs[graph]
        r = rows[graph]
        if not args.no_exact:
            base = rows["exact"]
            weight, picks = lof_picks(x, nbr, dist, k)
            print(
                f"probes {graph} / exact: time x{r['s'] / base['s']:.3f} (speed-up {base['s'] / r['s']:.1f}), "
                f"peak RSS x{r['peak_MiB'] / base['peak_MiB']:.2f}; "
                f"recall {graph_recall(nbr, graphs['exact'][0]):.3f}, "
                f"spread Spearman {spearmanr(mean_spread(dist), mean_spread(graphs['exact'][1])).statistic:.4f}, "
                f"lof Spearman {spearmanr(weight, exact_w).statistic:.4f}, "
                f"lof-FPS picks shared {len(np.intersect1d(picks, exact_picks)) / k:.3f} of {k}, "
                f"their mean exact lof weight {exact_w[picks].mean():.4f}",
                flush=True,
            )
        if args.ivfflat:
            flat_nbr = graphs[f"ivfflat{graph}"][0]
            flat = rows[f"ivfflat{graph}"]
            recall = (
                "" if args.no_exact else f", IndexIVFFlat's recall {graph_recall(flat_nbr, graphs['exact'][0]):.3f}"
            )
            print(
                f"probes {graph} / FAISS IndexIVFFlat: time x{r['s'] / flat['s']:.3f}, memory in the call "
                f"{r['extra_MiB']:.0f} against {flat['extra_MiB']:.0f} MiB, "
                f"peak RSS x{r['peak_MiB'] / flat['peak_MiB']:.2f}; "
                f"neighbours shared {graph_recall(nbr, flat_nbr):.3f}{recall}",
                flush=True,
            )


if __name__ == "__main__":
    main()
