"""How well Select-MoE's quality gate separates clean records from each junk kind, by warm-up.

    # the default grid on a 2,000-record demo pool with the junk suite planted at 0.3 (about
    # 15 warm-ups + dumps; minutes on the 2-core box; the pool and its demo model are cached)
    python bench/bench_gate_auc.py --work /tmp/bga
    # one setting against the demo's: --steps/--share/--weight take lists, --grid full crosses them
    python bench/bench_gate_auc.py --work /tmp/bga --steps 60 600 --share 0.3 --weight 1
    # the objective variants (warmup.gate_objective), each over the same grid
    python bench/bench_gate_auc.py --work /tmp/bga --objective response_tokens prompt_gain --steps 60 600 \
        --share 0.3 --weight 1 10 --no-gain

The pool is a demo pool without the demo's own junk, the junk suite
(:mod:`selectflow.data.junk`) planted at ``--junk-rate`` (every kind in turn), and its demo
model (the workflow's ``demo_model`` recipe, pre-trained on the whole pool). A seeded half of
the pool is held out; each warm-up (stage 0 convert, then stage 1 exactly as rule ``warmup``
runs it: :func:`selectflow.train.trainer.fit` with the gate objective) trains on ``share`` of
the pool drawn from the other half, and the held-out half is then dumped through the
warmed-up model. The gate's score is the library's (``quality_method: gate``).

Table 1, per warm-up (``objective`` = ``warmup.gate_objective``, ``steps``, ``share``,
``weight``; the demo's is select_moe, 60 steps, 0.3, 1.0):
AUC of p(good), clean over each junk kind (1 = every clean record above every record of the
kind, 0.5 = chance, below 0.5 = the gate calls the kind *better* than clean), the mean AUC
over the suite's tuning and held-back halves, and the worst kind. Two scores per warm-up: the
library's (``all tokens (library)``: the gate logits averaged over the whole sequence, as the
router dump writes them) and a diagnostic, the same over the response tokens alone (an
``empty`` record's response is its eos token).

Table 2 tests why easy-to-predict junk reads as good. Stage 1 minimises
``LM loss + weight × mean sigmoid(p_good)``: a token is worth routing through the MoE (good)
where the MoE lowers its LM loss by more than the penalty. Per kind on the held-out half,
through the converted model before the warm-up with every gate forced to good = 1 (the MoE
as in the base model) and to good = 0 (the trash expert only): the response's mean token
NLL, the MoE's gain (``nll_good0 − nll_good1``) per token and per sample (× response tokens:
what the sample adds to the summed LM term), the response's share of the sequence's tokens
(the LM loss covers response tokens only, the gate penalty every token), and, after the
demo's warm-up, the mean p(good) and its Spearman correlation over all held-out records with
the per-token gain, the NLL, the response share and the response length (for the
library's score and the response-only one).

The labels (``planted``) are read here, to measure; the warm-up and the gate never see them.
"""

from __future__ import annotations

import argparse
import itertools
import logging
import multiprocessing
import random
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from selectflow.data.junk import HELD_BACK_KINDS, JUNK_KINDS, TUNING_KINDS  # noqa: E402
from selectflow.data.records import read_dataset  # noqa: E402
from selectflow.train.objective import OBJECTIVES  # noqa: E402

DEMO = {"steps": 60, "share": 0.3, "weight": 1.0}
LR = 0.003  # the demo config's warmup.train.learning_rate
MAX_LENGTH = 256


def auc(pos: np.ndarray, neg: np.ndarray) -> float:
    """P(a random ``pos`` score > a random ``neg`` score), ties counted half (Mann–Whitney U / n·m)."""
    if len(pos) == 0 or len(neg) == 0:
        return float("nan")
    ranks = pd.Series(np.concatenate([pos, neg])).rank(method="average").to_numpy()
    return float((ranks[: len(pos)].sum() - len(pos) * (len(pos) + 1) / 2) / (len(pos) * len(neg)))


