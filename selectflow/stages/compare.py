"""The comparison stage (rules/compare.smk): does the selection pay off against the baselines?

Design (README, "Does the selection pay off? (compare)"):

1. :func:`draw_heldout` (rule ``compare_heldout``): a seeded ``compare.heldout_fraction`` of the pool's
   kept samples (past the main selection's quality filter and dedup) is held out *before* any selection,
   as ``heldout.jsonl``; with ``compare.eval`` set, nothing is (the user's set is the evaluation).
2. :func:`build_candidates` of the selection stage re-runs on the pool less that slice (rule
   ``compare_candidates``); k = round(selection_percentage · that pool). The main selection is unchanged.
3. :func:`build_pool` (rule ``compare_pool``): ``pool.h5``, the kept samples of that pool (``sample_id``,
   ``quality``, routing ``features``, k-means ``cluster``; attributes ``k``, ``metric``,
   ``near_duplicate_threshold``: :func:`selectflow.select.baselines.pair_threshold`).
4. Picks (``picks.tsv``): ``fps`` by :func:`selectflow.stages.select.run_fps` on the comparison's
   candidates, each baseline by :func:`pick_baseline` on ``pool.h5``;
   :func:`selectflow.stages.select.write_selection` writes ``selected_data.jsonl``. Method ``target``:
   :func:`write_target_set` makes a target set sharing no record with the test set, rule
   ``compare_target_router`` routes it, :func:`selectflow.stages.select.pick_toward_target` picks.
5. :func:`intrinsic` -> ``intrinsic.tsv``; :func:`finetune_and_eval` (per method and seed) -> ``eval.tsv``;
   :func:`downstream` -> ``downstream.tsv``. Shared pieces: :mod:`selectflow.report.yardstick`; the
   evaluation: :func:`selectflow.train.evaluate.evaluate`.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from dataclasses import replace
from pathlib import Path

import h5py
import numpy as np
import pandas as pd

from selectflow.config import CompareConfig, SelectionConfig, TrainConfig
from selectflow.data.records import iter_jsonl, record_prompt_response, write_jsonl
from selectflow.report.yardstick import (
    LABEL_FIELDS,
    PoolFeatures,
    _kept_ids,
    _pool_records,
    _selection,
    _text_key,
    interval,
    read_pool,
    read_pool_features,
)
from selectflow.router.routerfile import read_router_shard
from selectflow.runtime.errors import SelectFlowError
from selectflow.runtime.fsutil import atomic_path, h5_write_rows
from selectflow.runtime.tables import read_tsv, write_tsv
from selectflow.select import baselines

log = logging.getLogger(__name__)


def draw_heldout(quality_tsv, router_paths: list, out_jsonl, cmp: CompareConfig) -> int:
    """Write the held-out evaluation slice (normalised records with ``sample_id``); return its size.

    Nothing is held out (an empty file) unless ``compare.eval`` is ``heldout``.
    """
    ids: list[str] = []
    if cmp.eval == "heldout":
        kept = _kept_ids(quality_tsv)
        n = max(1, round(cmp.heldout_fraction * len(kept)))
        if n >= len(kept):
            raise SelectFlowError(f"compare.heldout_fraction {cmp.heldout_fraction} leaves no kept sample to select")
        ids = sorted(np.random.default_rng(cmp.seed).choice(np.array(kept, dtype=object), n, replace=False))
    wanted = set(ids)
    rows = dict(_pool_records(router_paths, wanted))
    missing = wanted - set(rows)
    if missing:
        raise SelectFlowError(
            f"held-out sample {sorted(missing)[0]!r} of {quality_tsv} is in no router shard; "
            "the quality table is stale: delete it and rerun snakemake"
        )
    log.info("held out %d of the pool for evaluation", len(ids))
    return write_jsonl(out_jsonl, (rows[sid] for sid in ids))


def heldout_ids(heldout_jsonl) -> set[str]:
    return {str(rec["sample_id"]) for _, rec in iter_jsonl(heldout_jsonl)}


def excluded_ids(heldout_jsonl, target_slices: list, excluded_tsvs: list) -> set[str]:
    """What no comparison candidate may be: the held-out slice, method ``target``'s slice of the pool
    (``target_slices``: none or one ``dev.jsonl``) and the main selection's excluded ids (``excluded_tsvs``)."""
    return (
        heldout_ids(heldout_jsonl)
        | {sid for path in target_slices for sid in heldout_ids(path)}
        | {sid for path in excluded_tsvs for sid in read_tsv(path, "excluded ids")["sample_id"]}
    )


