"""The demo chain end to end: this checkout against a baseline commit, run back to back.

    python bench/bench_demo_chain.py --baseline 7d20b15 [--cores 2] [--rounds 1]

Each round exports the baseline commit (``git archive``) and this working tree into
scratch folders and runs ``snakemake --cores N --resources gpu=1`` from scratch in each
(fresh demo pool and model), alternating which goes first. Prints per run: wall time,
CPU time (user + sys of Snakemake and every job), jobs run, console lines (stdout +
stderr), and the ratios ours / baseline. CPU time is the steadier figure on a machine
shared with other work; wall time is what a user waits.
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


def export(ref: str | None, dest: Path) -> Path:
    """``ref`` (a commit) or, for None, the working tree's tracked and new files, into ``dest``."""
    dest.mkdir(parents=True)
    if ref is not None:
        archive = subprocess.run(["git", "archive", ref], cwd=REPO, capture_output=True, check=True).stdout
        subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)
        return dest
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=REPO, capture_output=True,
                           text=True, check=True).stdout.split()
    for name in files:
        if (REPO / name).is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, dest / name)
    return dest


def run_chain(folder: Path, cores: int) -> dict:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "snakemake", "--cores", str(cores), "--resources", "gpu=1"],
                          cwd=folder, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(folder)})
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    out = proc.stdout + proc.stderr
    if proc.returncode != 0:
        raise SystemExit(f"the chain failed in {folder}:\n{out[-3000:]}")
    jobs = len(re.findall(r"^Finished jobid: \d+ \(Rule: (?!all\))", out, re.M))
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {"wall_s": wall, "cpu_s": cpu, "jobs": jobs, "console_lines": len(out.splitlines())}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--baseline", required=True, help="commit to compare with, e.g. the merge base")
    ap.add_argument("--cores", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=1)
    args = ap.parse_args()
    results: dict[str, list[dict]] = {"baseline": [], "ours": []}
    with tempfile.TemporaryDirectory(prefix="bench_demo_") as tmp:
        for r in range(args.rounds):
            order = ("baseline", "ours") if r % 2 == 0 else ("ours", "baseline")
            for name in order:
                folder = export(args.baseline if name == "baseline" else None, Path(tmp) / f"{name}_{r}")
                got = run_chain(folder, args.cores)
                results[name].append(got)
                print(f"round {r} {name:8s} wall {got['wall_s']:7.1f} s  cpu {got['cpu_s']:7.1f} s  "
                      f"jobs {got['jobs']:3d}  console lines {got['console_lines']:4d}", flush=True)
                shutil.rmtree(folder)
    mean = {name: {k: sum(run[k] for run in runs) / len(runs) for k in runs[0]} for name, runs in results.items()}
    for key in ("wall_s", "cpu_s", "jobs", "console_lines"):
        b, o = mean["baseline"][key], mean["ours"][key]
        print(f"{key:14s} baseline {b:8.1f}  ours {o:8.1f}  ours/baseline {o / b:5.2f}  ({(o / b - 1) * 100:+.0f} %)")


if __name__ == "__main__":
    main()
