"""Per-window FAISS store vs everything in RAM: peak RSS of building W windows, and query latency.

    python bench/bench_windows.py [--quick] [--workdir DIR]

Data: an HDF5 int8 array [items, positions, features] cut into W non-overlapping
position windows (``sequence_windows``), each read with ``read_sequence_window`` into a
float32 [items, width * features] block: the same per-window size for every W.

Build (each W = 1, 10, 50 in its own subprocess, peak RSS from ``ru_maxrss``):
  * ours      ``build_windows``: one window in RAM at a time, index written to disk.
  * in RAM    the design that ran out of memory: every window's vectors and index kept.
  Target: ours at W=50 <= 1.2 x ours at W=1.

Query (the W=50 windows; each batch = queries from one random window, as in training):
  * in RAM, plain FAISS search  (all indexes loaded up front)
  * in RAM, exact search        (same tie-safe per-pair kernel as the store)
  * store, max_open=4           (windows opened on demand, memory-mapped, LRU)
  * store, max_open=W           (every window stays open once touched)
  * store, max_open=4, exact=False (FAISS may use BLAS: faster, last-bit rounding varies)
The page cache is warm (the files were just written), so "opening" means mapping
cached pages, not reading a cold disk.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from selectflow.runtime.units import MIB

SIZES = {
    # items, width (positions per window), features, query batches
    "full": dict(items=2000, width=256, features=16, batches=200, batch=64, k=8),
    "quick": dict(items=1000, width=64, features=4, batches=100, batch=32, k=8),
}
W_LIST = (1, 10, 50)


def peak_rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def rss_now() -> int:
    import psutil

    return psutil.Process().memory_info().rss


def write_data(path: Path, items: int, width: int, features: int, n_windows: int) -> None:
    import h5py

    rng = np.random.default_rng(0)
    with h5py.File(path, "w") as f:
        ds = f.create_dataset(
            "x", shape=(items, width * n_windows, features), dtype=np.int8, chunks=(min(items, 256), width, features)
        )
        for w in range(n_windows):
            ds[:, w * width : (w + 1) * width] = rng.integers(-8, 9, size=(items, width, features), dtype=np.int8)


# ----------------------------------------------------------------------------- children


def child_build(args) -> dict:
    from selectflow.index.build import build_windows
    from selectflow.index.windows import read_sequence_window, sequence_windows

    n_pos = args.width * args.windows
    windows = sequence_windows(n_pos, args.width, args.width)
    ids = [f"h{i}" for i in range(args.items)]
    start_rss = rss_now()
    t0 = time.perf_counter()
    if args.mode == "ours":
        table = build_windows(
            lambda w, span: (read_sequence_window(args.h5, "x", *span), ids),
            windows,
            args.out,
            kind="positions",
            progress=False,
            index_type="flat_l2",
        )
        disk = int(table["disk_bytes"].sum())
    else:
        import faiss

        kept_vectors, kept_indexes = [], []
        for start, stop in windows:
            vectors = read_sequence_window(args.h5, "x", start, stop)
            index = faiss.IndexFlatL2(vectors.shape[1])
            index.add(vectors)
            kept_vectors.append(vectors)
            kept_indexes.append(index)
        disk = 0
    return {"seconds": time.perf_counter() - t0, "peak_rss": peak_rss(), "start_rss": start_rss, "disk": disk}


def child_query(args) -> dict:
    import faiss

    from selectflow.index.layout import WindowFiles
    from selectflow.index.store import WindowStore, _direct_kernel, exact_top_k

    rng = np.random.default_rng(1)
    store = WindowStore(args.out, max_open=args.max_open or 4, exact=args.mode != "store-blas")
    n_windows, dim, n = len(store), store.meta[0]["dim"], store.meta[0]["n"]
    plan = [
        (int(rng.integers(n_windows)), rng.standard_normal((args.batch, dim)).astype(np.float32) * 4)
        for _ in range(args.batches)
    ]
    load_seconds = 0.0
    if args.mode.startswith("inram"):
        t0 = time.perf_counter()
        indexes = [faiss.read_index(str(WindowFiles.of(args.out, w).faiss)) for w in range(n_windows)]
        load_seconds = time.perf_counter() - t0
        if args.mode == "inram-plain":

            def search(w, q):
                return indexes[w].search(q, args.k)

        else:

            def search(w, q):
                with _direct_kernel():
                    return exact_top_k(indexes[w].search, n, q, args.k, False)

    else:

        def search(w, q):
            return store.search_window(w, q, args.k)

    lat = []
    for w, q in plan:
        t0 = time.perf_counter()
        search(w, q)
        lat.append(time.perf_counter() - t0)
    lat = np.array(lat) * 1000
    out = {
        "load_seconds": load_seconds,
        "mean_ms": float(lat.mean()),
        "p50_ms": float(np.median(lat)),
        "p95_ms": float(np.percentile(lat, 95)),
        "peak_rss": peak_rss(),
    }
    if not args.mode.startswith("inram"):
        out.update({k: v for k, v in store.stats().items() if k != "open_windows"})
    return out


def run_child(script: Path, **kw) -> dict:
    cmd = [sys.executable, str(script), "--child"] + [f"--{k.replace('_', '-')}={v}" for k, v in kw.items()]
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0:
        raise SystemExit(f"child {kw} failed:\n{res.stderr[-3000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


# ----------------------------------------------------------------------------- main


def mib(n: float) -> float:
    return n / MIB


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small windows, finishes in well under 2 minutes")
    ap.add_argument("--workdir", type=Path, default=None, help="scratch folder (default: a temp folder, removed)")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    for name in ("mode", "h5", "out"):
        ap.add_argument(f"--{name}", help=argparse.SUPPRESS)
    for name in ("windows", "items", "width", "batches", "batch", "k", "max-open"):
        ap.add_argument(f"--{name}", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        result = (
            child_query(args)
            if args.mode in ("inram-plain", "inram-exact", "store", "store-blas")
            else child_build(args)
        )
        print(json.dumps(result))
        return

    import pandas as pd

    size = SIZES["quick" if args.quick else "full"]
    work = Path(args.workdir or tempfile.mkdtemp(prefix="bench_windows."))
    work.mkdir(parents=True, exist_ok=True)
    script = Path(__file__).resolve()
    t_start = time.perf_counter()
    try:
        h5 = work / "data.h5"
        write_data(h5, size["items"], size["width"], size["features"], max(W_LIST))
        dim = size["width"] * size["features"]
        per_window = size["items"] * dim * 4
        print(f"per window: {size['items']} items x {dim} float32 = {mib(per_window):.1f} MiB; W = {W_LIST}\n")

        rows = []
        for mode in ("ours", "inram"):
            for w in W_LIST:
                out = work / f"idx_{mode}_{w}"
                r = run_child(script, mode=mode, h5=h5, out=out, windows=w, items=size["items"], width=size["width"])
                rows.append(
                    {
                        "build": "per-window store" if mode == "ours" else "all in RAM",
                        "W": w,
                        "seconds": r["seconds"],
                        "peak_rss_MiB": mib(r["peak_rss"]),
                        "rss_growth_MiB": mib(r["peak_rss"] - r["start_rss"]),
                        "disk_MiB": mib(r["disk"]),
                    }
                )
                if w != max(W_LIST) or mode != "ours":
                    shutil.rmtree(out, ignore_errors=True)
        build = pd.DataFrame(rows)
        for _, grp in build.groupby("build", sort=False):
            base = grp[grp["W"] == 1]["peak_rss_MiB"].iloc[0]
            build.loc[grp.index, "rss_vs_W1"] = grp["peak_rss_MiB"] / base
        print("BUILD: peak RSS per W, each in its own process")
        print(build.to_string(index=False, float_format=lambda v: f"{v:.2f}"))
        ours = build[build["build"] == "per-window store"].set_index("W")
        ratio = ours.loc[max(W_LIST), "peak_rss_MiB"] / ours.loc[1, "peak_rss_MiB"]
        inram = build[build["build"] == "all in RAM"].set_index("W")
        print(
            f"\nours peak RSS W={max(W_LIST)} / W=1 = {ratio:.3f}  "
            f"(target <= 1.2: {'met' if ratio <= 1.2 else 'MISSED'})"
        )
        print(
            f"all-in-RAM peak RSS W={max(W_LIST)} / W=1 = "
            f"{inram.loc[max(W_LIST), 'peak_rss_MiB'] / inram.loc[1, 'peak_rss_MiB']:.3f}"
        )
        print(
            f"ours vs all-in-RAM at W={max(W_LIST)}: "
            f"{ours.loc[max(W_LIST), 'peak_rss_MiB'] / inram.loc[max(W_LIST), 'peak_rss_MiB']:.3f} x the RAM\n"
        )

        idx = work / f"idx_ours_{max(W_LIST)}"
        q_rows = []
        common = dict(out=idx, batches=size["batches"], batch=size["batch"], k=size["k"])
        for label, mode, max_open in (
            ("in RAM, plain FAISS search", "inram-plain", 0),
            ("in RAM, exact search", "inram-exact", 0),
            ("store, max_open=4", "store", 4),
            (f"store, max_open={max(W_LIST)}", "store", max(W_LIST)),
            ("store, max_open=4, exact=False", "store-blas", 4),
        ):
            r = run_child(script, mode=mode, max_open=max_open, **common)
            q_rows.append(
                {
                    "query": label,
                    "load_s": r["load_seconds"],
                    "mean_ms": r["mean_ms"],
                    "p50_ms": r["p50_ms"],
                    "p95_ms": r["p95_ms"],
                    "peak_rss_MiB": mib(r["peak_rss"]),
                    "loads": r.get("loads", max(W_LIST)),
                    "evictions": r.get("evictions", 0),
                }
            )
        query = pd.DataFrame(q_rows)
        query["mean_vs_inram"] = query["mean_ms"] / query["mean_ms"].iloc[0]
        query["rss_vs_inram"] = query["peak_rss_MiB"] / query["peak_rss_MiB"].iloc[0]
        print(
            f"QUERY: {size['batches']} batches of {size['batch']} queries, k={size['k']}, one random window per batch"
        )
        print(query.to_string(index=False, float_format=lambda v: f"{v:.2f}"))
        print(f"\ntotal bench time {time.perf_counter() - t_start:.0f}s")
    finally:
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    os.environ.setdefault("TQDM_DISABLE", "1")
    main()