def kind_aucs(score: np.ndarray, planted: np.ndarray) -> dict[str, float]:
    """AUC of ``score``, clean over each junk kind; the halves' means and the worst kind."""
    clean = score[planted == "clean"]
    row = {k: auc(clean, score[planted == f"junk_{k}"]) for k in TUNING_KINDS + HELD_BACK_KINDS}
    row["tuning"] = float(np.nanmean([row[k] for k in TUNING_KINDS]))
    row["held-back"] = float(np.nanmean([row[k] for k in HELD_BACK_KINDS]))
    row["worst"] = float(np.nanmin([row[k] for k in JUNK_KINDS]))
    return row


def build_pool(work: Path, seed: int, n: int, junk_rate: float) -> tuple[Path, Path]:
    """(pool JSONL, demo model folder): a junk-suite demo pool and its pre-trained demo model, cached."""
    from selectflow.data.demo import build_proxy_model, make_demo_pool
    from selectflow.data.junk import plant_junk
    from selectflow.data.records import write_jsonl

    root = work / f"junksuite_seed{seed}_n{n}_rate{junk_rate:g}"
    pool, model = root / "pool.jsonl", root / "model"
    if not model.is_dir():
        root.mkdir(parents=True, exist_ok=True)
        write_jsonl(pool, plant_junk(make_demo_pool(n, seed, junk_rate=0.0), junk_rate, seed))
        build_proxy_model(model, [pool], seed=seed)
    return pool, model


def split(records: list[dict], heldout: float, seed: int) -> tuple[list[dict], list[dict]]:
    """(warm-up side, held-out side) of the pool, a seeded ``heldout`` share held out."""
    idx = list(range(len(records)))
    random.Random(seed).shuffle(idx)
    cut = round(heldout * len(records))
    held = set(idx[:cut])
    return [r for i, r in enumerate(records) if i not in held], [r for i, r in enumerate(records) if i in held]


def dumper(model: Path):
    from selectflow.router.dump import DumpSettings, RouterDumper

    return RouterDumper.from_path(
        str(model), DumpSettings(batch_size=64, max_length=MAX_LENGTH, ifd=False, device="cpu")
    )


def warm_up(
    converted: Path,
    train_side: list[dict],
    n_pool: int,
    out: Path,
    steps: int,
    share: float,
    weight: float,
    seed: int,
    objective: str,
) -> Path:
    """Stage 1 on ``share`` × ``n_pool`` records of ``train_side``; the checkpoint folder."""
    from selectflow.train.objective import GateObjective
    from selectflow.train.trainer import fit

    k = min(len(train_side), max(1, round(share * n_pool)))
    chosen = sorted(random.Random(seed).sample(range(len(train_side)), k))
    pairs = [(train_side[i]["sample_id"], train_side[i]["prompt"], train_side[i]["response"]) for i in chosen]
    cfg = {
        "preset": "combined",
        "max_length": MAX_LENGTH,
        "max_steps": steps,
        "learning_rate": LR,
        "save_every": 0,
        "seed": seed,
    }
    fit(converted, pairs, out, cfg, objective=GateObjective(weight, objective=objective))
    return out / "checkpoint"


def gate_scores(model: Path, held: list[dict]) -> dict[str, np.ndarray]:
    """The library's gate score (token mean of the logits over the whole sequence, as the dump
    writes it) and the same over the response tokens alone (what a response-only dump would give)."""
    import torch

    from selectflow.data.tokens import pad_token_id
    from selectflow.select.pool import pool_of
    from selectflow.select.quality import quality_scores
    from selectflow.train.data import IGNORE_INDEX, encode_pair, pad_collate
    from selectflow.train.objective import record_gate_logits

    d = dumper(model)
    library = quality_scores(pool_of([(None, d.dump(held, progress=False))], system_turns=False), "gate")[0]
    response = []
    for start in range(0, len(held), 64):
        items = [encode_pair(d.tokenizer, r["prompt"], r["response"], MAX_LENGTH) for r in held[start : start + 64]]
        batch = pad_collate(items, pad_token_id(d.tokenizer))
        with torch.no_grad(), record_gate_logits(d.model) as logits:
            d.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        keep = (batch["labels"] != IGNORE_INDEX).unsqueeze(-1).float()
        means = [(x.reshape(*keep.shape[:2], 2).float() * keep).sum(1) / keep.sum(1).clamp_min(1) for x in logits]
        response.append(torch.stack([torch.softmax(m, -1)[:, 0] for m in means], 1).mean(1).numpy())
    return {"all tokens (library)": library, "response tokens": np.concatenate(response)}