def build_pool(
    router_paths: list, candidates_h5, quality_tsv, out_h5, cmp: CompareConfig, sel: SelectionConfig
) -> None:
    """``pool.h5``: the kept samples the baselines choose from, their clusters, thresholds and response tokens.

    Their features are the candidates' (``selection.features``, through
    :func:`selectflow.select.candidates.shard_features`), so the baselines compare what the main
    method compares. Two passes over the shards: their sample ids first (no array read), so that the
    second writes each shard's features straight to their rows of ``pool.h5``, sorted by ``sample_id``:
    memory for one shard, then the clusters' training sample and a chunk of rows (:func:`write_pool`).
    """
    from selectflow.router.routerfile import shard_header
    from selectflow.select.candidates import read_candidates, shard_features

    cands = read_candidates(candidates_h5)
    metric, k = cands.attrs["metric"], int(cands.attrs["k"])
    table = read_tsv(quality_tsv, "quality table", nan_columns=("quality",)).set_index("sample_id")
    kept = set(_kept_ids(quality_tsv))
    shard_ids = [shard_header(path)[1] for path in router_paths]
    masks = [np.array([sid in kept for sid in ids], dtype=bool) for ids in shard_ids]
    ids_arr = np.concatenate([ids[mask].astype(str) for ids, mask in zip(shard_ids, masks)])
    del shard_ids
    order = np.argsort(ids_arr, kind="stable")  # pool rows by sample_id: shard order does not matter
    ids_arr = ids_arr[order]
    row_of = np.empty(len(order), dtype=np.int64)
    row_of[order] = np.arange(len(order))  # the pool row of the j-th kept sample in shard order
    response_tokens = np.empty(len(order), dtype=np.int64)

    def write_features(f) -> None:  # each shard's kept features straight to their rows of pool.h5
        features, at = None, 0
        for path, mask in zip(router_paths, masks):
            if not mask.any():
                continue
            shard = read_router_shard(path)
            rows = row_of[at : at + int(mask.sum())]
            if not np.array_equal(shard.sample_id[mask].astype(str), ids_arr[rows]):
                raise SelectFlowError(f"router shard {path} changed while the comparison's pool was read: rerun")
            feats, x_metric = shard_features(shard, np.flatnonzero(mask), sel)
            if x_metric != metric:
                raise SelectFlowError(
                    f"{candidates_h5} was built with metric {metric}, the selection settings "
                    f"give {x_metric}: rerun rule compare_candidates"
                )
            if features is None:
                features = f.create_dataset("features", shape=(len(order), feats.shape[1]), dtype=feats.dtype)
            h5_write_rows(features, rows, feats)
            response_tokens[rows] = np.asarray(shard.n_response_tokens)[mask]
            at += len(rows)
        if features is None:
            raise SelectFlowError(f"{quality_tsv} keeps no sample of the router shards: rerun rule compare_candidates")

    quality = table.loc[ids_arr, "quality"].to_numpy(dtype=np.float64)
    write_pool(out_h5, ids_arr, quality, write_features, response_tokens, k, metric, cmp)


def write_pool(out_h5, ids_arr, quality, features, response_tokens, k: int, metric: str, cmp: CompareConfig) -> None:
    """``pool.h5`` (atomic) of the kept samples ``ids_arr`` (sorted), with their k-means clusters and the
    near-duplicate threshold computed from their features.

    ``features``: [n, D] in memory (the tests' reference), or ``features(f)``, which writes the dataset
    ``features`` [n, D] of the open file ``f`` itself (and may fill ``response_tokens`` as it goes); the
    clusters and threshold then read it back a sample and a chunk at a time.
    """
    with atomic_path(out_h5, suffix=".h5") as tmp, h5py.File(tmp, "w") as f:
        if callable(features):
            features(f)
            x = f["features"]
        else:
            x = features
            f.create_dataset("features", data=x)
        labels = baselines.kmeans_labels(x, cmp.clusters, cmp.seed)
        eps = baselines.pair_threshold(x, cmp.near_duplicate_quantile, cmp.seed, metric)
        f.create_dataset("sample_id", data=ids_arr.astype(object), dtype=h5py.string_dtype())
        f.create_dataset("quality", data=quality)
        f.create_dataset("cluster", data=labels)
        f.create_dataset("response_tokens", data=response_tokens.astype(np.int32))
        f.attrs.update({"k": k, "metric": metric, "near_duplicate_threshold": eps, "clusters": cmp.clusters})
    log.info(
        "compare pool: %d kept samples, k %d, %d clusters, near-duplicate threshold %.4g",
        len(ids_arr),
        k,
        len(np.unique(labels)),
        eps,
    )


