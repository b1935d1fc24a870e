"""The selection stage: one file-in/file-out function per rule of ``rules/select.smk``.

1. :func:`build_candidates` (rule ``candidates``): router shards -> ``candidates.h5`` +
   ``candidates_quality.tsv`` (every sample's score and ``reason``; the candidates' reason is
   ``candidate``). Reads the shards into a pool (:mod:`selectflow.select.pool`), scores its
   quality (:mod:`selectflow.select.quality`), drops ``keep=False``
   samples and duplicates (:mod:`selectflow.select.dedup`), orders the rest by quality and
   keeps the candidates FPS will choose from (:mod:`selectflow.select.candidates`, which also
   describes the file).
2. :func:`compute_block` (rule ``distance_block``, ``n_blocks`` of them per side, upper
   triangle): distance blocks, only for ``distance_mode: matrix``.
3. :func:`run_fps` (rule ``fps``): ``candidates.h5`` (+ blocks) -> ``fps_curve.tsv``
   (``step``, ``sample_id``, ``candidate_index``, ``min_distance``: ``inf`` for the first
   pick, ``nan`` without diversity); with ``selection.target``, :func:`pick_toward_target`
   (+ the target's router file from rule ``target_router``) instead.
4. :func:`write_selection` (rule ``selected_data``): curve + shards -> ``selected_data.jsonl``
   + ``selection_summary.tsv`` + ``quality.tsv`` (``candidates_quality.tsv`` with the final
   ``reason``: ``selected``, ``not_picked`` or why the sample was dropped before FPS), through
   :mod:`selectflow.select.write`.

:func:`continue_selection` runs the same four in-process on a folder of shards (the
original's ``continue_selection.py``; its parser is in :mod:`selectflow.cli`).

Each function takes paths and the ``selection`` section (:class:`selectflow.config.SelectionConfig`);
:func:`selectflow.config.selection_section` builds one from the schema's defaults for a caller without a config.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from pathlib import Path

import numpy as np

from selectflow.config import SelectionConfig
from selectflow.data.preflight import tiny_selection_text
from selectflow.data.records import write_jsonl
from selectflow.runtime.errors import SelectFlowError
from selectflow.runtime.tables import read_tsv, write_tsv
from selectflow.schema import schema_enum
from selectflow.select import distance, diversity
from selectflow.select.candidates import (
    candidates_of_pool,
    check_selection,
    fps_options,
    n_blocks,
    open_candidates,
    read_candidates,
    target_features,
)
from selectflow.select.fps import fps_matrix, fps_streaming
from selectflow.select.pool import scan_pool
from selectflow.select.target import toward_target
from selectflow.select.write import final_reasons, selected_records, summary_table, write_curve

log = logging.getLogger(__name__)

# raw inputs of the score that quality.tsv may carry (selectflow.select.quality.assess)
NUMERIC_INPUTS = ("nll_response", "nll_response_alone", "nll_eos", "n_response_tokens", "gate_mean", "distinct_3grams")
NAN_COLUMNS = ("quality", "min_distance", "similarity", *NUMERIC_INPUTS)
MODES = schema_enum("selection", "distance_mode")
TARGET_ORDER_SEED = 0  # the shuffle in which the rounds of pick_toward_target visit the target records


def build_candidates(
    router_paths: list[str | os.PathLike],
    out_h5: str | os.PathLike,
    quality_tsv: str | os.PathLike,
    sel: SelectionConfig,
    exclude_ids: set[str] | None = None,
) -> int:
    """Score the pool, pick the candidates, write ``out_h5`` and ``quality_tsv``; return k.

    The pool is every sample of ``router_paths`` not in ``exclude_ids``, read one shard at a
    time (:func:`~selectflow.select.pool.scan_pool`); then :func:`candidates_of_pool`. Peak host
    memory: O(candidates × D) for their features (D = L·E, or H), plus one shard, plus O(pool)
    small values (a few hundred bytes a sample: ids, NLLs, the gate score, record facts, two 16-byte
    digests); with ``routing_strata`` > 1 the k-means trains on a seeded sample of at most
    ``routing_strata`` × :data:`~selectflow.select.strata.POINTS_PER_CENTROID` kept samples and
    assigns every kept sample a shard at a time (:func:`~selectflow.select.strata.strata_labels`),
    so that sample's features more.
    """
    check_selection(sel)
    return candidates_of_pool(scan_pool(router_paths, sel), out_h5, quality_tsv, sel, exclude_ids)


def compute_block(
    candidates_h5: str | os.PathLike,
    i: int,
    j: int,
    out_path: str | os.PathLike,
    sel: SelectionConfig,
    sub_chunk: int | None = None,
) -> None:
    """Write distance block (i, j) of the candidates (see :func:`selectflow.select.distance.compute_block`).

    Blocks are ``distance_batch_size`` square; ``sub_chunk`` rows go through the device at a
    time (default ``distance_batch_size``; the rule passes its attempt-scaled resource).
    """
    with open_candidates(candidates_h5) as f:
        distance.compute_block(
            f["features"],
            i,
            j,
            sel.distance_batch_size,
            out_path,
            metric=f.attrs["metric"],
            device=sel.device,
            sub_chunk=sub_chunk or sel.distance_batch_size,
        )


def run_fps(
    candidates_h5: str | os.PathLike,
    curve_tsv: str | os.PathLike,
    sel: SelectionConfig,
    *,
    block_dir: str | os.PathLike | None = None,
    chunk: int | None = None,
    target_h5: str | os.PathLike | None = None,
) -> int:
    """Pick k candidates (FPS from the highest-quality one, or another ``selection.diversity``), write the curve;
    return k.

    With ``target_h5`` (the router file of ``selection.target``) the picks are the candidates
    nearest to the targets instead (:func:`pick_toward_target`).

    ``selection.diversity`` ``facility_location``, ``kmeans`` or ``stratified`` (:mod:`selectflow.select.diversity`)
    picks from the same candidates, strata and quotas as FPS, from their features in either
    distance mode (no blocks read; ``stratified`` reads the hold-backs' weights); their curve's
    ``min_distance`` is ``nan``.

    Streaming FPS computes ``chunk`` distance rows at a time (default ``distance_batch_size``;
    the rule passes its attempt-scaled resource); matrix mode reads the blocks in ``block_dir``.
    With ``fps_gpus`` > 1 streaming FPS runs on that many ranks (:func:`launch_fps_ranks`),
    with the same picks.
    """
    if sel.distance_mode not in MODES:
        raise SelectFlowError(f"unknown FPS mode {sel.distance_mode!r}; use one of {', '.join(MODES)}")
    if target_h5 is not None:
        return pick_toward_target(candidates_h5, target_h5, curve_tsv, sel, chunk=chunk)
    cands = read_candidates(candidates_h5)
    k, stage, metric = int(cands.attrs["k"]), cands.attrs["stage"], cands.attrs["metric"]
    chunk = chunk or sel.distance_batch_size
    fps = stage != "quality" and sel.diversity == "fps"
    if fps and sel.distance_mode == "streaming" and sel.fps_gpus > 1:
        return launch_fps_ranks(candidates_h5, curve_tsv, sel, chunk)
    with open_candidates(cands.path) as f:
        feats = f["features"][()] if stage != "quality" and (sel.distance_mode == "streaming" or not fps) else None
        opts = fps_options(f, sel, cands, feats=feats)
    if stage == "quality":
        picks = np.arange(min(k, len(cands)))
        min_distance = np.full(len(picks), np.nan)
    elif not fps:
        picks = diversity.select(
            sel.diversity,
            feats,
            cands.quality,
            cands.sample_id,
            k,
            metric=metric,
            n_neighbors=sel.diversity_neighbors,
            n_clusters=sel.diversity_clusters,
            strata=opts["strata"],
            quota=opts["quota"],
            chunk=chunk,
            device=sel.device,
            probes=sel.knn_probes_for(len(feats)),
            weight=opts["weight"],
            seed=sel.strata_seed,
        )
        min_distance = np.full(len(picks), np.nan)
    elif feats is not None:
        log.info("streaming FPS: %d distance rows per chunk", chunk)
        result = fps_streaming(feats, k, metric=metric, device=sel.device, chunk=chunk, **opts)
        picks, min_distance = result.picks, result.min_distance
    else:
        if block_dir is None:
            raise SelectFlowError("FPS mode 'matrix' needs block_dir (the distance_block outputs)")
        matrix = distance.BlockMatrix(block_dir, len(cands), sel.distance_batch_size, metric)
        result = fps_matrix(matrix, k, **opts)
        picks, min_distance = result.picks, result.min_distance
    return write_curve(cands, picks, min_distance, curve_tsv)


def pick_toward_target(
    candidates_h5: str | os.PathLike,
    target_h5: str | os.PathLike,
    curve_tsv: str | os.PathLike,
    sel: SelectionConfig,
    *,
    chunk: int | None = None,
) -> int:
    """Pick the k candidates nearest to the target records of router file ``target_h5``; write the curve; return k.

    The picks of :func:`selectflow.select.target.toward_target` (round-robin over the targets,
    each taking its nearest unpicked candidate; ties to the higher-quality candidate), the
    targets visited in a shuffle seeded with :data:`TARGET_ORDER_SEED` (file order would favour
    the first task of a sorted dev set when there are more targets than picks). Only the
    candidates (past the quality step and dedup) can be picked; routing strata chose them, but
    their quotas do not apply: the targets decide where the picks go. The curve's
    ``min_distance`` is ``nan``. ``chunk`` candidates at a time (default ``distance_batch_size``).
    """
    cands = read_candidates(candidates_h5)
    k, stage, metric = int(cands.attrs["k"]), cands.attrs["stage"], cands.attrs["metric"]
    if stage == "quality":
        raise SelectFlowError(
            f"selection.target replaces the diversity step, and {candidates_h5} was built with "
            "selection.disable_diversity: true (no step to replace): set it to false, or unset selection.target"
        )
    with open_candidates(cands.path) as f:
        feats = f["features"][()]
    targets = target_features(target_h5, sel)
    targets = targets[np.random.default_rng(TARGET_ORDER_SEED).permutation(len(targets))]
    picks = toward_target(targets, feats, k, metric, chunk=chunk or sel.distance_batch_size, device=sel.device)
    return write_curve(cands, picks, np.full(len(picks), np.nan), curve_tsv)


def launch_fps_ranks(
    candidates_h5: str | os.PathLike, curve_tsv: str | os.PathLike, sel: SelectionConfig, chunk: int
) -> int:
    """Run streaming FPS on ``sel.fps_gpus`` ranks started by torchrun on this node; return k.

    ``python -m torch.distributed.run --standalone --nproc_per_node W -m selectflow.stages.select
    fps-rank ...``: each rank runs :func:`fps_rank` (NCCL, one GPU each, when W GPUs are
    visible; else gloo ranks on the CPU). The ranks' output goes to this job's log.
    Rank 0 writes ``curve_tsv``. Under SLURM the job gets its W GPUs and W CPUs on one node
    from the profile (``gpu=W`` → ``--gpus``, ``threads: W`` → ``--cpus-per-task``) and
    torchrun starts the ranks there, as here. The ranks share the job's CPU threads
    (:func:`~selectflow.select.fps_dist.rank_thread_env`) instead of each taking them all.
    """
    import subprocess
    import sys
    from dataclasses import asdict

    from selectflow.select.fps_dist import rank_thread_env

    world = int(sel.fps_gpus)
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={world}",
        "-m",
        "selectflow.stages.select",
        "fps-rank",
        str(candidates_h5),
        str(curve_tsv),
        str(int(chunk)),
        json.dumps(asdict(sel)),
    ]
    log.info("streaming FPS on %d ranks: %s", world, " ".join(cmd[:-1]))
    env = {**os.environ, **rank_thread_env(os.environ, world)}
    tail: list[str] = []
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env) as proc:
        for line in proc.stdout:
            log.info("[fps ranks] %s", line.rstrip())
            tail = (tail + [line.rstrip()])[-40:]
    if proc.returncode != 0:
        text = "\n".join(tail)
        if "out of memory" in text.lower() or "MemoryError" in text:
            raise MemoryError(f"an FPS rank ran out of memory:\n{text}")
        raise RuntimeError(f"FPS ranks failed (exit {proc.returncode}); their last lines:\n{text}")
    return len(read_tsv(curve_tsv, "FPS curve", nan_columns=NAN_COLUMNS))


def fps_rank(candidates_h5: str | os.PathLike, curve_tsv: str | os.PathLike, sel: SelectionConfig, chunk: int) -> None:
    """One rank of :func:`launch_fps_ranks` (torchrun's environment: RANK, WORLD_SIZE, LOCAL_RANK, MASTER_*)."""
    import torch.distributed as dist

    from selectflow.select.fps_dist import backend_for, fps_distributed, knn_graph_distributed, rank_device

    world, rank = int(os.environ["WORLD_SIZE"]), int(os.environ["RANK"])
    backend = backend_for(sel.device, world)
    dev = rank_device(backend, int(os.environ.get("LOCAL_RANK", 0)))
    dist.init_process_group(backend)
    try:
        cands = read_candidates(candidates_h5)
        with open_candidates(cands.path) as f:
            result = fps_distributed(
                f["features"],
                int(cands.attrs["k"]),
                metric=cands.attrs["metric"],
                device=dev,
                chunk=chunk,
                **fps_options(f, sel, cands, device=str(dev), graph=knn_graph_distributed),
            )
        if rank == 0:
            write_curve(cands, result.picks, result.min_distance, curve_tsv)
    finally:
        dist.destroy_process_group()


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
    curve = read_tsv(curve_tsv, "FPS curve", nan_columns=NAN_COLUMNS)
    quality = read_tsv(quality_tsv, "quality table", nan_columns=NAN_COLUMNS).set_index("sample_id")
    wanted = {sid: rank for rank, sid in zip(curve["step"], curve["sample_id"])}
    found = selected_records(wanted, router_paths, curve_tsv, quality, quality_tsv)
    lines = (
        {
            **found[sid]["record"],
            "sample_id": sid,
            "dataset": found[sid]["dataset"],
            "quality_score": float(quality.at[sid, "quality"]),
            "selection_rank": int(wanted[sid]),
        }
        for sid in curve["sample_id"]
    )
    n = write_jsonl(out_jsonl, lines)
    table = quality.reset_index()
    table["selected"] = table["sample_id"].isin(list(wanted))
    write_tsv(summary_table(table), summary_tsv, na_rep="nan")
    if final_quality_tsv is not None:
        write_tsv(final_reasons(table), final_quality_tsv, na_rep="nan")
    log.info("wrote %d selected records to %s", n, out_jsonl)
    return n


def continue_selection(router_dir: str | os.PathLike, output_path: str | os.PathLike, sel: SelectionConfig) -> None:
    """The whole selection from a folder of shards (``selectflow continue-selection``), with the rules' functions.

    Writes ``output_path`` (selected_data.jsonl) and beside it ``quality.tsv``,
    ``fps_curve.tsv`` and ``selection_summary.tsv``; the intermediate files live in a
    temporary folder there and go when it is done.
    """
    router_dir = Path(router_dir)
    if not router_dir.is_dir():
        raise SelectFlowError(f"--router_data_dir {router_dir} is not a folder")
    shards = sorted(router_dir.rglob("*.h5"))
    if not shards:
        raise SelectFlowError(
            f"no *.h5 router-data shards under {router_dir}; point --router_data_dir at the router_data folder"
        )
    if sel.distance_batch_size < 1:
        raise SelectFlowError(f"--distance_batch_size must be >= 1, got {sel.distance_batch_size}")
    out = Path(output_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    log.info("%d router shards under %s", len(shards), router_dir)
    with tempfile.TemporaryDirectory(prefix=".selection.", dir=out.parent) as work:
        cands_h5, cands_tsv, block_dir = Path(work) / "candidates.h5", Path(work) / "candidates_quality.tsv", None
        build_candidates(shards, cands_h5, cands_tsv, sel)
        tiny = tiny_selection_text(
            sel.selection_percentage, int(read_candidates(cands_h5).attrs["n_pool"]), f"samples under {router_dir}"
        )
        if tiny:
            log.warning(tiny)  # the workflow says it before its first job (selectflow.data.preflight)
        if sel.distance_mode == "matrix" and not sel.disable_diversity and sel.diversity == "fps":
            block_dir = Path(work) / "blocks"
            nb = n_blocks(cands_h5, sel.distance_batch_size)
            for i, j in [(a, b) for a in range(nb) for b in range(a, nb)]:
                compute_block(cands_h5, i, j, distance.block_path(block_dir, i, j), sel)
        run_fps(cands_h5, out.with_name("fps_curve.tsv"), sel, block_dir=block_dir)
        write_selection(
            out.with_name("fps_curve.tsv"),
            cands_tsv,
            shards,
            out,
            out.with_name("selection_summary.tsv"),
            out.with_name("quality.tsv"),
        )


def _main(argv: list[str]) -> None:
    """``python -m selectflow.stages.select fps-rank CANDIDATES CURVE CHUNK SELECTION_JSON`` (torchrun's command)."""
    import sys

    if len(argv) != 5 or argv[0] != "fps-rank":
        sys.exit("usage: python -m selectflow.stages.select fps-rank CANDIDATES_H5 CURVE_TSV CHUNK SELECTION_JSON")
    rank = int(os.environ.get("RANK", 0))
    logging.basicConfig(
        level=logging.INFO if rank == 0 else logging.WARNING,
        format=f"rank {rank} %(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    fps_rank(argv[1], argv[2], SelectionConfig(**json.loads(argv[4])), int(argv[3]))


if __name__ == "__main__":
    import sys

    _main(sys.argv[1:])
