"""The demo chain end to end: this checkout against a baseline commit, run back to back.

    python bench/bench_demo_chain.py --baseline 7d20b15 [--baseline 6865c15 ...] [--cores 2] [--rounds 1]

Each round exports the baseline commit (``git archive``) and this working tree into
scratch folders and runs ``snakemake --cores N --resources gpu=1`` from scratch in each
(fresh demo pool and model), alternating which goes first. Prints per run: wall time,
CPU time (user + sys of Snakemake and every job), jobs run, console lines (stdout +
stderr), and the ratios ours / baseline. CPU time is the steadier figure on a machine
shared with other work; wall time is what a user waits. Per run it also prints, per rule,
the jobs' summed wall and CPU seconds from the ``benchmark:`` files (rules without one
are not listed), to compare the parts two commits share when one of them does more.
"""

from __future__ import annotations

import argparse
import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import export  # noqa: E402


def run_chain(folder: Path, cores: int) -> dict:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "snakemake", "--cores", str(cores), "--resources", "gpu=1"],
        cwd=folder,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(folder)},
    )
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    out = proc.stdout + proc.stderr
    if proc.returncode != 0:
        raise SystemExit(f"the chain failed in {folder}:\n{out[-3000:]}")
    jobs = len(re.findall(r"^Finished jobid: \d+ \(Rule: (?!all\))", out, re.M))
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {
        "wall_s": wall,
        "cpu_s": cpu,
        "jobs": jobs,
        "console_lines": len(out.splitlines()),
        "rules": rule_times(folder),
    }


def rule_times(folder: Path) -> dict[str, tuple[int, float, float]]:
    """Per rule: jobs, summed wall s and CPU s, from the benchmark files of every job."""
    out: dict[str, tuple[int, float, float]] = {}
    for tsv in sorted((folder / "benchmarks").glob("*/**/*.tsv")):
        rel = tsv.relative_to(folder / "benchmarks").parts
        rule = {
            "indexes": "index_embed" if tsv.name.startswith("embed_") else "index_window",
            "selection": "distance_block" if "distances" in rel else tsv.stem,
        }.get(rel[1], rel[1])
        rule = rule.removesuffix(".tsv")
        head, row = tsv.read_text().splitlines()[:2]
        values = dict(zip(head.split("\t"), row.split("\t")))
        n, w, c = out.get(rule, (0, 0.0, 0.0))
        out[rule] = (n + 1, w + float(values["s"]), c + float(values.get("cpu_time", "nan")))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--baseline",
        required=True,
        action="append",
        help="commit to compare with, e.g. the merge base (repeat for several)",
    )
    ap.add_argument("--cores", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=1)
    args = ap.parse_args()
    names = [*args.baseline, "ours"]
    results: dict[str, list[dict]] = {name: [] for name in names}
    with tempfile.TemporaryDirectory(prefix="bench_demo_") as tmp:
        for r in range(args.rounds):
            order = names if r % 2 == 0 else names[::-1]
            for name in order:
                folder = export(None if name == "ours" else name, Path(tmp) / f"{name}_{r}")
                got = run_chain(folder, args.cores)
                results[name].append(got)
                print(
                    f"round {r} {name:8s} wall {got['wall_s']:7.1f} s  cpu {got['cpu_s']:7.1f} s  "
                    f"jobs {got['jobs']:3d}  console lines {got['console_lines']:4d}",
                    flush=True,
                )
                for rule, (n, w, c) in sorted(got["rules"].items()):
                    print(f"    {rule:16s} jobs {n:3d}  wall {w:7.1f} s  cpu {c:7.1f} s", flush=True)
                shutil.rmtree(folder)
    keys = ("wall_s", "cpu_s", "jobs", "console_lines")
    mean = {name: {k: sum(run[k] for run in runs) / len(runs) for k in keys} for name, runs in results.items()}
    for base in args.baseline:
        print(f"ours vs {base}:")
        for key in keys:
            b, o = mean[base][key], mean["ours"][key]
            print(
                f"  {key:14s} baseline {b:8.1f}  ours {o:8.1f}  ours/baseline {o / b:5.2f}  "
                f"({(o / b - 1) * 100:+.0f} %)"
            )


if __name__ == "__main__":
    main()
