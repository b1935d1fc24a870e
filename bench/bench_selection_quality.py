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

For each pool and each quality method (``gate`` when the router data has quality logits,
``combined``, ``ifd``, ``perplexity``, ``none``) x diversity (FPS on / off) it runs the
library's selection (``build_candidates`` + ``run_fps``, the default config's
``selection_percentage`` 0.05 and ``importance_selection_percentage`` 0.2) and prints the
selected set's share of clean records, of each planted junk kind and of near-duplicates,
the near-duplicate pairs with both copies selected, the share of *good* records (clean, or
a near-duplicate whose original is not selected), and the worst topic share relative to
the pool's (1.00 = as in the pool). ``none`` ranks nothing: FPS over the whole pool from
its first sample (diversity on), a uniform random pick (off). ``random`` is the mean of
5 seeded uniform random picks of the same size.

The labels (``planted``, ``topic``, ``duplicate_of``) are read here, to measure; the
selection never sees them. ``target`` says whether a row meets the issue's bar: good
>= 95 %, junk <= 2 %, no near-duplicate pair both selected, every topic within +-40 %.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from selectflow.config import selection_section  # noqa: E402
from selectflow.router.routerfile import concat_shards  # noqa: E402
from selectflow.select.candidates import read_candidates  # noqa: E402
from selectflow.select.distance import features  # noqa: E402
from selectflow.select.fps import fps_streaming  # noqa: E402
from selectflow.stages.select import build_candidates, run_fps  # noqa: E402

JUNK = ("junk_empty", "junk_truncated", "junk_repeated", "junk_off_topic")


def labels(pool_jsonl: Path) -> dict[str, dict]:
    return {r["id"]: r for r in (json.loads(line) for line in open(pool_jsonl, encoding="utf-8"))}


def measure(selected: list[str], lab: dict[str, dict]) -> dict:
    """Shares of the selected ids by planted kind and topic; duplicate pairs; the target check."""
    picked = set(selected)
    kinds = pd.Series([lab[s]["planted"] for s in selected])
    n = len(selected)
    dup = [s for s in selected if lab[s]["planted"] == "near_duplicate"]
    both = sum(lab[s]["duplicate_of"] in picked for s in dup)
    good = int((kinds == "clean").sum()) + len(dup) - both
    junk = int(kinds.isin(JUNK).sum())
    pool_topics = pd.Series([r["topic"] for r in lab.values()]).value_counts(normalize=True)
    sel_topics = pd.Series([lab[s]["topic"] for s in selected]).value_counts(normalize=True)
    ratio = {t: sel_topics.get(t, 0.0) / pool_topics[t] for t in pool_topics.index if t != "none"}
    worst = min(ratio.values()) if abs(min(ratio.values()) - 1) > abs(max(ratio.values()) - 1) else max(ratio.values())
    texts = {(lab[s]["instruction"], lab[s].get("input", ""), lab[s]["output"]) for s in selected}
    row = {"n": n, "good": good / n, "clean": float((kinds == "clean").mean())}
    row.update({k.removeprefix("junk_"): float((kinds == k).mean()) for k in JUNK})
    row.update({"junk": junk / n, "near_dup": len(dup) / n, "pairs_both": both, "same_text": n - len(texts),
                "topic_worst": worst})
    row["target"] = bool(row["good"] >= 0.95 and row["junk"] <= 0.02 and both == 0
                         and all(0.6 <= r <= 1.4 for r in ratio.values()))
    return row


