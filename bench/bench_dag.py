"""Time and peak RSS of a dry run (``snakemake -n``) over thousands of shards: this tree against a baseline.

    python bench/bench_dag.py --baseline 0403268 --shards 4000 --shards 20000

Per tree (this working tree, and the baseline commit exported with ``git archive``, via
``bench_demo_chain.export``) and per shard count: a pool of ``shards × shard_size`` short
Alpaca records is split by the real ``split_dataset`` checkpoint (``snakemake --cores 1``
on the shards folder), then ``snakemake -n --cores 1 --resources gpu=1`` plans the whole
workflow, each in a fresh process. The plan stops at the ``pool_manifest`` checkpoint, so
it holds every per-shard job: one ``router_dump`` job per ``router_dump.shards_per_job``
shards, then (this tree) one ``router_data`` job that links every shard, or (trees before
it) one ``router_shard`` job a shard. Printed: jobs planned, dry-run seconds, peak RSS
(``ru_maxrss`` of the Snakemake process), the ratios this tree / baseline and whether the
dry run stays within ``--target`` seconds. The baseline is skipped above ``--baseline-max``
shards (before 9f70e3c its dry run was quadratic in shards).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import export  # noqa: E402

# a child that runs one command and prints its peak RSS (the command's process alone)
MEASURE = (
    "import resource, subprocess, sys; p = subprocess.run(sys.argv[1:]); "
    "print('PEAK', resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024, file=sys.stderr); "
    "sys.exit(p.returncode)"
)


def write_pool(path: Path, n: int) -> None:
    with path.open("w") as f:
        for i in range(n):
            f.write(json.dumps({"instruction": f"question {i}", "output": f"answer {i}"}) + "\n")


def snakemake(folder: Path, args: list[str]) -> tuple[float, int, str]:
    """Seconds, peak RSS bytes and output of ``snakemake ARGS`` in ``folder``."""
    t = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-c", MEASURE, sys.executable, "-m", "snakemake", *args],
        cwd=folder,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(folder)},
    )
    seconds = time.perf_counter() - t
    if proc.returncode != 0:
        raise SystemExit(f"snakemake {' '.join(args)} failed in {folder}:\n{(proc.stdout + proc.stderr)[-3000:]}")
    peak = int(re.findall(r"^PEAK (\d+)$", proc.stderr, re.M)[-1])
    return seconds, peak, proc.stdout + proc.stderr


def dry_run(tree: Path, shards: int, shard_size: int) -> dict:
    """Split a pool of ``shards`` shards in ``tree``, then time ``snakemake -n`` of the workflow."""
    work = tree / f"dag_{shards}"
    work.mkdir()
    write_pool(work / "pool.jsonl", shards * shard_size)
    config = work / "config.yaml"
    # the demo model is only planned (rule demo_model), never built
    config.write_text(
        f"run: dag{shards}\ndatasets:\n  bench: {work / 'pool.jsonl'}\nshard_size: {shard_size}\n"
        "model:\n  path: resources/demo/model\n"
    )
    split_s, _, _ = snakemake(tree, [f"results/dag{shards}/shards/bench", "--cores", "1", "--configfile", str(config)])
    seconds, peak, out = snakemake(tree, ["-n", "--cores", "1", "--resources", "gpu=1", "--configfile", str(config)])
    counts = dict(re.findall(r"^(\w+)\s+(\d+)$", out, re.M))
    return {
        "seconds": seconds,
        "peak": peak,
        "split_s": split_s,
        "jobs": int(counts.get("total", 0)),
        "router_dump": int(counts.get("router_dump", 0)),
        "router_shard": int(counts.get("router_shard", 0)),
        "router_data": int(counts.get("router_data", 0)),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--baseline", required=True, help="commit to compare against (git archive)")
    ap.add_argument("--shards", type=int, action="append", help="shard counts (default 4000 and 20000)")
    ap.add_argument("--shard-size", type=int, default=2, help="records a shard (default %(default)s)")
    ap.add_argument("--baseline-max", type=int, default=4000, help="skip the baseline above this many shards")
    ap.add_argument("--target", type=float, default=60.0, help="seconds a dry run of this tree may take")
    args = ap.parse_args()
    counts = args.shards or [4000, 20000]
    with tempfile.TemporaryDirectory() as tmp:
        trees = {
            "this tree": export(None, Path(tmp) / "ours"),
            args.baseline: export(args.baseline, Path(tmp) / "base"),
        }
        rows = {}
        for shards in counts:
            for name, tree in trees.items():
                if name != "this tree" and shards > args.baseline_max:
                    continue
                rows[name, shards] = r = dry_run(tree, shards, args.shard_size)
                print(
                    f"{name:>12s}, {shards:,} shards: snakemake -n {r['seconds']:.1f} s, peak RSS "
                    f"{r['peak'] / 2**20:.0f} MiB; {r['jobs']:,} jobs ({r['router_dump']:,} router_dump, "
                    f"{r['router_shard']:,} router_shard, {r['router_data']} router_data); split "
                    f"{r['split_s']:.1f} s",
                    flush=True,
                )
        for shards in counts:
            secs = rows["this tree", shards]["seconds"]
            print(
                f"{shards:,} shards: this tree's dry run {secs:.1f} s, target <= {args.target:.0f} s: "
                f"{'met' if secs <= args.target else 'MISSED'}"
            )
            if (args.baseline, shards) in rows:
                ours, base = rows["this tree", shards], rows[args.baseline, shards]
                print(
                    f"{shards:,} shards: this tree / {args.baseline}: time {ours['seconds'] / base['seconds']:.2f}x, "
                    f"peak RSS {ours['peak'] / base['peak']:.2f}x"
                )


if __name__ == "__main__":
    main()
