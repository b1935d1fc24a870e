"""The selection pipeline as file-to-file steps (one per Snakemake rule) and the resume CLI.

1. :func:`build_candidates`: router shards -> ``candidates.h5`` + ``candidates_quality.tsv``
   (every sample's score and ``reason``; the candidates' reason is ``candidate``).
   Quality scores, drops ``keep=False`` samples, orders the rest by quality (descending,
   ties by ``sample_id``) and keeps the candidates FPS will choose from.
2. :func:`compute_block` (``n_blocks`` of them per side, upper triangle): distance blocks,
   only for ``mode: matrix``.
3. :func:`run_fps`: ``candidates.h5`` (+ blocks) -> ``fps_curve.tsv`` (the picks in order).
4. :func:`write_selection`: curve + shards -> ``selected_data.jsonl`` + ``selection_summary.tsv``
   + ``quality.tsv`` (``candidates_quality.tsv`` with the final ``reason``: ``selected``,
   ``not_picked`` or why the sample was dropped before FPS).

:func:`continue_selection` runs all of it in-process on a folder of shards (the original's
``continue_selection.py``).

``candidates.h5``: ``sample_id`` [m] str, ``quality`` [m] float64, ``features`` [m, D]
float32 (grid features, :func:`selectflow.select.distance.features`), in candidate order; attributes
``layout_version``, ``complete``, ``metric``, ``n_pool``, ``n_kept``, ``k``, ``stage``
(``fps``: FPS over every kept sample; ``two_stage``: FPS over the quality top
``importance_selection_percentage``; ``quality``: top-k by quality, no FPS) and
``quality_method``.

``fps_curve.tsv``: ``step``, ``sample_id``, ``candidate_index``, ``min_distance`` (``inf``
for the first pick, ``nan`` without diversity).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
import pandas as pd

from selectflow.data.records import write_jsonl
from selectflow.router.routerfile import concat_shards, read_router_shard
from selectflow.runtime.errors import CorruptFileError, SelectFlowError
from selectflow.runtime.fsutil import atomic_open, atomic_path, open_checked_h5
from selectflow.select import distance
from selectflow.select.fps import fps_matrix, fps_streaming
from selectflow.select.quality import METHODS, assess, resolve_method
from selectflow.select.strata import allocate, kmeans

log = logging.getLogger(__name__)

CANDIDATES_LAYOUT_VERSION = 1
CANDIDATES_REBUILD_HINT = "rule candidates rebuilds it: delete the file and rerun snakemake"
STAGES = ("fps", "two_stage", "quality")
# raw inputs of the score that quality.tsv may carry (selectflow.select.quality.assess)
NUMERIC_INPUTS = ("nll_response", "nll_response_alone", "nll_eos", "n_response_tokens", "gate_mean", "distinct_3grams")
MODES = ("streaming", "matrix")


def check_fraction(name: str, value: float | None, *, optional: bool = False) -> float | None:
    """Return ``value`` if it lies in (0, 1]; else raise naming the key ``name``."""
    if value is None and optional:
        return None
    if value is None or not isinstance(value, (int, float)) or not (0.0 < float(value) <= 1.0):
        raise SelectFlowError(f"{name} must be a fraction in (0, 1] (0.05 means 5%), got {value!r}")
    return float(value)


@dataclass
class Candidates:
    path: Path
    sample_id: np.ndarray  # [m] object (str), candidate order
    quality: np.ndarray  # [m] float64
    attrs: dict

    def __len__(self) -> int:
        return len(self.sample_id)


def read_candidates(path: str | os.PathLike) -> Candidates:
    """Read ids, quality and attributes of ``candidates.h5`` (not the features)."""
    path = Path(path)
    with _open_candidates(path) as f:
        ids = np.array([v.decode() if isinstance(v, bytes) else v for v in f["sample_id"][()]], dtype=object)
        quality = f["quality"][()]
        attrs = {k: (v.item() if hasattr(v, "item") else v) for k, v in f.attrs.items()}
    return Candidates(path=path, sample_id=ids, quality=quality, attrs=attrs)


def _open_candidates(path: Path) -> h5py.File:
    return open_checked_h5(path, "candidates file", CANDIDATES_LAYOUT_VERSION, CANDIDATES_REBUILD_HINT)


def build_candidates(
    router_paths: list[str | os.PathLike],
    out_h5: str | os.PathLike,
    quality_tsv: str | os.PathLike,
    *,
    method: str = "auto",
    field: str | None = None,
    selection_percentage: float,
    importance_selection_percentage: float | None = None,
    disable_diversity: bool = False,
    metric: str = "wasserstein",
    exclude_ids: set[str] | None = None,
    routing_strata: int = 1,
) -> int:
    """Score the pool, pick the candidates, write ``out_h5`` and ``quality_tsv``; return k.

    The pool is every sample of ``router_paths`` not in ``exclude_ids``; k =
    round(selection_percentage · pool), at least 1, at most the kept samples. Duplicates
    are dropped first (:func:`drop_duplicates`). With ``routing_strata`` > 1 (and diversity
    on) the kept samples are split into that many routing strata (:mod:`selectflow.select.strata`):
    each stratum gets candidates (its quality top) and FPS picks in proportion to the pool
    samples it stands for.
    """
    selection = check_fraction("selection_percentage", selection_percentage)
    importance = check_fraction("importance_selection_percentage", importance_selection_percentage, optional=True)
    distance.check_metric(metric)
    shard = concat_shards(list(router_paths))
    pool = np.ones(len(shard), dtype=bool)
    if exclude_ids:
        pool = ~np.isin(shard.sample_id.astype(str), np.array(sorted(exclude_ids), dtype=str))
    quality = assess(shard, method, field)
    score, keep, reason = quality.score, quality.keep & pool, quality.reason.copy()
    reason[~pool] = "excluded"
    n_dup = drop_duplicates(shard, score, keep, reason)
    n_pool, n_kept = int(pool.sum()), int(keep.sum())
    if n_kept == 0:
        raise SelectFlowError(
            f"no sample of the {n_pool} in the pool passed the quality filter (method {method!r}); "
            "check the router data or choose another quality method"
        )
    k = max(1, round(selection * n_pool))
    if k > n_kept:
        log.warning("k=%d exceeds the %d samples that passed the quality filter; selecting all of them", k, n_kept)
        k = n_kept
    kept = np.flatnonzero(keep)
    # quality descending, ties by sample_id: the order is a function of the data, not of shard order
    order = kept[np.lexsort((shard.sample_id[kept].astype(str), -score[kept]))]
    if disable_diversity:
        stage, m = "quality", k
    elif importance is not None and importance > selection:
        stage, m = "two_stage", min(n_kept, max(k, round(importance * n_pool)))
    else:
        if importance is not None:
            log.info("importance_selection_percentage %g <= selection_percentage %g: one FPS stage", importance, selection)
        stage, m = "fps", n_kept
    stratum = quota = None
    if stage == "quality" or routing_strata <= 1:
        chosen = order[:m]
    else:
        chosen, stratum, quota = _stratified(shard, order, reason, k, m, metric, routing_strata)
    reason[order] = "below_importance_cut"
    reason[chosen] = "candidate"
    feats = distance.features(shard.moe_probs[chosen], metric)
    with atomic_path(out_h5, suffix=".h5") as tmp:
        with h5py.File(tmp, "w") as f:
            f.create_dataset("sample_id", data=shard.sample_id[chosen].astype(object), dtype=h5py.string_dtype())
            f.create_dataset("quality", data=score[chosen].astype(np.float64))
            f.create_dataset("features", data=feats)
            if stratum is not None:
                f.create_dataset("stratum", data=stratum)
                f.create_dataset("quota", data=quota)
            f.attrs.update(
                {"metric": metric, "n_pool": n_pool, "n_kept": n_kept, "k": k, "stage": stage,
                 "quality_method": resolve_method(shard, method), "n_duplicates": n_dup}
            )
            f.attrs["layout_version"] = CANDIDATES_LAYOUT_VERSION
            f.attrs["complete"] = True
    candidate = np.zeros(len(shard), dtype=bool)
    candidate[chosen] = True
    datasets = _datasets(shard)
    dropped = np.flatnonzero(pool & ~keep)
    rank = np.concatenate([order, dropped[np.argsort(shard.sample_id[dropped].astype(str), kind="stable")]])
    table = pd.DataFrame(
        {
            "sample_id": shard.sample_id[rank],
            "dataset": datasets[rank],
            "quality": score[rank],
            "kept": keep[rank],
            "candidate": candidate[rank],
            "reason": reason[rank],
            **{name: values[rank] for name, values in quality.inputs.items()},
        }
    )
    _write_tsv(table, quality_tsv)
    log.info("pool %d, kept %d (%d duplicates dropped), candidates %d (%s), k %d", n_pool, n_kept, n_dup, m, stage, k)
    return k


def _stratified(shard, order: np.ndarray, reason: np.ndarray, k: int, m: int, metric: str, n_strata: int):
    """Candidates (quality order kept), stratum per candidate and FPS quota per stratum."""
    labels = kmeans(distance.features(shard.moe_probs[order], metric), n_strata, seed=0)
    size = np.bincount(labels)
    # each stratum stands for its kept samples and the duplicates dropped in their favour:
    # its share of the pool that passed the quality filter. Quality does not weigh in here
    # (it already chose what is kept, and picks the candidates inside each stratum): a score
    # that runs lower in one kind of task than in another would otherwise move that task's
    # picks to the others (measured in bench/bench_selection_quality.py, README "Routing strata")
    at = {sid: i for i, sid in enumerate(shard.sample_id[order])}
    weight = np.ones(len(order))
    for r in reason:
        if isinstance(r, str) and r.startswith("duplicate_of:") and r[13:] in at:
            weight[at[r[13:]]] += 1
    mass = np.bincount(labels, weights=weight, minlength=len(size))
    quota = allocate(k, mass, size)
    per = np.maximum(allocate(m, mass, size), quota)
    rank_in = np.zeros(len(order), dtype=np.int64)  # rank of each kept sample inside its stratum
    for c in range(len(size)):
        idx = np.flatnonzero(labels == c)
        rank_in[idx] = np.arange(len(idx))
    take = rank_in < per[labels]
    log.info("%d routing strata: sizes %s, pool shares %s, picks %s", len(size), size.tolist(),
             np.round(mass / mass.sum(), 3).tolist(), quota.tolist())
    return order[take], labels[take].astype(np.int64), quota


def normalised_text(record_json: str) -> str | None:
    """Prompt and response of a normalised record, lower-cased, punctuation and runs of space removed.

    ``None`` for a record with neither (nothing to compare).
    """
    rec = json.loads(record_json)
    if "prompt" not in rec and "response" not in rec:
        return None
    return "\x00".join(" ".join(re.sub(r"[^\w\s]", " ", rec.get(key, "").lower()).split()) for key in ("prompt", "response"))


def drop_duplicates(shard, score: np.ndarray, keep: np.ndarray, reason: np.ndarray) -> int:
    """Drop kept samples that repeat another one; keep the best-quality copy; return how many were dropped.

    Two samples are duplicates when their normalised texts (:func:`normalised_text`) are equal
    or their routing (``moe_probs``, to 6 decimals) is identical. The copy with the highest
    score stays (ties: the smallest ``sample_id``); the others get ``keep=False`` and reason
    ``duplicate_of:<id of the copy kept>``. ``keep`` and ``reason`` are changed in place.
    """
    kept = np.flatnonzero(keep)
    kept = kept[np.lexsort((shard.sample_id[kept].astype(str), -score[kept]))]  # best copy first
    keys = []
    if shard.record is not None:
        keys.append([normalised_text(shard.record[i]) for i in kept])
    routing = np.round(np.asarray(shard.moe_probs[kept], dtype=np.float64), 6)
    keys.append([row.tobytes() for row in routing])
    n = 0
    for key in keys:
        first: dict = {}
        for i, k in zip(kept, key):
            if not keep[i] or k is None:
                continue
            if k in first:
                keep[i] = False
                reason[i] = f"duplicate_of:{shard.sample_id[first[k]]}"
                n += 1
            else:
                first[k] = i
    return n


def _datasets(shard) -> np.ndarray:
    if shard.record is None:
        return np.full(len(shard), "", dtype=object)
    return np.array([json.loads(r).get("dataset", "") for r in shard.record], dtype=object)


def _write_tsv(table: pd.DataFrame, path: str | os.PathLike) -> None:
    with atomic_open(path, "w", encoding="utf-8", newline="") as fh:
        table.to_csv(fh, sep="\t", index=False, na_rep="nan")


def _read_tsv(path: str | os.PathLike, what: str) -> pd.DataFrame:
    if not Path(path).is_file():
        raise SelectFlowError(f"{what} {path} is missing; rerun snakemake to rebuild it")
    # ids and dataset names stay strings ("NA", "007" included); only numeric columns parse nan
    return pd.read_csv(
        path, sep="\t", dtype={"sample_id": str, "dataset": str}, keep_default_na=False,
        na_values={name: ["nan"] for name in ("quality", "min_distance", *NUMERIC_INPUTS)},
    )


def n_blocks(candidates_h5: str | os.PathLike, block_size: int) -> int:
    """Blocks per side of the candidate distance matrix (blocks (i, j) with i <= j exist)."""
    return distance.block_count(len(read_candidates(candidates_h5)), block_size)


def compute_block(
    candidates_h5: str | os.PathLike,
    i: int,
    j: int,
    block_size: int,
    out_path: str | os.PathLike,
    *,
    device: str = "auto",
    sub_chunk: int = 256,
) -> None:
    """Write distance block (i, j) of the candidates (see :func:`selectflow.select.distance.compute_block`)."""
    path = Path(candidates_h5)
    with _open_candidates(path) as f:
        metric = f.attrs["metric"]
        distance.compute_block(f["features"], i, j, block_size, out_path, metric=metric, device=device, sub_chunk=sub_chunk)


def run_fps(
    candidates_h5: str | os.PathLike,
    curve_tsv: str | os.PathLike,
    *,
    mode: str = "streaming",
    block_dir: str | os.PathLike | None = None,
    block_size: int | None = None,
    device: str = "auto",
    log_interval: int = 100,
    chunk: int = 1 << 20,
) -> int:
    """Pick k candidates (FPS from the highest-quality one) and write the curve; return k."""
    if mode not in MODES:
        raise SelectFlowError(f"unknown FPS mode {mode!r}; use one of {', '.join(MODES)}")
    cands = read_candidates(candidates_h5)
    k, stage, metric = int(cands.attrs["k"]), cands.attrs["stage"], cands.attrs["metric"]
    strata = quota = None
    with _open_candidates(cands.path) as f:
        if "stratum" in f:
            strata, quota = f["stratum"][()], f["quota"][()]
    # start at the best candidate of a stratum that gets picks (index 0 unless strata say otherwise)
    start = 0 if strata is None else int(np.flatnonzero(quota[strata] > 0)[0])
    if stage == "quality":
        picks = np.arange(min(k, len(cands)))
        min_distance = np.full(len(picks), np.nan)
    elif mode == "streaming":
        with _open_candidates(cands.path) as f:
            feats = f["features"][()]
        result = fps_streaming(feats, k, metric=metric, start=start, device=device, chunk=chunk,
                               log_interval=log_interval, strata=strata, quota=quota)
        picks, min_distance = result.picks, result.min_distance
    else:
        if block_dir is None or block_size is None:
            raise SelectFlowError("FPS mode 'matrix' needs block_dir and block_size (the distance_block outputs)")
        matrix = distance.BlockMatrix(block_dir, len(cands), block_size, metric)
        result = fps_matrix(matrix, k, start=start, log_interval=log_interval, strata=strata, quota=quota)
        picks, min_distance = result.picks, result.min_distance
    zero = np.flatnonzero(np.asarray(min_distance) <= 0)
    if len(zero):
        log.warning(
            "FPS max-min distance reached 0 at pick %d of %d: the remaining candidates repeat picked ones "
            "(identical routing features); the selection holds repeats — lower selection_percentage, or check the "
            "pool for duplicates", int(zero[0]) + 1, len(picks),
        )
    curve = pd.DataFrame(
        {
            "step": np.arange(len(picks)),
            "sample_id": cands.sample_id[picks],
            "candidate_index": picks,
            "min_distance": min_distance,
        }
    )
    _write_tsv(curve, curve_tsv)
    return len(picks)


def write_selection(
    curve_tsv: str | os.PathLike,
    quality_tsv: str | os.PathLike,
    router_paths: list[str | os.PathLike],
    out_jsonl: str | os.PathLike,
    summary_tsv: str | os.PathLike,
    final_quality_tsv: str | os.PathLike | None = None,
) -> int:
    """Write the selected original records (in pick order) and the per-dataset summary.

    Each line is the original input record plus ``sample_id``, ``dataset``,
    ``quality_score`` and ``selection_rank`` (0 = first pick); those four keys win over
    same-named fields of the record. Shards are read one at a time. With
    ``final_quality_tsv``, ``quality_tsv`` (as :func:`build_candidates` wrote it, before
    FPS) is written there with each sample's final ``reason`` (:func:`final_reasons`).
    """
    curve = _read_tsv(curve_tsv, "FPS curve")
    quality = _read_tsv(quality_tsv, "quality table").set_index("sample_id")
    wanted = {sid: rank for rank, sid in zip(curve["step"], curve["sample_id"])}
    found: dict[str, dict] = {}
    for path in router_paths:
        shard = read_router_shard(path)
        if shard.record is None:
            raise SelectFlowError(
                f"{path} has no 'record' dataset, so the selected records cannot be written; rerun router_dump"
            )
        for sid, text in zip(shard.sample_id, shard.record):
            if sid in wanted:
                found[sid] = json.loads(text)
    missing = [sid for sid in wanted if sid not in found]
    if missing:
        raise SelectFlowError(
            f"{len(missing)} selected samples (first {missing[0]!r}) are in {curve_tsv} but in none of the router "
            "shards; the curve is stale: delete it and rerun snakemake"
        )
    unknown = [sid for sid in wanted if sid not in quality.index]
    if unknown:
        raise SelectFlowError(
            f"selected sample {unknown[0]!r} is not in {quality_tsv}; it is stale: delete it and rerun snakemake"
        )

    def lines():
        for sid in curve["sample_id"]:
            norm = found[sid]
            yield {
                **norm["record"],
                "sample_id": sid,
                "dataset": norm["dataset"],
                "quality_score": float(quality.at[sid, "quality"]),
                "selection_rank": int(wanted[sid]),
            }

    n = write_jsonl(out_jsonl, lines())
    table = quality.reset_index()
    table["selected"] = table["sample_id"].isin(list(wanted))
    sel = table[table["selected"]]
    summary = (
        table.groupby("dataset")
        .agg(pool=("sample_id", "size"), kept=("kept", "sum"), candidates=("candidate", "sum"),
             selected=("selected", "sum"), duplicates=("reason", lambda r: int(r.astype(str).str.startswith("duplicate_of:").sum())))
        .join(sel.groupby("dataset")["quality"].agg(quality_min="min", quality_max="max"))
        .reset_index()
    )
    _write_tsv(summary, summary_tsv)
    if final_quality_tsv is not None:
        _write_tsv(final_reasons(table), final_quality_tsv)
    log.info("wrote %d selected records to %s", n, out_jsonl)
    return n


def final_reasons(table: pd.DataFrame) -> pd.DataFrame:
    """The quality table after FPS: ``reason`` ``selected`` for the picks, ``not_picked`` for the other candidates.

    ``table`` has :func:`build_candidates`'s columns plus a bool ``selected``; the drop
    reasons of the samples that never became candidates stay as they are.
    """
    reason = table["reason"].astype(object).copy()
    reason[table["reason"].astype(str) == "candidate"] = "not_picked"
    reason[table["selected"].astype(bool)] = "selected"
    return table.assign(reason=reason)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="continue-selection",
        description="Run data selection (quality, FPS, selected_data.jsonl) from saved router data.",
    )
    p.add_argument("--router_data_dir", required=True, help="folder of router-data *.h5 shards (searched recursively)")
    p.add_argument("--output_path", required=True, help="selected_data.jsonl to write; curve and summary go beside it")
    p.add_argument("--selection_percentage", type=float, required=True, help="fraction of the pool to select, in (0, 1]")
    p.add_argument("--importance_selection_percentage", type=float, default=None,
                   help="two-stage: FPS only over this top fraction by quality, in (0, 1]")
    p.add_argument("--disable_diversity", action="store_true", help="top-k by quality, no FPS")
    p.add_argument("--distance_batch_size", type=int, default=1000,
                   help="distance block size of --mode matrix (lower it on OOM); streaming needs no N x N batches")
    p.add_argument("--fps_log_interval", type=int, default=100, help="log the FPS max-min distance every N picks")
    p.add_argument("--device", choices=("cuda", "cpu", "auto"), default="auto")
    p.add_argument("--verbose", action="store_true", help="debug logging")
    p.add_argument("--metric", choices=distance.METRICS, default="wasserstein")
    p.add_argument("--mode", choices=MODES, default="streaming",
                   help="streaming: distances on the fly (O(N) memory); matrix: precomputed distance blocks")
    p.add_argument("--quality_method", choices=METHODS, default="auto")
    p.add_argument("--quality_field", default=None, help="record field holding the score for --quality_method field")
    p.add_argument("--routing_strata", type=int, default=40,
                   help="routing strata keeping the pool's shares (selection.routing_strata; 1 = plain FPS)")
    return p


def continue_selection(argv: list[str] | None = None) -> int:
    """CLI entry: the whole selection from a folder of shards; exit status 0, or 2 on a SelectFlowError."""
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        _continue(args)
    except SelectFlowError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


def _continue(args: argparse.Namespace) -> None:
    router_dir = Path(args.router_data_dir)
    if not router_dir.is_dir():
        raise SelectFlowError(f"--router_data_dir {router_dir} is not a folder")
    shards = sorted(router_dir.rglob("*.h5"))
    if not shards:
        raise SelectFlowError(
            f"no *.h5 router-data shards under {router_dir}; point --router_data_dir at the router_data folder"
        )
    if args.distance_batch_size < 1:
        raise SelectFlowError(f"--distance_batch_size must be >= 1, got {args.distance_batch_size}")
    out = Path(args.output_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    quality_tsv, curve_tsv, summary_tsv = (
        out.with_name(name) for name in ("quality.tsv", "fps_curve.tsv", "selection_summary.tsv")
    )
    log.info("%d router shards under %s", len(shards), router_dir)
    with tempfile.TemporaryDirectory(prefix=".selection.", dir=out.parent) as work:
        cands_h5, cands_tsv = Path(work) / "candidates.h5", Path(work) / "candidates_quality.tsv"
        build_candidates(
            shards, cands_h5, cands_tsv, method=args.quality_method, field=args.quality_field,
            selection_percentage=args.selection_percentage,
            importance_selection_percentage=args.importance_selection_percentage,
            disable_diversity=args.disable_diversity, metric=args.metric, routing_strata=args.routing_strata,
        )
        block_dir = None
        if args.mode == "matrix" and not args.disable_diversity:
            block_dir = Path(work) / "blocks"
            nb = n_blocks(cands_h5, args.distance_batch_size)
            for i in range(nb):
                for j in range(i, nb):
                    path = distance.block_path(block_dir, i, j)
                    compute_block(cands_h5, i, j, args.distance_batch_size, path, device=args.device)
        run_fps(
            cands_h5, curve_tsv, mode=args.mode, block_dir=block_dir, block_size=args.distance_batch_size,
            device=args.device, log_interval=args.fps_log_interval,
        )
        write_selection(curve_tsv, cands_tsv, shards, out, summary_tsv, quality_tsv)
