"""Selection toward a target task narrower than the pool: compare's method ``target`` against ``random`` and ``fps``.

    # from the repository root; a scratch copy of this checkout runs the demo chain, then each task
    python bench/bench_target_task.py --task arithmetic --task cooking,animals [--cores 2] [--work DIR]
    # the same on real-text pools (proxy scorer), one per --seed
    python bench/bench_target_task.py --pool realtext --seed 0 --seed 1 --task signature [--work DIR]
    # the same with other config keys (bench_variants.py's syntax), e.g. the hidden-state features
    python bench/bench_target_task.py --pool realtext --task signature \
        --variant hidden:features=hidden,router_dump.hidden_states=true

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

``--pool realtext`` runs the tasks on real-text pools instead: for each ``--seed``, the pool of
``bench_variants.py``'s ``realtext`` recipe (``selectflow real-text-pool``, 2,000 records with the
junk suite, the proxy scorer; its config from ``bench_variants.write_pools``). Its tasks are
prefixes of the real-text task kinds (``signature``, ``explain``, ``explain_class``, ``methods``,
``list_functions``, ``summarise_module``). The test and target sets of a task are the fresh
records of those kinds that no pool record asks (:func:`real_text_task_sets`), shuffled with the
pool's seed and halved, at most ``REAL_TEXT_TASK_SIZE`` each; no junk, no question of the pool.
Real text has no checker, so only macro loss is measured there.

``--variant NAME:KEY=VALUE,...`` (``bench_variants.py``'s syntax: a KEY without a section is a
``selection`` key) adds those keys to every task's config; its tables go to
``bench_target_task/[<pool run>/]<NAME>/<task>/`` and its rows name it. Without it the config is
the pool's, variant ``default``.

Prints per pool, task and method macro accuracy and macro loss (mean ± 95 % t-interval over the
seeds) and each method minus ``random`` with Welch's 95 % interval, and writes the rows to
``benchmarks/target_task.tsv`` of this checkout. Kinds are test-set labels: they choose the
task's records here, to measure; no method reads them.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_variants import SIZES, parse_variant, run_name, write_pools  # noqa: E402
from common import export, snakemake  # noqa: E402

from selectflow.data.realtext import make_realtext_testset  # noqa: E402
from selectflow.data.records import write_jsonl  # noqa: E402
from selectflow.layout import Layout  # noqa: E402
from selectflow.report.compare import MEASURES, difference, per_seed  # noqa: E402
from selectflow.stages.compare import downstream  # noqa: E402

METHODS = ("fps", "random", "target")
DEMO = Layout("demo")
# the whole demo test and target sets, kept aside: a task's compare.target replaces the latter
SOURCES = Path("bench_target_task") / "demo"
POOLS = ("demo", "realtext")
# test records and target records of a real-text task, each at most
REAL_TEXT_TASK_SIZE = 60


def compare_yaml(variant: dict | None = None, **keys: str) -> str:
    """A config file: ``variant``'s sections (:func:`parse_variant`), then a compare section of the three
    methods, no full pool, and ``keys``."""
    lines = [f"  methods: [{', '.join(METHODS)}]", "  full_pools: []", *(f"  {k}: {v}" for k, v in keys.items())]
    return (yaml.safe_dump(variant) if variant else "") + "\n".join(["compare:", *lines]) + "\n"


def keep_kinds(src: Path, dst: Path, prefixes: list[str]) -> int:
    rows = [line for line in src.read_text().splitlines() if json.loads(line)["kind"].startswith(tuple(prefixes))]
    if not rows:
        sys.exit(f"--task {','.join(prefixes)}: no record of {src} has a kind starting with it")
    dst.parent.mkdir(parents=True, exist_ok=True)
    dst.write_text("\n".join(rows) + "\n")
    return len(rows)


def real_text_task_sets(prefixes: list[str], seed: int, n_records: int) -> tuple[list[dict], list[dict]]:
    """The test and target records of a real-text task: every fresh record (one no record of the pool of
    ``(n_records, seed)`` asks: :func:`~selectflow.data.realtext.make_realtext_testset`) whose kind starts
    with one of ``prefixes``, shuffled with ``seed``; the first half the test set, the second the target
    set, each at most ``REAL_TEXT_TASK_SIZE``. Target ids are ``rt-target-NNNNN``."""
    fresh = make_realtext_testset(10**6, n_records, seed)  # far over any kind's count: all of them
    rows = [rec for rec in fresh if rec["kind"].startswith(tuple(prefixes))]
    if len(rows) < 2:
        sys.exit(f"--task {','.join(prefixes)}: {len(rows)} fresh real-text records of those kinds, 2 at least needed")
    random.Random(seed).shuffle(rows)
    half = min(len(rows) // 2, REAL_TEXT_TASK_SIZE)
    target = [{**rec, "id": f"rt-target-{i:05d}"} for i, rec in enumerate(rows[half : 2 * half])]
    return rows[:half], target


def run_task(
    work: Path,
    cores: int,
    task: str,
    seed: int | None = None,
    config: Path | None = None,
    variant: tuple[str, dict] = ("default", {}),
) -> list[dict]:
    """One task: compare's three methods toward its target set, judged on its test set, on the demo pool
    (``seed`` None) or on the real-text pool of ``seed`` (``config``: its config file, :func:`write_pools`),
    with ``variant``'s (name, config keys) on top."""
    prefixes = [p.strip() for p in task.split(",") if p.strip()]
    run = "demo" if seed is None else run_name("realtext", seed)
    name, keys = variant
    folder = Path("bench_target_task") / ("" if seed is None else run) / ("" if name == "default" else name)
    folder /= task.replace(",", "+")
    if seed is None:
        n_test = keep_kinds(work / SOURCES / "test.jsonl", work / folder / "test.jsonl", prefixes)
        n_dev = keep_kinds(work / SOURCES / "dev.jsonl", work / folder / "dev.jsonl", prefixes)
    else:
        test, dev = real_text_task_sets(prefixes, seed, SIZES["realtext"][1])
        (work / folder).mkdir(parents=True, exist_ok=True)
        write_jsonl(work / folder / "test.jsonl", test)
        write_jsonl(work / folder / "dev.jsonl", dev)
        n_test, n_dev = len(test), len(dev)
    task_config = work / folder / "config.yaml"
    task_config.write_text(compare_yaml(keys, eval=str(folder / "test.jsonl"), target=str(folder / "dev.jsonl")))
    print(f"{run} / {name} task {task}: {n_test} test records, {n_dev} target records", flush=True)
    layout = Layout(run)
    evals = {m: work / layout.compare_eval(m) for m in METHODS}
    pool_config = "config/config.yaml" if config is None else str(config.relative_to(work))
    snakemake(work, cores, [layout.compare_eval(m) for m in METHODS], [pool_config, str(task_config.relative_to(work))])
    # compare's own table: macro measures per seed, mean and 95 % interval (rule compare_downstream's function)
    down = downstream(evals, work / folder / "downstream.tsv").set_index("method")
    rows = []
    for m in METHODS:
        row = {
            "pool": run,
            "variant": name,
            "task": task,
            "method": m,
            "test": n_test,
            "targets": n_dev,
            "seeds": int(down.at[m, "n_seeds"]),
        }
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
    ap.add_argument("--task", action="append", required=True, help="comma-separated test kind prefixes")
    ap.add_argument("--pool", choices=POOLS, default="demo", help="the demo pool, or real-text pools (one a --seed)")
    ap.add_argument("--seed", type=int, action="append", default=[], help="a real-text pool's seed (--pool realtext)")
    ap.add_argument(
        "--variant", default="default", help="NAME:KEY=VALUE,... config keys on every task (bench_variants.py)"
    )
    ap.add_argument("--cores", type=int, default=2)
    ap.add_argument("--work", type=Path, default=None, help="scratch folder (default: a temporary one)")
    args = ap.parse_args(argv)
    if args.seed and args.pool != "realtext":
        sys.exit("--seed draws real-text pools: give --pool realtext with it")
    variant = parse_variant(args.variant)
    if "compare" in variant[1]:
        sys.exit(f"--variant {args.variant}: the compare section is the bench's own (methods, eval, target)")
    with tempfile.TemporaryDirectory(prefix="bench_target_task_") as tmp:
        work = (args.work or Path(tmp)) / "checkout"
        if not work.is_dir():  # a --work of an earlier run is used again: only what is missing runs
            export(None, work)
        if args.pool == "demo":
            demo_sources(work, args.cores)
            rows = [row for task in args.task for row in run_task(work, args.cores, task, variant=variant)]
        else:
            seeds = list(dict.fromkeys(args.seed or [SIZES["realtext"][0]]))
            configs = write_pools(work, [("realtext", seed) for seed in seeds])
            rows = [
                row
                for seed in seeds
                for task in args.task
                for row in run_task(work, args.cores, task, seed, configs[run_name("realtext", seed)], variant)
            ]
    report(rows)


