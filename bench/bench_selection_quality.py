"""What the selection selects: planted junk, near-duplicates and topics vs a uniform random pick.

    # default demo pool, reusing a workflow run's router data (seconds):
    snakemake --cores 1 --resources gpu=1 router_data
    python bench/bench_selection_quality.py --router results/demo/router_data --pool resources/demo/demo_pool.jsonl

    # what the workflow itself selected (results/demo/selection/selected_data.jsonl):
    python bench/bench_selection_quality.py --pool resources/demo/demo_pool.jsonl \
        --selected results/demo/selection/selected_data.jsonl

    # the default pool plus two other demo seeds/sizes, each built here: pool, pre-trained demo
    # model, router dump (measured 12-14 min per pool on the busy 2-core box; cached under --work)
    python bench/bench_selection_quality.py --build 0:3000 1:2000 2:5000 --work /tmp/bsq

    # the three pools: (b) a demo seed with the junk suite planted instead of the demo's own
    # junk, (c) the real-text pool (three formats) scored by the proxy model built on it
    python bench/bench_selection_quality.py --junk-suite 3:2000 --real-text 0:2000 --work /tmp/bsq
    # one method under other selection settings (a variant): --methods and --set KEY=VALUE
    python bench/bench_selection_quality.py --junk-suite 3:2000 --work /tmp/bsq --methods combined \
        --set quality_cut=pool
    # routing against hidden-state features (selection.features) for each diversity method; a
    # cached router.h5 without hidden states is dumped again with the cached model
    python bench/bench_selection_quality.py --junk-suite 3:2000 --work /tmp/bsq --methods combined \
        --diversity fps facility_location kmeans --features routing hidden

For each pool and each quality method (``gate`` when the router data has quality logits,
``combined``, ``ifd``, ``perplexity``, ``none``) x diversity (each ``--diversity`` method,
FPS by default, and off) x features (each ``--features``, routing by default; diversity off
once, as it compares no features) it runs the
library's selection (``build_candidates`` + ``run_fps``, every ``selection`` key at the
schema's default unless ``--selection``, ``--importance``, ``--strata`` or ``--set`` say
otherwise; until 2026-12-05 ``--importance`` was 0.2, the default before the yardstick moved
it to null, and the README's tables measured before say "two stages 0.05 / 0.2") and prints the
selected set's share of clean records, of each planted junk kind and of near-duplicates,
the near-duplicate pairs with both copies selected, the share of *good* records (clean, or
a near-duplicate whose original is not selected), and the worst topic share relative to
the pool's (1.00 = as in the pool). ``none`` ranks nothing: FPS over the whole pool from
its first sample (diversity on), a uniform random pick (off). ``random`` is the mean of
5 seeded uniform random picks of the same size.

On the pools with the junk suite (``--junk-suite``, ``--real-text``) the junk columns are
the suite's two halves, ``junk tuning`` and ``junk held-back`` (the split written in
``selectflow/data/junk.py`` before anything was tuned), and a second table gives each kind's
share of the selection next to its share of the pool. The real-text pool's "topic" is the
task kind (explain, signature, ...).

The labels (``planted``, ``topic``, ``duplicate_of``) are read here, to measure; the
selection never sees them. ``target`` says whether a row meets the bar set for the selection: good
>= 95 %, junk <= 2 %, no near-duplicate pair both selected, every topic within +-40 %.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from dataclasses import fields
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import write_junk_suite_pool, write_real_text_pool  # noqa: E402

from selectflow.config import SelectionConfig, selection_section  # noqa: E402
from selectflow.data.junk import HELD_BACK_KINDS, TUNING_KINDS  # noqa: E402
from selectflow.data.records import read_dataset  # noqa: E402
from selectflow.router.routerfile import concat_shards, read_router_shard, shard_header, write_router_shard  # noqa: E402
from selectflow.schema import schema_default  # noqa: E402
from selectflow.select.candidates import read_candidates  # noqa: E402
from selectflow.select.distance import features  # noqa: E402
from selectflow.select.fps import fps_streaming  # noqa: E402
from selectflow.stages.select import build_candidates, run_fps  # noqa: E402

DEMO_JUNK = {k.removeprefix("junk_"): {k} for k in ("junk_empty", "junk_truncated", "junk_repeated", "junk_off_topic")}
SUITE_JUNK = {
    "junk tuning": {f"junk_{k}" for k in TUNING_KINDS},
    "junk held-back": {f"junk_{k}" for k in HELD_BACK_KINDS},
}


def labels(*pools: Path) -> dict[str, dict]:
    """sample id -> planted, topic (the real-text pool's task kind), duplicate_of and (prompt, response)."""
    out = {}
    for k, path in enumerate(pools):
        for r in read_dataset(path, f"pool{k}"):
            rec = r["record"]
            out[r["sample_id"]] = {
                "planted": rec["planted"],
                "topic": rec.get("topic", rec.get("kind")),
                "duplicate_of": rec.get("duplicate_of"),
                "text": (r["prompt"], r["response"]),
            }
    return out


def junk_columns(lab: dict[str, dict]) -> dict[str, set]:
    """The junk columns of a pool: the demo's four kinds, or the junk suite's two halves (a kind
    the demo does not plant is present; ``empty`` is in both)."""
    suite_only = set().union(*SUITE_JUNK.values()) - set().union(*DEMO_JUNK.values())
    return SUITE_JUNK if any(v["planted"] in suite_only for v in lab.values()) else DEMO_JUNK


def measure(selected: list[str], lab: dict[str, dict]) -> dict:
    """Shares of the selected ids by planted kind and topic; duplicate pairs; the target check."""
    picked = set(selected)
    kinds = pd.Series([lab[s]["planted"] for s in selected], dtype=str)
    n = len(selected)
    dup = [s for s in selected if lab[s]["planted"] == "near_duplicate"]
    both = sum(lab[s]["duplicate_of"] in picked for s in dup)
    good = int((kinds == "clean").sum()) + len(dup) - both
    junk = int(kinds.str.startswith("junk_").sum())
    pool_topics = pd.Series([r["topic"] for r in lab.values()]).value_counts(normalize=True)
    sel_topics = pd.Series([lab[s]["topic"] for s in selected]).value_counts(normalize=True)
    ratio = {t: sel_topics.get(t, 0.0) / pool_topics[t] for t in pool_topics.index if t != "none"}
    worst = min(ratio.values()) if abs(min(ratio.values()) - 1) > abs(max(ratio.values()) - 1) else max(ratio.values())
    texts = {lab[s]["text"] for s in selected}
    row = {"n": n, "good": good / n, "clean": float((kinds == "clean").mean())}
    row.update({col: float(kinds.isin(members).mean()) for col, members in junk_columns(lab).items()})
    row.update(
        {
            "junk": junk / n,
            "near_dup": len(dup) / n,
            "pairs_both": both,
            "same_text": n - len(texts),
            "topic_worst": worst,
        }
    )
    row["target"] = bool(
        row["good"] >= 0.95 and row["junk"] <= 0.02 and both == 0 and all(0.6 <= r <= 1.4 for r in ratio.values())
    )
    row["by_kind"] = kinds[kinds.str.startswith("junk_")].value_counts().to_dict()
    return row


def kind_table(table: pd.DataFrame, lab: dict[str, dict]) -> pd.DataFrame:
    """Each junk-suite kind: its share of the pool and of each row's selection (held-back kinds marked)."""
    pool = pd.Series([v["planted"] for v in lab.values()]).value_counts(normalize=True)
    rows = []
    for kind in TUNING_KINDS + HELD_BACK_KINDS:
        row = {
            "kind": kind,
            "half": "tuning" if kind in TUNING_KINDS else "held-back",
            "pool": pool.get(f"junk_{kind}", 0.0),
        }
        for _, r in table.iterrows():
            row[f"{r['method']} {r['diversity'] or 'off'} {r['features']}".rstrip()] = (
                r["by_kind"].get(f"junk_{kind}", 0) / r["n"]
            )
        rows.append(row)
    return pd.DataFrame(rows)


def run_pool(
    router_paths: list[Path],
    lab: dict[str, dict],
    selection: float,
    importance: float | None,
    strata: int,
    methods: list[str] | None = None,
    settings: dict | None = None,
    diversities: tuple[str, ...] = ("fps",),
    feature_kinds: tuple[str, ...] = ("routing",),
) -> pd.DataFrame:
    """Every method x diversity (each of ``diversities``, then off) x features (each of ``feature_kinds``;
    diversity off once), ``settings`` (more ``selection.*`` keys) applied to each."""
    shard = concat_shards(router_paths)
    methods = ["gate", "combined", "ifd", "perplexity"] if methods is None else methods
    methods = [m for m in methods if m != "gate" or shard.quality_logits is not None]  # gate: where there are logits
    suffix = "".join(f" {key}={value}" for key, value in (settings or {}).items())
    k = max(1, round(selection * len(shard)))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        runs = [(d, f) for d in diversities for f in feature_kinds] + [(False, feature_kinds[0])]
        for method in methods:
            for diversity, kind in runs:
                t0 = time.perf_counter()
                sel = selection_section(
                    {
                        "quality_method": method,
                        "selection_percentage": selection,
                        "routing_strata": strata,
                        "importance_selection_percentage": importance,
                        "disable_diversity": not diversity,
                        "diversity": diversity or "fps",
                        "features": kind,
                        "device": "cpu",
                        "fps_log_interval": 10**9,
                        **(settings or {}),
                    }
                )
                build_candidates(router_paths, out / "c.h5", out / "q.tsv", sel)
                run_fps(out / "c.h5", out / "curve.tsv", sel)
                picks = pd.read_csv(out / "curve.tsv", sep="\t", dtype={"sample_id": str})["sample_id"].tolist()
                cands = read_candidates(out / "c.h5")
                rows.append(
                    {
                        "method": method + suffix,
                        "diversity": diversity,
                        "features": kind if diversity else "",
                        **measure(picks, lab),
                        "dups_dropped": int(cands.attrs["n_duplicates"]),
                        "s": time.perf_counter() - t0,
                    }
                )
    ids = shard.sample_id.astype(str)
    fps = fps_streaming(
        features(shard.moe_probs, "wasserstein"), k, start=0, device="cpu", log_interval=10**9, metric="wasserstein"
    )
    rows.append({"method": "none", "diversity": "fps", "features": "routing", **measure(list(ids[fps.picks]), lab)})
    randoms = [measure(list(np.random.default_rng(seed).choice(ids, k, replace=False)), lab) for seed in range(5)]
    mean = pd.DataFrame(randoms).drop(columns=["target", "by_kind"]).mean().to_dict()
    mean["target"] = all(r["target"] for r in randoms)
    mean["by_kind"] = {
        kind: sum(r["by_kind"].get(kind, 0) for r in randoms) / 5
        for kind in {kind for r in randoms for kind in r["by_kind"]}
    }
    rows.append({"method": "random (mean of 5)", "diversity": False, "features": "", **mean})
    return pd.DataFrame(rows)


def has_hidden(h5: Path) -> bool:
    return bool(shard_header(h5)[0].get("hidden_size"))


def dump_pool(root: Path, pools: list[Path], max_length: int, seed: int, hidden: bool = False) -> Path:
    """The proxy model of ``pools`` (the demo model's recipe, ``seed``) and one router-data shard of them.

    Both are cached under ``root``; a cached shard without hidden states is dumped again (with the
    cached model) when ``hidden`` asks for them.
    """
    from selectflow.data.demo import build_proxy_model
    from selectflow.router.dump import DumpSettings, RouterDumper

    h5 = root / "router.h5"
    if not h5.is_file() or (hidden and not has_hidden(h5)):
        if not (root / "model" / "config.json").is_file():
            build_proxy_model(root / "model", pools, seed=seed)
        dumper = RouterDumper.from_path(
            str(root / "model"),
            DumpSettings(
                batch_size=64, max_length=max_length, ifd=True, device="auto", dtype="float32", hidden_states=hidden
            ),
        )
        records = [r for k, path in enumerate(pools) for r in read_dataset(path, f"pool{k}")]
        write_router_shard(h5, dumper.dump(records, progress=False))
    return h5


def build_pool(seed: int, n: int, work: Path, max_length: int, hidden: bool = False) -> tuple[list[Path], list[Path]]:
    """Demo pool, pre-trained demo model and one router-data shard, as the workflow builds them."""
    from selectflow.data.demo import write_demo_pool

    root = work / f"seed{seed}_n{n}"
    pool = root / "pool.jsonl"
    if not pool.is_file():
        write_demo_pool(pool, n, seed)
    return [dump_pool(root, [pool], max_length, seed, hidden)], [pool]


def build_junk_suite_pool(seed: int, n: int, work: Path, max_length: int, junk_rate: float, hidden: bool = False):
    """A demo pool without the demo's own junk, the junk suite planted at ``junk_rate`` (every kind)."""
    root = work / f"junksuite_seed{seed}_n{n}_rate{junk_rate:g}"
    pool = write_junk_suite_pool(root / "pool.jsonl", n, seed, junk_rate)
    return [dump_pool(root, [pool], max_length, seed, hidden)], [pool]


def build_real_text_pool(seed: int, n: int, work: Path, max_length: int, junk_rate: float, hidden: bool = False):
    """The real-text pool (Alpaca, ShareGPT and messages files) and its proxy model's router data."""
    root = work / f"realtext_seed{seed}_n{n}_rate{junk_rate:g}"
    pools = write_real_text_pool(root, n, seed, junk_rate)
    return [dump_pool(root, pools, max_length, schema_default("proxy", "seed"), hidden)], pools


def hidden_bytes(paths: list[Path]) -> str:
    """The shards' size with their ``hidden`` dataset and, rewritten here without it, the size they had without."""
    if not all(has_hidden(p) for p in paths):
        return ""
    with tempfile.TemporaryDirectory() as tmp:
        without = 0
        for k, path in enumerate(paths):
            shard = read_router_shard(path)
            shard.hidden = None
            write_router_shard(Path(tmp) / f"{k}.h5", shard)
            without += (Path(tmp) / f"{k}.h5").stat().st_size
    with_ = sum(p.stat().st_size for p in paths)
    return (
        f"router data {with_ / 2**20:.2f} MiB with hidden, {without / 2**20:.2f} MiB without "
        f"(+{with_ / without - 1:.0%})"
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--router", type=Path, help="a router_data folder (searched for *.h5) of a workflow run")
    p.add_argument("--pool", type=Path, help="the demo pool JSONL of that run (for its labels)")
    p.add_argument("--selected", type=Path, help="a workflow's selected_data.jsonl to measure (with --pool)")
    p.add_argument("--build", nargs="*", default=[], metavar="SEED:N", help="build and measure demo pools SEED:N")
    p.add_argument(
        "--junk-suite",
        nargs="*",
        default=[],
        metavar="SEED:N",
        help="build and measure demo pools SEED:N with the junk suite planted (not the demo's junk)",
    )
    p.add_argument(
        "--real-text",
        nargs="*",
        default=[],
        metavar="SEED:N",
        help="build and measure real-text pools SEED:N, scored by their proxy model",
    )
    p.add_argument("--junk-rate", type=float, default=0.15, help="junk-suite share of --junk-suite/--real-text pools")
    p.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "bench_selection_quality")
    p.add_argument(
        "--selection",
        type=float,
        default=schema_default("selection", "selection_percentage"),
        help="selection.selection_percentage (default: the schema's)",
    )
    p.add_argument(
        "--importance",
        type=lambda v: None if v.lower() in ("null", "none") else float(v),
        default=schema_default("selection", "importance_selection_percentage"),
        help="selection.importance_selection_percentage; null: every kept sample a candidate (default: the schema's)",
    )
    p.add_argument("--strata", type=int, default=None, help="selection.routing_strata (default: the schema's)")
    p.add_argument(
        "--methods",
        nargs="+",
        default=None,
        metavar="METHOD",
        help="quality methods to measure (default: gate, combined, ifd, perplexity; gate only on "
        "router data with quality logits)",
    )
    p.add_argument(
        "--set",
        nargs="+",
        default=[],
        metavar="KEY=VALUE",
        dest="settings",
        help="more selection.* keys for every method (YAML values: quality_cut=pool), named in its row",
    )
    p.add_argument(
        "--diversity",
        nargs="+",
        default=["fps"],
        choices=["fps", "facility_location", "kmeans"],
        help="selection.diversity methods to run beside diversity off (default: fps)",
    )
    p.add_argument("--neighbors", type=int, default=None, help="selection.diversity_neighbors (default: the schema's)")
    p.add_argument("--clusters", type=int, default=None, help="selection.diversity_clusters (default: the schema's)")
    p.add_argument(
        "--features",
        nargs="+",
        default=["routing"],
        choices=["routing", "hidden"],
        help="selection.features to run each diversity method with (default: routing); hidden re-dumps "
        "a cached router.h5 that has no hidden states",
    )
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    pools = []
    if args.selected:
        picks = [json.loads(line)["sample_id"] for line in open(args.selected, encoding="utf-8")]
        row = pd.DataFrame([{"selection": str(args.selected), **measure(picks, labels(args.pool))}]).drop(
            columns="by_kind"
        )
        print(row.to_markdown(index=False, floatfmt=".3f"))
    if args.router:
        pools.append((f"{args.pool} (workflow run)", sorted(args.router.rglob("*.h5")), [args.pool]))
    max_length = schema_default("router_dump", "max_length")
    hidden = "hidden" in args.features
    builds = [
        ("demo seed {}, {} records", spec, lambda s, n: build_pool(s, n, args.work, max_length, hidden))
        for spec in args.build
    ]
    builds += [
        (
            f"demo seed {{}}, {{}} records, junk suite planted at {args.junk_rate:g}",
            spec,
            lambda s, n: build_junk_suite_pool(s, n, args.work, max_length, args.junk_rate, hidden),
        )
        for spec in args.junk_suite
    ]
    builds += [
        (
            f"real-text pool seed {{}}, {{}} records (3 formats), junk suite at {args.junk_rate:g}, proxy scorer",
            spec,
            lambda s, n: build_real_text_pool(s, n, args.work, max_length, args.junk_rate, hidden),
        )
        for spec in args.real_text
    ]
    for name, spec, build in builds:
        seed, n = (int(x) for x in spec.split(":"))
        t0 = time.perf_counter()
        paths, pool = build(seed, n)
        print(f"built {name.format(seed, n)} in {time.perf_counter() - t0:.0f} s; {hidden_bytes(paths)}", flush=True)
        pools.append((name.format(seed, n), paths, pool))
    if not pools and not args.selected:
        p.error("give --router and --pool, --selected and --pool, or --build SEED:N ...")
    pd.set_option("display.width", 250)
    settings = {key: yaml.safe_load(value) for key, value in (kv.split("=", 1) for kv in args.settings)}
    unknown = sorted(set(settings) - {f.name for f in fields(SelectionConfig)})
    if unknown:
        p.error(f"--set: {', '.join(unknown)} is no selection.* key")
    for name, paths, pool in pools:
        strata = args.strata if args.strata is not None else schema_default("selection", "routing_strata")
        lab = labels(*pool)
        t0 = time.perf_counter()
        extra = {
            key: value
            for key, value in (("diversity_neighbors", args.neighbors), ("diversity_clusters", args.clusters))
            if value is not None
        }
        table = run_pool(
            paths,
            lab,
            args.selection,
            args.importance,
            strata,
            args.methods,
            {**settings, **extra},
            tuple(args.diversity),
            tuple(args.features),
        )
        print(
            f"\n## {name}: select {args.selection:g} ("
            + (
                "every kept sample a candidate"
                if args.importance is None
                else f"two-stage, importance {args.importance:g}"
            )
            + f", routing_strata {strata}; {time.perf_counter() - t0:.0f} s)\n"
        )
        print(table.drop(columns="by_kind").to_markdown(index=False, floatfmt=".3f"))
        if junk_columns(lab) is SUITE_JUNK:
            print("\nshare of each junk kind: in the pool, and in each selection\n")
            print(kind_table(table, lab).to_markdown(index=False, floatfmt=".3f"))


if __name__ == "__main__":
    main()
