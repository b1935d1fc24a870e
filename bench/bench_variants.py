"""The downstream yardstick over selection variants and pools: compare's ``fps`` against ``random``.

    # from the repository root; a scratch copy of this checkout builds the pools and runs each variant
    python bench/bench_variants.py --variant default --variant density:fps_weight=density \\
        --variant fl:diversity=facility_location,fps_weight=none [--pools demo junksuite realtext realclean] \\
        [--cores 2] [--work DIR] [--seed realtext=1,2,3 --seed junksuite=4,5,6] [--out TSV]

A variant is ``NAME`` (the default config) or ``NAME:KEY=VALUE,KEY=VALUE``: keys of the
``selection`` section, or of another section with its name (``proxy.pretrain_epochs=3``,
``warmup.train.max_steps=120``; values read as YAML: ``null``, numbers, words). A model-side key
reruns what it changes (proxy or warm-up model, router dump) before the selection. For each
pool and variant it runs ``snakemake results/<pool>/compare/{fps,random}/eval.tsv`` with the
pool's config, a compare section of the two methods without full pools, and the variant's keys: the
fine-tunes of compare's student (``compare.seeds``) on the ``fps`` selection (the selection of
the variant) and on ``random`` draws of the same size from the same kept pool. Snakemake reruns
what the variant's keys change: a variant of FPS-only keys (``selectflow.config.FPS_ONLY_KEYS``)
reruns ``compare_fps`` and its fine-tunes alone, reusing ``random``'s (3 jobs instead of 11).

The pools (README, Which default and why; the first three unless ``--pools`` names others):

* ``demo``: the default config (3,000 records, its demo model; compare's demo test set);
* ``junksuite``: demo seed 3, 2,000 records without the demo's own junk, the junk suite
  (``selectflow.data.junk``) planted at 15 %, scored by a proxy model built on it; the demo test set;
* ``realtext``: the real-text pool, seed 0, 2,000 records in three formats, 15 % junk suite,
  proxy model; compare's held-out slice of the pool (no checker: loss only). The slice is drawn
  from the kept pool, so it holds the junk that passed the quality step;
* ``realclean``: the same pool as ``realtext`` for its seed, tested on a clean set of fresh
  records instead (``compare.eval``: :func:`selectflow.data.realtext.make_realtext_testset`, up to
  ``compare.test_per_kind`` (20, as the demo's test set) records of each task kind whose question
  the pool does not ask; nothing is held out).

``--baseline METHOD`` (repeatable) fine-tunes another compare method beside the two on every pool
and variant (``longest``, ``random_length``, ``quality``, …) and prints ``fps`` minus it; changing the methods reruns
compare's pool and ``random``'s fine-tunes (the same figures: everything is seeded).

``--seed POOL=SEED[,SEED...]`` draws those pools of the recipe instead of its default one
(``junksuite``, ``realtext``: their seed; a run ``<pool>_s<SEED>`` each), the check that a result
holds on more than the pools the defaults were chosen on; with more than one pool of a recipe it
also prints, per recipe, variant and measure, on how many pools ``fps`` came out below / above
``random`` (beyond the interval in brackets) and the mean difference.

Prints per pool and variant the macro accuracy and loss of both methods (mean ± 95 % interval
over the seeds, compare's ``downstream()``), ``fps`` minus ``random`` with Welch's 95 % interval,
and the planted junk among ``fps``'s picks (with ``compare.fps_draws``, among the picks of all its
draws together), tuning and held-back kinds apart (labels read here to measure; no selection reads
them); writes the rows to ``--out`` (``benchmarks/variants.tsv`` of this checkout) and keeps each
run's ``eval.tsv`` and ``selected_data.jsonl`` (and ``draw_*.jsonl``) under
``--work``/runs/<pool>/<variant>/.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
import tempfile
from pathlib import Path

import pandas as pd
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import export, snakemake, write_junk_suite_pool, write_real_text_pool  # noqa: E402

from selectflow.data.junk import HELD_BACK_KINDS, TUNING_KINDS  # noqa: E402
from selectflow.data.realtext import make_realtext_testset  # noqa: E402
from selectflow.data.records import write_jsonl  # noqa: E402
from selectflow.layout import Layout  # noqa: E402
from selectflow.report.compare import MEASURES, difference, per_seed  # noqa: E402
from selectflow.schema import schema, schema_default, schema_enum  # noqa: E402
from selectflow.stages.compare import downstream  # noqa: E402

METHODS = ("fps", "random")
POOLS = ("demo", "junksuite", "realtext", "realclean")
DEFAULT_POOLS = POOLS[:3]  # the pools of the README's table; realclean on request
JUNK_RATE = 0.15
# pool -> (seed, records) of the generated pools
SIZES = {"junksuite": (3, 2000), "realtext": (0, 2000), "realclean": (0, 2000)}


def parse_variant(text: str) -> tuple[str, dict]:
    """``NAME`` or ``NAME:KEY=VALUE,...`` -> (name, config keys as nested sections). A KEY without a
    section is a ``selection`` key; ``proxy.pretrain_epochs`` or ``warmup.train.max_steps`` name
    others. Each key is checked against the schema."""
    name, _, rest = text.partition(":")
    keys: dict = {}
    for item in filter(None, (s.strip() for s in rest.split(","))):
        key, eq, value = item.partition("=")
        path = key.split(".") if "." in key else ["selection", key]
        node, known = keys, schema()
        for i, part in enumerate(path):
            # a section without listed keys (warmup.train: train keys) is checked when the config is read
            props = known.get("properties") if known is not None else None
            if not eq or (props is not None and part not in props):
                where = ".".join(path[:i]) or "the config"
                sys.exit(
                    f"--variant {text}: {item!r} is not KEY=VALUE with a key of {where} ({', '.join(sorted(props))})"
                )
            known = None if props is None else props[part]
            if i < len(path) - 1:
                node = node.setdefault(part, {})
        node[path[-1]] = yaml.safe_load(value)
    if not name or "/" in name:
        sys.exit(f"--variant {text}: give the variant a name (letters, digits, _ and -)")
    return name, keys


def run_name(pool: str, seed: int | None) -> str:
    """The run (and folder) of ``pool`` drawn with ``seed``: its name, ``_s<seed>`` added unless that is its default."""
    return pool if seed is None or seed == SIZES[pool][0] else f"{pool}_s{seed}"


def pool_runs(pools: list[str], seeds: dict[str, list[int]]) -> list[tuple[str, int | None]]:
    """(pool, seed) of every pool to run: ``seeds[pool]`` where given, else its default (None for the demo)."""
    return [(pool, seed) for pool in pools for seed in seeds.get(pool, [SIZES.get(pool, (None,))[0]])]


def write_pools(work: Path, runs: list[tuple[str, int | None]]) -> dict[str, Path]:
    """Each pool run's config file in ``work`` (the checkout copy), its pool files written beside it;
    ``runs``: (pool, seed of its generator) pairs (:func:`pool_runs`). Keys: the runs' names (:func:`run_name`)."""
    base = yaml.safe_load((work / "config" / "config.yaml").read_text())
    configs = {}
    for pool, seed in runs:
        run = run_name(pool, seed)
        folder = work / "bench_variants" / run
        folder.mkdir(parents=True, exist_ok=True)
        config = dict(base)
        if pool == "junksuite":
            write_junk_suite_pool(folder / "pool.jsonl", SIZES[pool][1], seed, JUNK_RATE)
            config["datasets"] = {"pool": str((folder / "pool.jsonl").relative_to(work))}
            config["compare"] = {**base.get("compare", {}), "eval": "demo"}
        elif pool in ("realtext", "realclean"):
            files = write_real_text_pool(folder, SIZES[pool][1], seed, JUNK_RATE)
            config["datasets"] = {p.stem: str(p.relative_to(work)) for p in files}
        if pool == "realclean":
            test = make_realtext_testset(schema_default("compare", "test_per_kind"), SIZES[pool][1], seed)
            write_jsonl(folder / "test.jsonl", test)
            config["compare"] = {**base.get("compare", {}), "eval": str((folder / "test.jsonl").relative_to(work))}
        if pool != "demo":
            config["run"] = run
            config["model"] = {**base["model"], "path": "proxy"}
            config.pop("demo", None)
        (folder / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
        configs[run] = folder / "config.yaml"
    return configs


def pool_files(config: Path, work: Path) -> list[Path]:
    datasets = yaml.safe_load(config.read_text())["datasets"]
    return [work / p for p in datasets.values()]


def junk_in(selected: list[Path], files: list[Path]) -> dict[str, int]:
    """Planted junk among the picks of the ``selected`` files together, tuning and held-back kinds apart
    (labels: ``planted``)."""
    planted = {}
    for path in files:
        for line in path.read_text().splitlines():
            rec = json.loads(line)
            planted[str(rec.get("id"))] = rec.get("planted", "")
    counts = {"picks": 0, "junk_tuning": 0, "junk_held_back": 0}
    for line in (line for path in selected for line in path.read_text().splitlines()):
        rec = json.loads(line)
        sid = str(rec.get("sample_id", rec.get("id")))
        kind = planted.get(sid, planted.get(sid.rpartition(":")[2], "")).removeprefix("junk_")
        counts["picks"] += 1
        counts["junk_tuning"] += kind in TUNING_KINDS
        counts["junk_held_back"] += kind in HELD_BACK_KINDS
    return counts


def run_variant(work: Path, cores: int, run: str, config: Path, name: str, keys: dict, baselines=()) -> dict:
    """One pool and variant: compare's ``fps``, ``random`` and ``baselines`` (more compare methods), one row."""
    methods = (*METHODS, *baselines)
    folder = config.parent
    compare = folder / "compare.yaml"
    compare.write_text(yaml.safe_dump({"compare": {"methods": list(methods), "full_pools": []}}))
    variant = folder / f"variant_{name}.yaml"
    variant.write_text(yaml.safe_dump(keys) if keys else "{}\n")
    layout = Layout(run)
    print(f"{run} / {name}: {keys or 'default config'}", flush=True)
    snakemake(
        work,
        cores,
        [layout.compare_eval(m) for m in methods],
        [str(p.relative_to(work)) for p in (config, compare, variant)],
    )
    keep = work.parent / "runs" / run / name
    for m in methods:
        (keep / m).mkdir(parents=True, exist_ok=True)
        shutil.copy2(work / layout.compare_eval(m), keep / m / "eval.tsv")
    down = downstream({m: keep / m / "eval.tsv" for m in methods}, keep / "downstream.tsv").set_index("method")
    # fps's selection, and with compare.fps_draws its draws for the later fine-tunes: the junk of all counts
    picked = [work / layout.compare_selected("fps")]
    picked += [work / layout.compare_random_draw(i, "fps") for i in range(1, int(down.at["fps", "n_selections"]))]
    for path in picked:
        shutil.copy2(path, keep / "fps" / path.name)
    row = {"pool": run, "variant": name, "keys": json.dumps(keys), "seeds": int(down.at["fps", "n_seeds"])}
    row["baselines"] = ",".join(baselines)
    for measure, _, _ in MEASURES:
        for m in methods:
            row[f"{m}_{measure}"] = down.at[m, f"macro_{measure}"]
            row[f"{m}_{measure}_ci95"] = down.at[m, f"macro_{measure}_ci95"]
        for m in methods[1:]:  # fps − m
            diff, half = difference(per_seed(down.loc["fps"], measure), per_seed(down.loc[m], measure))
            row[f"{measure}_minus_{m}"], row[f"{measure}_minus_{m}_ci95"] = diff, half
    row.update(junk_in([keep / "fps" / path.name for path in picked], pool_files(config, work)))
    return row


def _verdict(diff: float, half: float) -> str:
    """Whether a difference lies beyond its 95 % interval's half-width."""
    return "beyond" if abs(diff) > half else "within"


def line(row: dict) -> str:
    text = f"{row['pool']:<10} {row['variant']:<14}"
    for measure, _, _ in MEASURES:
        fps, rnd = row[f"fps_{measure}"], row[f"random_{measure}"]
        if isinstance(fps, float) and math.isnan(fps):
            continue
        diff, half = row[f"{measure}_minus_random"], row[f"{measure}_minus_random_ci95"]
        text += (
            f"  {measure} {fps:.3f} ± {row[f'fps_{measure}_ci95']:.3f} vs random {rnd:.3f} ± "
            f"{row[f'random_{measure}_ci95']:.3f} ({diff:+.3f} ± {half:.3f}, {_verdict(diff, half)})"
        )
    for m in filter(None, row.get("baselines", "").split(",")):
        for measure, _, _ in MEASURES:
            diff, half = row[f"{measure}_minus_{m}"], row[f"{measure}_minus_{m}_ci95"]
            if not math.isnan(diff):
                text += f"  {measure} fps − {m} {diff:+.3f} ± {half:.3f} ({_verdict(diff, half)})"
    share = (row["junk_tuning"] + row["junk_held_back"]) / max(row["picks"], 1)
    return text + f"  junk {row['junk_tuning']} + {row['junk_held_back']} of {row['picks']} ({share:.1%})"


def pooled(table: pd.DataFrame) -> list[str]:
    """Per recipe (the pool name before ``_s``) with more than one pool, variant and measure: the pools where
    ``fps`` − ``random`` is below / above 0 (beyond the interval in brackets) and its mean."""
    out = []
    table = table.assign(recipe=table["pool"].str.replace(r"_s\d+$", "", regex=True))
    for (recipe, variant), group in table.groupby(["recipe", "variant"], sort=False):
        if len(group) < 2:
            continue
        for measure, _, _ in MEASURES:
            diff, half = group[f"{measure}_minus_random"], group[f"{measure}_minus_random_ci95"]
            if diff.isna().all():
                continue
            below, above = int((diff < 0).sum()), int((diff > 0).sum())
            out.append(
                f"{recipe:<10} {variant:<14} {measure} over {len(group)} pools: fps below random on {below} "
                f"({int(((diff < 0) & (diff.abs() > half)).sum())} beyond), above on {above} "
                f"({int(((diff > 0) & (diff.abs() > half)).sum())} beyond), mean {diff.mean():+.3f}"
            )
    return out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--variant", action="append", required=True, help="NAME or NAME:KEY=VALUE,... (selection keys)")
    ap.add_argument("--pools", nargs="+", default=list(DEFAULT_POOLS), choices=POOLS)
    ap.add_argument(
        "--baseline",
        action="append",
        default=[],
        choices=[m for m in schema_enum("compare", "methods") if m not in (*METHODS, "target")],
        help="another compare method to fine-tune beside fps and random on every pool and variant (fps − it printed)",
    )
    ap.add_argument("--cores", type=int, default=2)
    ap.add_argument("--work", type=Path, default=None, help="scratch folder (default: a temporary one)")
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "variants.tsv", help="the rows' TSV")
    ap.add_argument(
        "--seed",
        action="append",
        default=[],
        metavar="POOL=SEED[,SEED...]",
        help=f"the pools of that recipe to draw instead of its default one ({', '.join(SIZES)}; defaults: "
        + ", ".join(f"{p}={s}" for p, (s, _) in SIZES.items())
        + ")",
    )
    args = ap.parse_args(argv)
    seeds = {}
    for item in args.seed:
        pool, eq, value = item.partition("=")
        values = value.split(",")
        if pool not in SIZES or not eq or not all(v.isdigit() for v in values) or len(set(values)) < len(values):
            sys.exit(
                f"--seed {item}: give POOL=SEED[,SEED...], POOL one of {', '.join(SIZES)}, "
                "the seeds different whole numbers"
            )
        seeds[pool] = [int(v) for v in values]
    variants = [parse_variant(v) for v in args.variant]
    if len({n for n, _ in variants}) < len(variants):
        sys.exit("--variant: two variants have the same name")
    with tempfile.TemporaryDirectory(prefix="bench_variants_") as tmp:
        work = (args.work or Path(tmp)) / "checkout"
        if not work.is_dir():  # a --work of an earlier run is used again: only what is missing runs
            export(None, work)
        configs = write_pools(work, pool_runs(args.pools, seeds))
        rows = [
            run_variant(work, args.cores, run, config, name, keys, tuple(args.baseline))
            for run, config in configs.items()
            for name, keys in variants
        ]
    table = pd.DataFrame(rows)
    out = args.out
    out.parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(out, sep="\t", index=False, float_format="%.4f")
    for row in rows:
        print(line(row))
    for text in pooled(table):
        print(text)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