def demo_sources(work: Path, cores: int) -> None:
    """The demo chain, then compare's whole demo test and target sets, kept in ``SOURCES``."""
    snakemake(work, cores, [], [])
    base = work / "bench_target_task" / "base.yaml"
    base.parent.mkdir(parents=True, exist_ok=True)
    base.write_text(compare_yaml())
    snakemake(
        work, cores, [DEMO.compare_test, DEMO.compare_target_set], ["config/config.yaml", str(base.relative_to(work))]
    )
    (work / SOURCES).mkdir(exist_ok=True)
    shutil.copy2(work / DEMO.compare_test, work / SOURCES / "test.jsonl")
    shutil.copy2(work / DEMO.compare_target_set, work / SOURCES / "dev.jsonl")


def report(rows: list[dict]) -> None:
    """Write the rows to ``benchmarks/target_task.tsv`` and print them."""
    table = pd.DataFrame(rows)
    out = REPO / "benchmarks" / "target_task.tsv"
    out.parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(out, sep="\t", index=False, float_format="%.4f")
    for row in rows:
        text = f"{row['pool']:<12} {row['variant']:<10} {row['task']:<18} {row['method']:<7}"
        for measure, _, _ in MEASURES:
            if np.isnan(row[measure]):  # real text: no checker, no accuracy
                continue
            text += f"  {measure} {row[measure]:.3f} ± {row[f'{measure}_ci95']:.3f}"
            if row["method"] != "random":
                diff, half = row[f"{measure}_minus_random"], row[f"{measure}_minus_random_ci95"]
                text += f" ({diff:+.3f} ± {half:.3f} vs random, {'beyond' if abs(diff) > half else 'within'})"
        print(text)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