def reference_rows(pool: dict, picks_tsv) -> np.ndarray:
    """Rows of ``pool.h5`` (sorted by ``sample_id``) of the samples a picks table lists, in its order; or, for a
    ``.jsonl`` selection (``fps``'s draws), of its records' ``sample_id``, in their order."""
    pool_ids = np.asarray(pool["sample_id"], dtype=str)
    if str(picks_tsv).endswith(".jsonl"):
        ids = np.array([str(rec["sample_id"]) for _, rec in iter_jsonl(picks_tsv)], dtype=str)
    else:
        ids = read_tsv(picks_tsv, "picks table")["sample_id"].astype(str).to_numpy(dtype=str)
    rows = np.searchsorted(pool_ids, ids)
    found = rows < len(pool_ids)
    found[found] = pool_ids[rows[found]] == ids[found]
    if not found.all():
        missing = int((~found).sum())
        raise SelectFlowError(
            f"{picks_tsv} picks {missing} samples not in the comparison's pool: rerun rule compare_pool"
        )
    return rows


def pick_baseline(method: str, pool_h5, picks_tsv, cmp: CompareConfig, device: str = "cpu", reference_tsv=None) -> int:
    """Run baseline ``method`` on ``pool.h5``; write its picks (the FPS curve's columns); return k.

    ``device`` (``auto``, ``cpu``, ``cuda``: ``selection.device``) is where its distances run;
    ``reference_tsv`` the picks ``random_length`` and ``random_matched`` match (``fps``'s).
    """
    from selectflow.runtime.device import resolve_device

    pool = _pool_for(method, pool_h5)
    reference = None if reference_tsv is None else reference_rows(pool, reference_tsv)
    picks = _baseline_rows(method, pool, cmp.seed, reference, resolve_device(device))
    _write_picks(pool, picks, picks_tsv)
    log.info("%s picked %d", method, len(picks))
    return len(picks)


def _pool_for(method: str, pool_h5) -> dict:
    """``pool.h5`` as baseline ``method`` reads it: its features on disk, read by rows (:class:`PoolFeatures`),
    where it compares them, else not at all (``None``)."""
    pool = read_pool(pool_h5, features=False)
    if method in baselines.READS_FEATURE_ROWS:
        pool["features"] = PoolFeatures(pool_h5)
    return pool


def _baseline_rows(method: str, pool: dict, seed: int, reference: np.ndarray | None, device="cpu") -> np.ndarray:
    """Rows of ``pool.h5`` that baseline ``method`` picks with ``seed``.

    ``reference``: the rows ``random_length`` and ``random_matched`` match.
    """
    return baselines.select(
        method,
        pool["features"],
        pool["quality"],
        pool["sample_id"],
        int(pool["k"]),
        seed=seed,
        labels=pool["cluster"],
        eps=float(pool["near_duplicate_threshold"]),
        metric=pool["metric"],
        device=device,
        response_tokens=pool.get("response_tokens"),
        reference=reference,
    )


def _write_picks(pool: dict, picks: np.ndarray, picks_tsv) -> None:
    table = {
        "step": np.arange(len(picks)),
        "sample_id": pool["sample_id"][picks],
        "candidate_index": picks,
        "min_distance": np.full(len(picks), np.nan),
    }
    write_tsv(pd.DataFrame(table), picks_tsv, na_rep="nan")


def intrinsic(selections: dict[str, str | os.PathLike], pool_h5, out_tsv) -> pd.DataFrame:
    """One row per method: size, quality, near-duplicates, cluster coverage, response length, label shares."""
    pool = read_pool(pool_h5, features=False)
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
            "near_duplicate_pairs": baselines.near_duplicate_pairs(
                read_pool_features(pool_h5, idx), float(pool["near_duplicate_threshold"]), pool["metric"]
            ),
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


