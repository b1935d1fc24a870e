"""Selection toward a target task narrower than the pool: compare's method ``target`` against ``random`` and ``fps``.

    # from the repository root; a scratch copy of this checkout runs the demo chain, then each task
    python bench/bench_target_task.py --task arithmetic --task cooking,animals [--cores 2] [--work DIR]

compare's demo test set covers the demo's 11 test kinds evenly, and the kept pool covers them
about as evenly, so toward that whole test set a target has little to gain over a random draw
(README, Does the selection pay off?). A user who names a target knows a task narrower than the
pool. For each ``--task`` (comma-separated prefixes of the demo test kinds: a topic such as
``arithmetic`` or a kind such as ``cooking.boil``) this keeps the records of those kinds from
compare's demo test set (``results/demo/compare/test.jsonl``) and from method ``target``'s
demo target set (``target_set/dev.jsonl``: fresh records of the same kinds, seed
``compare.test_seed + 1``, none in the pool or the test set), and runs
``snakemake results/demo/compare/{fps,random,target}/eval.tsv`` with ``compare.eval`` and
``compare.target`` set to the two files; every other key is the default config's. The test set
and the target set of a task share no record (compare checks it).

The work runs in a copy of this checkout's tracked and new files (``--work``, default a
temporary folder), so your own ``results/`` are not touched: the demo chain from scratch
(``snakemake --cores N --resources gpu=1``), then the tasks one after another. A ``--work`` that
holds an earlier run's copy is used again as it is (Snakemake runs only what is missing).

Prints per task and method macro accuracy and macro loss (mean ± 95 % t-interval over the
seeds) and each method minus ``random`` with Welch's 95 % interval, and writes the rows to
``benchmarks/target_task.tsv`` of this checkout. Kinds are test-set labels: they choose the
task's records here, to measure; no method reads them.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import export, snakemake  # noqa: E402

from selectflow.layout import Layout  # noqa: E402
from selectflow.report.compare import MEASURES, difference, per_seed  # noqa: E402
from selectflow.stages.compare import downstream  # noqa: E402

METHODS = ("fps", "random", "target")
DEMO = Layout("demo")
# the whole demo test and target sets, kept aside: a task's compare.target replaces the latter
SOURCES = Path("bench_target_task") / "demo"


def compare_yaml(**keys: str) -> str:
    """A config file's compare section: the three methods, no full pool, and ``keys``."""
    lines = [f"  methods: [{', '.join(METHODS)}]", "  full_pools: []", *(f"  {k}: {v}" for k, v in keys.items())]
    return "\n".join(["compare:", *lines]) + "\n"


def keep_kinds(src: Path, dst: Path, prefixes: list[str]) -> int:
    rows = [line for line in src.read_text().splitlines() if json.loads(line)["kind"].startswith(tuple(prefixes))]
    if not rows:
        sys.exit(f"--task {','.join(prefixes)}: no record of {src} has a kind starting with it")
    dst.parent.mkdir(parents=True, exist_ok=True)
    dst.write_text("\n".join(rows) + "\n")
    return len(rows)


def run_task(work: Path, cores: int, task: str) -> list[dict]:
    prefixes = [p.strip() for p in task.split(",") if p.strip()]
    folder = Path("bench_target_task") / task.replace(",", "+")
    n_test = keep_kinds(work / SOURCES / "test.jsonl", work / folder / "test.jsonl", prefixes)
    n_dev = keep_kinds(work / SOURCES / "dev.jsonl", work / folder / "dev.jsonl", prefixes)
    config = work / folder / "config.yaml"
    config.write_text(compare_yaml(eval=str(folder / "test.jsonl"), target=str(folder / "dev.jsonl")))
    print(f"task {task}: {n_test} test records, {n_dev} target records", flush=True)
    evals = {m: work / DEMO.compare_eval(m) for m in METHODS}
    snakemake(
        work, cores, [DEMO.compare_eval(m) for m in METHODS], ["config/config.yaml", str(config.relative_to(work))]
    )
    # compare's own table: macro measures per seed, mean and 95 % interval (rule compare_downstream's function)
    down = downstream(evals, work / folder / "downstream.tsv").set_index("method")
    rows = []
    for m in METHODS:
        row = {"task": task, "method": m, "test": n_test, "targets": n_dev, "seeds": int(down.at[m, "n_seeds"])}
        for measure, _, _ in MEASURES:
            row[measure], row[f"{measure}_ci95"] = down.at[m, f"macro_{measure}"], down.at[m, f"macro_{measure}_ci95"]
            diff, half = (np.nan, np.nan)
            if m != "random":
                diff, half = difference(per_seed(down.loc[m], measure), per_seed(down.loc["random"], measure))
            row[f"{measure}_minus_random"], row[f"{measure}_minus_random_ci95"] = diff, half
        rows.append(row)
    return rows


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--task", action="append", required=True, help="comma-separated demo test kind prefixes")
    ap.add_argument("--cores", type=int, default=2)
    ap.add_argument("--work", type=Path, default=None, help="scratch folder (default: a temporary one)")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench_target_task_") as tmp:
        work = (args.work or Path(tmp)) / "checkout"
        if not work.is_dir():  # a --work of an earlier run is used again: only what is missing runs
            export(None, work)
        snakemake(work, args.cores, [], [])
        base = work / "bench_target_task" / "base.yaml"
        base.parent.mkdir(parents=True, exist_ok=True)
        base.write_text(compare_yaml())
        snakemake(
            work,
            args.cores,
            [DEMO.compare_test, DEMO.compare_target_set],
            ["config/config.yaml", str(base.relative_to(work))],
        )
        (work / SOURCES).mkdir(exist_ok=True)
        shutil.copy2(work / DEMO.compare_test, work / SOURCES / "test.jsonl")
        shutil.copy2(work / DEMO.compare_target_set, work / SOURCES / "dev.jsonl")
        rows = [row for task in args.task for row in run_task(work, args.cores, task)]
    table = pd.DataFrame(rows)
    out = REPO / "benchmarks" / "target_task.tsv"
    out.parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(out, sep="\t", index=False, float_format="%.4f")
    for row in rows:
        text = f"{row['task']:<18} {row['method']:<7}"
        for measure, _, _ in MEASURES:
            text += f"  {measure} {row[measure]:.3f} ± {row[f'{measure}_ci95']:.3f}"
            if row["method"] != "random":
                diff, half = row[f"{measure}_minus_random"], row[f"{measure}_minus_random_ci95"]
                text += f" ({diff:+.3f} ± {half:.3f} vs random, {'beyond' if abs(diff) > half else 'within'})"
        print(text)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
