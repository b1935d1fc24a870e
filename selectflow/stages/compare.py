"""The comparison stage (rules/compare.smk): does the selection pay off against the baselines?

Design (README, "Does the selection pay off? (compare)"):

1. :func:`draw_heldout` (rule ``compare_heldout``): a seeded ``compare.heldout_fraction`` of
   the pool's kept samples (past the quality filter and dedup of the main selection's
   ``candidates_quality.tsv``) is held out *before* any selection, as ``heldout.jsonl``.
   With ``compare.eval`` set, nothing is held out (the user's set is the evaluation).
2. :func:`build_candidates` of the selection stage re-runs on the pool less the held-out
   slice (rule ``compare_candidates``): the comparison's own ``candidates.h5`` and
   ``candidates_quality.tsv``; k = round(selection_percentage · that pool). The main
   selection outside ``compare`` is unchanged.
3. :func:`build_pool` (rule ``compare_pool``): ``pool.h5``: the kept samples of that pool
   (``sample_id``, ``quality``, routing ``features``, k-means ``cluster``), attributes ``k``,
   ``metric`` and ``near_duplicate_threshold`` (:func:`selectflow.select.baselines.pair_threshold`).
4. Picks (``picks.tsv``, the FPS curve's columns): ``fps`` by :func:`selectflow.stages.select.run_fps`
   on the comparison's candidates; each baseline by :func:`pick_baseline` on ``pool.h5``.
   :func:`selectflow.stages.select.write_selection` turns picks into ``selected_data.jsonl``.
5. :func:`intrinsic` -> ``intrinsic.tsv``; :func:`finetune_and_eval` (one per method and
   seed) -> ``eval.tsv``; :func:`downstream` -> ``downstream.tsv``.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
from dataclasses import replace
from pathlib import Path

import h5py
import numpy as np
import pandas as pd

from selectflow.config import CompareConfig, TrainConfig
from selectflow.data.records import iter_jsonl, record_prompt_response, write_jsonl
from selectflow.router.routerfile import read_router_shard
from selectflow.runtime.errors import SelectFlowError
from selectflow.runtime.fsutil import atomic_path
from selectflow.runtime.tables import read_tsv, write_tsv
from selectflow.select import baselines, distance
from selectflow.select.dedup import normalised_text

log = logging.getLogger(__name__)

LABEL_FIELDS = ("planted", "topic")  # the demo's label fields: they measure, never select


def _kept_ids(quality_tsv) -> list[str]:
    table = read_tsv(quality_tsv, "quality table", nan_columns=("quality",))
    return sorted(table.loc[table["kept"].astype(str).str.lower() == "true", "sample_id"].astype(str))


def draw_heldout(quality_tsv, router_paths: list, out_jsonl, cmp: CompareConfig) -> int:
    """Write the held-out evaluation slice (normalised records with ``sample_id``); return its size."""
    ids: list[str] = []
    if cmp.eval is None:
        kept = _kept_ids(quality_tsv)
        n = max(1, round(cmp.heldout_fraction * len(kept)))
        if n >= len(kept):
            raise SelectFlowError(f"compare.heldout_fraction {cmp.heldout_fraction} leaves no kept sample to select")
        ids = sorted(np.random.default_rng(cmp.seed).choice(np.array(kept, dtype=object), n, replace=False))
    wanted, rows = set(ids), {}
    for path in router_paths:
        shard = read_router_shard(path)
        for sid, text in zip(shard.sample_id, shard.record if shard.record is not None else []):
            if sid in wanted:
                rows[sid] = {**json.loads(text)["record"], "sample_id": sid}
    missing = wanted - set(rows)
    if missing:
        raise SelectFlowError(f"held-out sample {sorted(missing)[0]!r} of {quality_tsv} is in no router shard; "
                              "the quality table is stale: delete it and rerun snakemake")
    log.info("held out %d of the pool for evaluation", len(ids))
    return write_jsonl(out_jsonl, (rows[sid] for sid in ids))


def heldout_ids(heldout_jsonl) -> set[str]:
    return {str(rec["sample_id"]) for _, rec in iter_jsonl(heldout_jsonl)}


def build_pool(router_paths: list, candidates_h5, quality_tsv, out_h5, cmp: CompareConfig) -> None:
    """``pool.h5``: the kept samples the baselines choose from, their clusters and thresholds."""
    from selectflow.select.candidates import read_candidates

    cands = read_candidates(candidates_h5)
    metric, k = cands.attrs["metric"], int(cands.attrs["k"])
    table = read_tsv(quality_tsv, "quality table", nan_columns=("quality",)).set_index("sample_id")
    kept = set(_kept_ids(quality_tsv))
    ids, feats = [], []
    for path in router_paths:
        shard = read_router_shard(path)
        mask = np.array([sid in kept for sid in shard.sample_id], dtype=bool)
        if mask.any():
            ids.append(shard.sample_id[mask].astype(str))
            feats.append(distance.features(shard.moe_probs[mask], metric))
    ids_arr = np.concatenate(ids)
    order = np.argsort(ids_arr, kind="stable")  # pool rows by sample_id: shard order does not matter
    ids_arr, x = ids_arr[order], np.concatenate(feats)[order]
    quality = table.loc[ids_arr, "quality"].to_numpy(dtype=np.float64)
    labels = baselines.kmeans_labels(x, cmp.clusters, cmp.seed)
    eps = baselines.pair_threshold(x, cmp.near_duplicate_quantile, cmp.seed, metric)
    with atomic_path(out_h5, suffix=".h5") as tmp, h5py.File(tmp, "w") as f:
        f.create_dataset("sample_id", data=ids_arr.astype(object), dtype=h5py.string_dtype())
        f.create_dataset("quality", data=quality)
        f.create_dataset("features", data=x)
        f.create_dataset("cluster", data=labels)
        f.attrs.update({"k": k, "metric": metric, "near_duplicate_threshold": eps, "clusters": cmp.clusters})
    log.info("compare pool: %d kept samples, k %d, %d clusters, near-duplicate threshold %.4g",
             len(ids_arr), k, len(np.unique(labels)), eps)


def read_pool(pool_h5) -> dict:
    with h5py.File(pool_h5, "r") as f:
        out = {name: f[name][()] for name in ("quality", "features", "cluster")}
        out["sample_id"] = np.array([v.decode() if isinstance(v, bytes) else v for v in f["sample_id"][()]],
                                    dtype=object)
        out.update({k: (v.item() if hasattr(v, "item") else v) for k, v in f.attrs.items()})
    return out


def pick_baseline(method: str, pool_h5, picks_tsv, cmp: CompareConfig, device: str = "cpu") -> int:
    """Run baseline ``method`` on ``pool.h5``; write its picks (the FPS curve's columns); return k.

    ``device`` (``auto``, ``cpu``, ``cuda``: ``selection.device``) is where its distances run.
    """
    from selectflow.runtime.device import resolve_device

    pool = read_pool(pool_h5)
    picks = baselines.select(method, pool["features"], pool["quality"], pool["sample_id"], int(pool["k"]),
                             seed=cmp.seed, labels=pool["cluster"], eps=float(pool["near_duplicate_threshold"]),
                             metric=pool["metric"], device=resolve_device(device))
    table = {"step": np.arange(len(picks)), "sample_id": pool["sample_id"][picks], "candidate_index": picks,
             "min_distance": np.full(len(picks), np.nan)}
    write_tsv(pd.DataFrame(table), picks_tsv, na_rep="nan")
    log.info("%s picked %d", method, len(picks))
    return len(picks)


def _selection(path) -> list[dict]:
    return [rec for _, rec in iter_jsonl(path)]


def intrinsic(selections: dict[str, str | os.PathLike], pool_h5, out_tsv) -> pd.DataFrame:
    """One row per method: size, quality, near-duplicates, cluster coverage, response length, label shares."""
    pool = read_pool(pool_h5)
    row_of = {sid: i for i, sid in enumerate(pool["sample_id"])}
    n_clusters = int(pool["cluster"].max()) + 1
    rows = []
    for method, path in selections.items():
        recs = _selection(path)
        idx = np.array([row_of[str(r["sample_id"])] for r in recs], dtype=np.int64)
        texts = [_text_key(r) for r in recs]
        hist = np.bincount(pool["cluster"][idx], minlength=n_clusters)
        share = hist[hist > 0] / hist.sum()
        row = {
            "method": method,
            "size": len(recs),
            "mean_quality": float(np.mean(pool["quality"][idx])),
            "near_duplicate_pairs": baselines.near_duplicate_pairs(pool["features"][idx],
                                                                   float(pool["near_duplicate_threshold"]),
                                                                   pool["metric"]),
            "text_duplicate_pairs": sum(c * (c - 1) // 2 for c in pd.Series(texts).value_counts()),
            "clusters_touched": float((hist > 0).sum() / n_clusters),
            "cluster_entropy": float(-(share * np.log(share)).sum()),
            "mean_response_chars": float(np.mean([len(record_prompt_response(r)[1]) for r in recs])),
        }
        for field in LABEL_FIELDS:
            values = pd.Series([r.get(field) for r in recs if field in r], dtype=object)
            for value, count in sorted(values.value_counts().items()):
                row[f"{field}={value}"] = count / len(recs)
        rows.append(row)
    table = pd.DataFrame(rows).fillna(0.0)
    write_tsv(table, out_tsv, float_format="%.6g")
    return table


def _text_key(record: dict) -> str:
    prompt, response = record_prompt_response(record)
    return normalised_text(json.dumps({"prompt": prompt, "response": response}))


def eval_loss(model_dir, eval_jsonl, max_length: int, batch_size: int = 16) -> tuple[float, int]:
    """Mean response-token loss of the model in ``model_dir`` on ``eval_jsonl``; and the token count."""
    import torch
    from transformers import AutoModelForCausalLM

    from selectflow.train.data import encode_pair, load_training_pairs, pad_collate
    from selectflow.train.step import response_loss_sum
    from selectflow.train.trainer import _tokenizer

    pairs = load_training_pairs(eval_jsonl)
    tokenizer, pad_id = _tokenizer(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, local_files_only=True).eval()
    total, tokens = 0.0, 0
    with torch.no_grad():
        for s in range(0, len(pairs), batch_size):
            batch = pad_collate([encode_pair(tokenizer, p, r, max_length) for _, p, r in pairs[s : s + batch_size]],
                                pad_id)
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
            total += float(response_loss_sum(logits, batch["labels"]))
            tokens += int((batch["labels"][:, 1:] != -100).sum())
    return total / max(1, tokens), tokens


def finetune_and_eval(model, data, eval_jsonl, out_dir, out_tsv, settings: TrainConfig, *, seeds: int,
                      micro_batch_size: int, attempt: int) -> list[float]:
    """Fine-tune ``model`` on ``data`` once per seed, evaluate each; write ``out_tsv``; return the losses.

    Seed i trains with ``settings`` and ``seed = settings.seed + i`` in ``out_dir/seed_i``
    (the trainer's tables stay there; the checkpoint is removed once evaluated). The seeds
    run in one process: a fine-tune of the demo takes about a second, its start-up ten.
    """
    from selectflow.train import train as train_model

    rows = []
    for i in range(seeds):
        seed, run_dir = settings.seed + i, Path(out_dir) / f"seed_{i}"
        train_model(model, data, run_dir, replace(settings, seed=seed), micro_batch_size=micro_batch_size,
                    attempt=attempt)
        loss, tokens = eval_loss(run_dir / "checkpoint", eval_jsonl, settings.max_length)
        shutil.rmtree(run_dir / "checkpoint", ignore_errors=True)
        log.info("seed %d: eval loss %.4f over %d response tokens", seed, loss, tokens)
        rows.append({"seed": seed, "eval_loss": loss, "eval_tokens": tokens})
    write_tsv(pd.DataFrame(rows), out_tsv, float_format="%.6g")
    return [r["eval_loss"] for r in rows]


def downstream(evals: dict[str, str | os.PathLike], out_tsv) -> pd.DataFrame:
    """``method, mean_eval_loss, std_eval_loss, n_seeds, losses`` from each method's ``eval.tsv``."""
    rows = []
    for method, path in evals.items():
        losses = read_tsv(path, "eval loss table")["eval_loss"].to_numpy(dtype=np.float64)
        rows.append({"method": method, "mean_eval_loss": losses.mean(),
                     "std_eval_loss": losses.std(ddof=1) if len(losses) > 1 else math.nan,
                     "n_seeds": len(losses), "losses": ",".join(f"{v:.4f}" for v in losses)})
    table = pd.DataFrame(rows)
    write_tsv(table, out_tsv, float_format="%.6g", na_rep="nan")
    return table