def write_testset(dataset_paths: dict, out_jsonl, cmp: CompareConfig) -> int:
    """The demo's fresh test set (:func:`selectflow.data.demotest.make_demo_testset`): no record whose
    normalised prompt + response is a pool record's, none alike; return its size."""
    from selectflow.data.demotest import make_demo_testset
    from selectflow.data.records import read_dataset

    pool = {_text_key(rec) for name, path in dataset_paths.items() for rec in read_dataset(path, name)}
    try:
        records = make_demo_testset(cmp.test_per_kind, cmp.test_seed, lambda rec: _text_key(rec) in pool)
    except ValueError as exc:
        raise SelectFlowError(f"{exc} (compare.test_per_kind)") from None
    log.info(
        "demo test set: %d records, %d kinds, none of them among the pool's %d distinct records",
        len(records),
        len({r["kind"] for r in records}),
        len(pool),
    )
    return write_jsonl(out_jsonl, records)


def write_target_set(
    out_jsonl,
    test_jsonl,
    cmp: CompareConfig,
    *,
    datasets: dict | None = None,
    quality_tsv=None,
    router_paths: list | None = None,
) -> int:
    """The target set of method ``target``, sharing no record (normalised prompt + response) with the test set.

    ``compare.target`` when set (a SelectFlowError if one of its records is a test record);
    else for eval ``demo`` fresh demo records like the test set's (seed ``test_seed + 1``), in
    neither the pool (``datasets``) nor the test set; for eval ``heldout`` a second slice of the
    kept samples of ``quality_tsv`` (``heldout_fraction`` of them, seed ``seed + 1``), none of
    the test slice's, with their ``sample_id`` (rule ``compare_candidates`` keeps them from
    every method). Return its size.
    """
    from selectflow.data.records import read_dataset

    test = {_text_key(rec) for _, rec in iter_jsonl(test_jsonl)}
    if cmp.target:
        given = read_dataset(cmp.target, "target")
        shared = [rec["line"] for rec in given if _text_key(rec) in test]
        if shared:
            raise SelectFlowError(
                f"compare.target {cmp.target}: {len(shared)} records (the first on line {shared[0]}) are also in "
                f"the test set {test_jsonl}; a target set must share no record with it: remove them"
            )
        records = [rec["record"] for rec in given]
    elif cmp.eval == "demo":
        from selectflow.data.demotest import make_demo_testset

        pool = {_text_key(rec) for name, path in datasets.items() for rec in read_dataset(path, name)}
        try:
            records = make_demo_testset(
                cmp.test_per_kind, cmp.test_seed + 1, lambda rec: _text_key(rec) in pool or _text_key(rec) in test
            )
        except ValueError as exc:
            raise SelectFlowError(f"{exc} (compare.test_per_kind, for the target set)") from None
    elif cmp.eval == "heldout":
        test_ids = heldout_ids(test_jsonl)
        kept = [sid for sid in _kept_ids(quality_tsv) if sid not in test_ids]
        n = max(1, round(cmp.heldout_fraction * (len(kept) + len(test_ids))))
        if n >= len(kept):
            raise SelectFlowError(
                f"compare.heldout_fraction {cmp.heldout_fraction} leaves no kept sample to select "
                "once the test and target slices are held out"
            )
        ids = sorted(np.random.default_rng(cmp.seed + 1).choice(np.array(kept, dtype=object), n, replace=False))
        rows = dict(_pool_records(router_paths, set(ids)))
        records = [rows[sid] for sid in ids if _text_key(rows[sid]) not in test]
    else:
        raise SelectFlowError(f"compare.methods has target and compare.eval is {cmp.eval}: set compare.target")
    log.info("target set: %d records, none of them in the test set %s", len(records), test_jsonl)
    return write_jsonl(out_jsonl, records)


def build_student(out_dir, cmp: CompareConfig, max_length: int) -> None:
    """The scratch student of ``compare.student: scratch`` (:mod:`selectflow.train.student`)."""
    from selectflow.train.student import build_scratch_student

    build_scratch_student(
        out_dir,
        seed=cmp.seed,
        hidden=cmp.student_hidden,
        layers=cmp.student_layers,
        vocab_size=cmp.student_vocab,
        max_positions=max_length,
    )