def run_pool(router_paths: list[Path], lab: dict[str, dict], selection: float, importance: float,
             strata: int) -> pd.DataFrame:
    shard = concat_shards(router_paths)
    methods = (["gate"] if shard.quality_logits is not None else []) + ["combined", "ifd", "perplexity"]
    k = max(1, round(selection * len(shard)))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        for method in methods:
            for diversity in (True, False):
                t0 = time.perf_counter()
                sel = selection_section(quality_method=method, selection_percentage=selection, routing_strata=strata,
                                        importance_selection_percentage=importance, disable_diversity=not diversity,
                                        device="cpu", fps_log_interval=10**9)
                build_candidates(router_paths, out / "c.h5", out / "q.tsv", sel)
                run_fps(out / "c.h5", out / "curve.tsv", sel)
                picks = pd.read_csv(out / "curve.tsv", sep="\t", dtype={"sample_id": str})["sample_id"].tolist()
                cands = read_candidates(out / "c.h5")
                rows.append({"method": method, "diversity": diversity, **measure(picks, lab),
                             "dups_dropped": int(cands.attrs["n_duplicates"]), "s": time.perf_counter() - t0})
    ids = shard.sample_id.astype(str)
    fps = fps_streaming(features(shard.moe_probs, "wasserstein"), k, start=0, device="cpu", log_interval=10**9)
    rows.append({"method": "none", "diversity": True, **measure(list(ids[fps.picks]), lab)})
    randoms = [measure(list(np.random.default_rng(seed).choice(ids, k, replace=False)), lab) for seed in range(5)]
    mean = pd.DataFrame(randoms).drop(columns="target").mean().to_dict()
    mean["target"] = all(r["target"] for r in randoms)
    rows.append({"method": "random (mean of 5)", "diversity": False, **mean})
    return pd.DataFrame(rows)


def build_pool(seed: int, n: int, work: Path, epochs: float, max_length: int) -> tuple[list[Path], Path]:
    """Demo pool, pre-trained demo model and one router-data shard, as the workflow builds them."""
    from selectflow.data.demo import build_demo_model, write_demo_pool
    from selectflow.data.records import read_dataset
    from selectflow.router.dump import DumpSettings, RouterDumper
    from selectflow.router.routerfile import write_router_shard

    root = work / f"seed{seed}_n{n}"
    pool, model, h5 = root / "pool.jsonl", root / "model", root / "router.h5"
    if not h5.is_file():
        write_demo_pool(pool, n, seed)
        build_demo_model(model, pool, seed=seed, pretrain_epochs=epochs)
        dumper = RouterDumper.from_path(str(model), DumpSettings(batch_size=64, max_length=max_length, ifd=True,
                                                                 device="cpu"))
        write_router_shard(h5, dumper.dump(read_dataset(pool, "demo"), progress=False))
    return [h5], pool


def schema_default(*keys: str):
    import yaml

    node = yaml.safe_load(open(Path(__file__).resolve().parents[1] / "schemas" / "config.schema.yaml"))
    for key in keys:
        node = node["properties"][key]
    return node["default"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--router", type=Path, help="a router_data folder (searched for *.h5) of a workflow run")
    p.add_argument("--pool", type=Path, help="the demo pool JSONL of that run (for its labels)")
    p.add_argument("--selected", type=Path, help="a workflow's selected_data.jsonl to measure (with --pool)")
    p.add_argument("--build", nargs="*", default=[], metavar="SEED:N", help="build and measure demo pools SEED:N")
    p.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "bench_selection_quality")
    p.add_argument("--selection", type=float, default=0.05)
    p.add_argument("--importance", type=float, default=0.2)
    p.add_argument("--strata", type=int, default=None, help="selection.routing_strata (default: the schema's)")
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    pools = []
    if args.selected:
        picks = [json.loads(line)["sample_id"] for line in open(args.selected, encoding="utf-8")]
        row = pd.DataFrame([{"selection": str(args.selected), **measure(picks, labels(args.pool))}])
        print(row.to_markdown(index=False, floatfmt=".3f"))
    if args.router:
        pools.append((f"{args.pool} (workflow run)", sorted(args.router.rglob("*.h5")), args.pool))
    for spec in args.build:
        seed, n = (int(x) for x in spec.split(":"))
        t0 = time.perf_counter()
        paths, pool = build_pool(seed, n, args.work, schema_default("demo", "pretrain_epochs"),
                                 schema_default("router_dump", "max_length"))
        print(f"built seed {seed}, {n} records in {time.perf_counter() - t0:.0f} s", flush=True)
        pools.append((f"demo seed {seed}, {n} records", paths, pool))
    if not pools and not args.selected:
        p.error("give --router and --pool, --selected and --pool, or --build SEED:N ...")
    pd.set_option("display.width", 250)
    for name, paths, pool in pools:
        strata = args.strata if args.strata is not None else schema_default("selection", "routing_strata")
        table = run_pool(paths, labels(pool), args.selection, args.importance, strata)
        print(f"\n## {name}: select {args.selection:g} (two-stage, importance {args.importance:g}, "
              f"routing_strata {strata})\n")
        print(table.to_markdown(index=False, floatfmt=".3f"))


if __name__ == "__main__":
    main()