def moe_gain(converted: Path, held: list[dict]) -> pd.DataFrame:
    """Per held-out record: response NLL with every gate forced to good = 1 and to 0, and the token count."""
    from selectflow.train.objective import forced_gates

    d = dumper(converted)
    out = {}
    for good in (1.0, 0.0):
        with forced_gates(d.model, good):
            shard = d.dump(held, progress=False)
        out[f"nll_good{good:g}"] = np.asarray(shard.nll_response, dtype=np.float64)
    out["n_tokens"] = np.asarray(shard.n_response_tokens)
    out["response_share"] = out["n_tokens"] / np.asarray(shard.n_tokens)
    frame = pd.DataFrame(out)
    frame["gain_token"] = frame["nll_good0"] - frame["nll_good1"]
    frame["gain_sample"] = frame["gain_token"] * frame["n_tokens"]
    return frame


def one_setting(job: tuple) -> tuple[np.ndarray, float]:
    """One warm-up and the gate scores of the held-out records (a worker process, one thread)."""
    import torch

    pool, heldout, pool_seed, converted, work, steps, share, weight, objective, seed = job
    torch.set_num_threads(1)
    records = read_dataset(pool, "pool")
    train_side, held = split(records, heldout, pool_seed)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(dir=work) as tmp:
        ckpt = warm_up(converted, train_side, len(records), Path(tmp) / "warmup", steps, share, weight, seed, objective)
        scores = gate_scores(ckpt, held)
    return scores, time.perf_counter() - t0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--pool", default="3:2000", metavar="SEED:N", help="demo pool seed and size (default 3:2000)")
    p.add_argument("--junk-rate", type=float, default=0.3, help="junk-suite share of the pool (default 0.3)")
    p.add_argument("--heldout", type=float, default=0.5, help="share of the pool held out for the AUC (default 0.5)")
    p.add_argument("--steps", type=int, nargs="+", default=[20, 60, 200, 600])
    p.add_argument(
        "--share",
        type=float,
        nargs="+",
        default=[0.1, 0.3, 0.5],
        help="warm-up data as a share of the pool (at most 1 − --heldout)",
    )
    p.add_argument(
        "--weight", type=float, nargs="+", default=[0.0, 0.3, 1.0, 3.0, 10.0], help="warmup.quality_loss_weight values"
    )
    p.add_argument(
        "--objective",
        nargs="+",
        default=["select_moe"],
        choices=OBJECTIVES,
        help="warmup.gate_objective values, each run over the whole grid (default: select_moe)",
    )
    p.add_argument(
        "--grid",
        choices=["axes", "full"],
        default="axes",
        help="axes: vary one of steps/share/weight at a time around the demo's (60, 0.3, 1.0); full: every combination",
    )
    p.add_argument("--seed", type=int, default=0, help="train seed (gate init, warm-up subset, order)")
    p.add_argument("--jobs", type=int, default=1, help="warm-ups run at once, one thread each (default 1)")
    p.add_argument("--no-gain", action="store_true", help="skip table 2 (the MoE gain per kind)")
    p.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "bench_gate_auc")
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    from selectflow.router.gate import convert_model
    from selectflow.schema import schema_default

    seed, n = (int(x) for x in args.pool.split(":"))
    if max(args.share) > 1 - args.heldout + 1e-9:
        p.error(f"--share {max(args.share)} is more than the {1 - args.heldout:g} of the pool not held out")
    t0 = time.perf_counter()
    pool, model = build_pool(args.work, seed, n, args.junk_rate)
    records = read_dataset(pool, "pool")
    train_side, held = split(records, args.heldout, seed)
    planted = np.array([r["record"]["planted"] for r in held])
    converted = args.work / f"{pool.parent.name}_converted_seed{args.seed}"
    if not converted.is_dir():
        convert_model(
            model,
            converted,
            trash=schema_default("warmup", "trash_expert"),
            init_std=schema_default("warmup", "gate_init_std"),
            seed=args.seed,
        )
    counts = pd.Series(planted).value_counts()
    print(
        f"pool {pool} ({n} records, junk suite at {args.junk_rate:g}), demo model and convert: "
        f"{time.perf_counter() - t0:.0f} s; held out {len(held)} records: {counts.get('clean', 0)} clean, "
        f"{min(counts.get(f'junk_{k}', 0) for k in JUNK_KINDS)}–{max(counts.get(f'junk_{k}', 0) for k in JUNK_KINDS)}"
        " per junk kind",
        flush=True,
    )
    if args.grid == "full":
        settings = list(itertools.product(args.steps, args.share, args.weight))
    else:
        settings = [(DEMO["steps"], DEMO["share"], DEMO["weight"])]
        settings += [(s, DEMO["share"], DEMO["weight"]) for s in args.steps]
        settings += [(DEMO["steps"], s, DEMO["weight"]) for s in args.share]
        settings += [(DEMO["steps"], DEMO["share"], w) for w in args.weight]
        settings = list(dict.fromkeys(settings))
    settings = [(*s, objective) for objective in args.objective for s in settings]
    jobs = [(pool, args.heldout, seed, converted, args.work, *s, args.seed) for s in settings]
    rows, demo_score = [], None
    with ProcessPoolExecutor(args.jobs, mp_context=multiprocessing.get_context("spawn")) as pool_ex:
        for (steps, share, weight, objective), (scores, seconds) in zip(settings, pool_ex.map(one_setting, jobs)):
            if (steps, share, weight, objective) == (*DEMO.values(), "select_moe"):
                demo_score = scores
            rows += [
                {
                    "objective": objective,
                    "steps": steps,
                    "share": share,
                    "weight": weight,
                    "score": name,
                    **kind_aucs(score, planted),
                    "s": seconds,
                }
                for name, score in scores.items()
            ]
            print(pd.DataFrame(rows[-2:]).to_markdown(index=False, floatfmt=".2f"), flush=True)
    pd.set_option("display.width", 250)
    print(
        f"\n## AUC of p(good), clean over each junk kind, {len(held)} held-out records "
        f"(tuning: {', '.join(TUNING_KINDS)}; held back: {', '.join(HELD_BACK_KINDS)})\n"
    )
    print(pd.DataFrame(rows).to_markdown(index=False, floatfmt=".2f"))
    if args.no_gain:
        return
    gain = moe_gain(converted, held)
    gain["planted"] = planted
    if demo_score is not None:
        gain["p_good"], gain["p_good_response"] = demo_score["all tokens (library)"], demo_score["response tokens"]
    table = gain.groupby("planted").mean(numeric_only=True)
    table.insert(0, "n", gain.groupby("planted").size())
    print("\n## The MoE's gain per kind (held out; converted model before the warm-up, gates forced to 1 / 0)\n")
    print(table.to_markdown(floatfmt=".3f"))
    if demo_score is not None:
        ok = np.isfinite(gain["gain_token"]) & np.isfinite(gain["p_good"])
        against = {
            "the MoE's per-token gain": "gain_token",
            "the response NLL (good = 1)": "nll_good1",
            "the response's share of the sequence's tokens": "response_share",
            "the response's length in tokens": "n_tokens",
        }
        clean = ok & (gain["planted"] == "clean")
        for score, name in (("p_good", "p(good) (sequence)"), ("p_good_response", "p(good) over the response")):
            rhos = {
                label: gain.loc[rows, [col, score]].rank().corr().iloc[0, 1]
                for label, col in against.items()
                for rows in (ok,)
            }
            rho_clean = gain.loc[clean, ["n_tokens", score]].rank().corr().iloc[0, 1]
            print(
                f"\nSpearman over {int(ok.sum())} held-out records, {name} after the demo's warm-up with: "
                + ", ".join(f"{label} {rho:+.2f}" for label, rho in rhos.items())
                + f"; with the response length among the {int(clean.sum())} clean records {rho_clean:+.2f}"
            )


if __name__ == "__main__":
    main()