def write_full_pools(quality_tsv, router_paths: list, outputs: dict[str, str | os.PathLike]) -> None:
    """``full_kept`` (kept samples) and ``full_raw`` (every sample not excluded) of the comparison's pool."""
    table = read_tsv(quality_tsv, "quality table", nan_columns=("quality",))
    wanted = {
        "full_kept": set(_kept_ids(quality_tsv)),
        "full_raw": set(table.loc[table["reason"] != "excluded", "sample_id"].astype(str)),
    }
    rows: dict[str, list[dict]] = {name: [] for name in outputs}
    for sid, record in _pool_records(router_paths, set().union(*(wanted[name] for name in outputs))):
        for name in outputs:
            if sid in wanted[name]:
                rows[name].append(record)
    for name, path in outputs.items():
        log.info("%s: %d samples", name, write_jsonl(path, rows[name]))


def random_draws(
    pool_h5,
    quality_tsv,
    router_paths: list,
    out_paths: list,
    cmp: CompareConfig,
    method="random",
    reference_tsv=None,
    draw_references=None,
) -> None:
    """A random baseline's further draws: ``out_paths[j]`` holds the picks of ``method`` (``random``, or
    ``random_length`` or ``random_matched``, matched to ``reference_tsv``, ``fps``'s picks) drawn with
    ``compare.seed + j + 1`` (draw 0, seed ``compare.seed``, is the method's own selection, :func:`pick_baseline`).

    ``draw_references`` (``compare.fps_draws``: ``fps``'s draws 1, 2, ..., one per out path): draw j + 1 is
    matched to ``fps``'s draw j + 1, the selection fine-tune j + 1 of ``fps`` trains on, not to its draw 0."""
    from selectflow.stages.select import write_selection

    pool = _pool_for(method, pool_h5)
    if draw_references is not None and len(draw_references) != len(out_paths):
        raise SelectFlowError(f"{len(out_paths)} draws of {method} but {len(draw_references)} fps draws to match")
    references = draw_references or [reference_tsv] * len(out_paths)
    for j, out in enumerate(out_paths):
        reference = None if references[j] is None else reference_rows(pool, references[j])
        picks = _baseline_rows(method, pool, cmp.seed + j + 1, reference)
        with tempfile.TemporaryDirectory(dir=Path(out).parent) as tmp:
            picks_tsv = Path(tmp) / "picks.tsv"
            _write_picks(pool, picks, picks_tsv)
            write_selection(picks_tsv, quality_tsv, router_paths, out, Path(tmp) / "summary.tsv")


def pick_fps(candidates_h5, picks_tsv, sel: SelectionConfig, chunk=None) -> int:
    """``fps``'s picks of the comparison's candidates (:func:`selectflow.stages.select.run_fps`); return k.

    Always streaming: the comparison builds no distance blocks, and streaming FPS picks what matrix mode picks
    (tests/e2e/test_workflow.py ``test_matrix_mode_picks_like_streaming``)."""
    from selectflow.stages.select import run_fps

    return run_fps(candidates_h5, picks_tsv, replace(sel, distance_mode="streaming"), chunk=chunk)


def fps_draw(
    router_paths: list,
    exclude: set[str],
    out_jsonl,
    sel: SelectionConfig,
    draw: int,
    chunk=None,
    candidates=None,
) -> int:
    """``fps``'s selection for fine-tuning seed ``draw`` > 0 (``compare.fps_draws``) into ``out_jsonl``; return k.

    The comparison's candidates (the pool less ``exclude``) and the picks as rules ``compare_candidates``
    and ``compare_fps`` (:func:`pick_fps`) build them, with ``selection.strata_seed + draw``: the routing
    strata's k-means (and ``diversity: stratified``'s draw) is the selection's one draw of chance. Draw 0 is
    ``compare_fps``'s. ``candidates`` (the comparison's ``candidates.h5`` and ``candidates_quality.tsv``):
    where :func:`selectflow.select.candidates.restratify` can, only their strata are drawn anew, without
    the pool scan; else (or without them) the candidates are re-built from the router shards.
    """
    from selectflow.select.candidates import restratify
    from selectflow.stages.select import build_candidates, write_selection

    drawn = replace(sel, strata_seed=sel.strata_seed + draw)
    if sel.routing_strata <= 1 and sel.diversity != "stratified":
        log.warning(
            "routing_strata 1 and diversity %s: the selection draws nothing; draw %d is draw 0", sel.diversity, draw
        )
    with tempfile.TemporaryDirectory(dir=Path(out_jsonl).parent) as tmp:
        cands, quality, picks = (Path(tmp) / name for name in ("candidates.h5", "quality.tsv", "picks.tsv"))
        if candidates is not None and restratify(candidates[0], cands, drawn):
            quality = candidates[1]
            log.info("fps draw %d: the comparison's candidates with their strata drawn anew", draw)
        else:
            build_candidates(router_paths, cands, quality, drawn, exclude)
        k = pick_fps(cands, picks, drawn, chunk=chunk)
        write_selection(picks, quality, router_paths, out_jsonl, Path(tmp) / "summary.tsv")
    log.info("fps draw %d (strata_seed %d): %d picks -> %s", draw, drawn.strata_seed, k, out_jsonl)
    return k


def finetune_and_eval(
    model,
    data: list,
    test_jsonl,
    out_dir,
    out_tsv,
    settings: TrainConfig,
    *,
    seeds: int,
    micro_batch_size: int,
    attempt: int,
) -> pd.DataFrame:
    """Fine-tune ``model`` once per seed, evaluate each on ``test_jsonl``; write ``out_tsv``.

    Seed i trains on ``data[i % len(data)]`` (one selection for every seed, or one per seed:
    the random baseline's draws) with ``settings`` and ``seed = settings.seed + i`` in
    ``out_dir/seed_i`` (the trainer's tables stay there; the checkpoint is removed once
    evaluated). ``out_tsv`` has a row per seed and kind (:func:`evaluate`) with the
    selection's ``size``, the optimizer ``steps`` and ``selection``, the index in ``data`` of what seed i
    trained on.
    """
    from selectflow.train import train as train_model
    from selectflow.train.evaluate import evaluate

    tables = []
    for i in range(seeds):
        seed, run_dir, source = settings.seed + i, Path(out_dir) / f"seed_{i}", data[i % len(data)]
        summary = train_model(
            model, source, run_dir, replace(settings, seed=seed), micro_batch_size=micro_batch_size, attempt=attempt
        )
        table = evaluate(run_dir / "checkpoint", test_jsonl, settings.max_length)
        shutil.rmtree(run_dir / "checkpoint", ignore_errors=True)
        log.info(
            "seed %d: macro loss %.4f, macro accuracy %.3f over %d kinds (%d steps on %s)",
            seed,
            table["loss"].mean(),
            table["accuracy"].mean(),
            len(table),
            summary["steps"],
            source,
        )
        size = sum(1 for _ in iter_jsonl(source))
        tables.append(table.assign(seed=seed, selection=i % len(data), size=size, steps=summary["steps"]))
    columns = ["seed", "selection", "size", "steps", "kind", "n", "loss", "tokens", "accuracy"]
    out = pd.concat(tables, ignore_index=True)[columns]
    write_tsv(out, out_tsv, float_format="%.6g", na_rep="nan")
    return out


def downstream(evals: dict[str, str | os.PathLike], out_tsv) -> pd.DataFrame:
    """One row per method from its ``eval.tsv``: ``size``, ``steps``, ``n_seeds``, ``n_selections`` (the
    selections its seeds trained on: 1, or one per seed for a method drawn anew; 1 for an ``eval.tsv`` written
    before the column), macro loss and macro
    accuracy (means over kinds) as mean and 95 % interval over seeds, the per-seed macro values, and
    each kind's mean loss and accuracy (``loss:<kind>``, ``accuracy:<kind>``)."""
    rows = []
    for method, path in evals.items():
        table = read_tsv(path, "eval table", nan_columns=("accuracy",))
        per_seed = table.groupby("seed").agg(loss=("loss", "mean"), accuracy=("accuracy", "mean"))
        row = {
            "method": method,
            "size": int(table["size"].iloc[0]),
            "steps": int(table["steps"].iloc[0]),
            "n_seeds": len(per_seed),
            "n_selections": table["selection"].nunique() if "selection" in table else 1,
        }
        for measure in ("loss", "accuracy"):
            row[f"macro_{measure}"], row[f"macro_{measure}_ci95"] = interval(per_seed[measure].to_numpy())
            row[f"{measure}_per_seed"] = ",".join(f"{v:.4f}" for v in per_seed[measure])
        for kind, group in table.groupby("kind", sort=True):
            row[f"loss:{kind}"] = group["loss"].mean()
            row[f"accuracy:{kind}"] = group["accuracy"].mean()
        rows.append(row)
    out = pd.DataFrame(rows)
    write_tsv(out, out_tsv, float_format="%.6g", na_rep="nan")
    return out
