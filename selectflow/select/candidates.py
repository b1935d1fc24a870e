"""The candidates FPS chooses from, and their file ``candidates.h5``.

:func:`choose` orders the samples of the pool (:class:`~selectflow.select.pool.Pool`) that passed
the quality filter (quality descending, ties by ``sample_id``), sets k and picks the candidates:
every kept sample (``fps``), the quality top ``importance_selection_percentage`` (``two_stage``) or
the top k (``quality``, no FPS); with ``routing_strata`` > 1 the candidates and picks are shared
out by routing strata (:func:`selectflow.select.strata.stratify`).

Every per-sample feature vector of the selection (candidates, routing strata, and target
records) is made by :func:`sample_features` (of pool rows) or :func:`shard_features` (of a shard
read whole): ``selection.features`` routing (the routing distributions under
``selection.metric``) or hidden (the dump's mean-pooled last hidden states under cosine distance).

:func:`candidates_of_pool` is the whole step on a pool: quality (:mod:`selectflow.select.quality`),
dedup (:mod:`selectflow.select.dedup`), :func:`choose`, then ``candidates.h5`` and
``candidates_quality.tsv`` (:func:`quality_table`). :func:`fps_options` reads back what FPS needs
of an open ``candidates.h5`` (start, strata, quotas).

``candidates.h5``: ``sample_id`` [m] str, ``quality`` [m] float64, ``features`` [m, D]
float32 (grid features, :func:`selectflow.select.distance.features`), in candidate order;
with strata also ``stratum`` [m] int64 and ``quota`` [S]; attributes ``layout_version``,
``complete``, ``metric`` (the distance of ``features``: cosine for hidden states),
``n_pool``, ``n_kept``, ``k``, ``stage`` (``fps``, ``two_stage`` or ``quality``),
``quality_method`` and ``n_duplicates``.
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from selectflow.config import SelectionConfig
from selectflow.router.routerfile import NO_HIDDEN, RouterShard, read_router_shard
from selectflow.runtime.errors import SelectFlowError
from selectflow.runtime.fsutil import atomic_path, h5_rows, open_checked_h5
from selectflow.runtime.oom import release_heap
from selectflow.runtime.tables import write_tsv
from selectflow.schema import schema_enum
from selectflow.select import distance
from selectflow.select.dedup import drop_duplicates, duplicates_of
from selectflow.select.diversity import (
    boilerplate_hold_back,
    graph_weight,
    knn_graph,
    quality_hold_back,
    quality_weight,
    relevance_hold_back,
    snap_score,
)
from selectflow.select.fps import Snap
from selectflow.select.pool import Pool
from selectflow.select.quality import assess, boilerplate_share, prompt_coverage, resolve_method
from selectflow.select.strata import strata_labels, stratify

log = logging.getLogger(__name__)

CANDIDATES_LAYOUT_VERSION = 1
CANDIDATES_REBUILD_HINT = "rule candidates rebuilds it: delete the file and rerun snakemake"
STAGES = ("fps", "two_stage", "quality")
FEATURES = schema_enum("selection", "features")


def check_fraction(name: str, value: float | None, *, optional: bool = False) -> float | None:
    """Return ``value`` if it lies in (0, 1]; else raise naming the key ``name``."""
    if value is None and optional:
        return None
    if value is None or not isinstance(value, (int, float)) or not (0.0 < float(value) <= 1.0):
        raise SelectFlowError(f"{name} must be a fraction in (0, 1] (0.05 means 5%), got {value!r}")
    return float(value)


def check_selection(sel) -> None:
    """The fractions and the metric of a selection section (:class:`selectflow.config.SelectionConfig`)."""
    check_fraction("selection_percentage", sel.selection_percentage)
    check_fraction("importance_selection_percentage", sel.importance_selection_percentage, optional=True)
    feature_metric(sel)


@dataclass
class Candidates:
    path: Path
    sample_id: np.ndarray  # [m] object (str), candidate order
    quality: np.ndarray  # [m] float64
    attrs: dict

    def __len__(self) -> int:
        return len(self.sample_id)


def open_candidates(path: str | os.PathLike) -> h5py.File:
    """``candidates.h5`` open for reading, checked (layout version, completeness)."""
    return open_checked_h5(Path(path), "candidates file", CANDIDATES_LAYOUT_VERSION, CANDIDATES_REBUILD_HINT)


def read_candidates(path: str | os.PathLike) -> Candidates:
    """Read ids, quality and attributes of ``candidates.h5`` (not the features)."""
    path = Path(path)
    with open_candidates(path) as f:
        ids = np.array([v.decode() if isinstance(v, bytes) else v for v in f["sample_id"][()]], dtype=object)
        quality = f["quality"][()]
        attrs = {k: (v.item() if hasattr(v, "item") else v) for k, v in f.attrs.items()}
    return Candidates(path=path, sample_id=ids, quality=quality, attrs=attrs)


def n_blocks(candidates_h5: str | os.PathLike, block_size: int) -> int:
    """Blocks per side of the candidate distance matrix (blocks (i, j) with i <= j exist)."""
    return distance.block_count(len(read_candidates(candidates_h5)), block_size)


@dataclass
class Choice:
    k: int  # FPS picks
    stage: str  # one of STAGES
    order: np.ndarray  # kept samples, quality descending (ties by sample_id)
    chosen: np.ndarray  # candidates (pool rows), in quality order
    stratum: np.ndarray | None = None  # [m] routing stratum of each candidate
    quota: np.ndarray | None = None  # [S] picks per stratum


def choose(pool: Pool, score: np.ndarray, keep: np.ndarray, reason: np.ndarray, n_pool: int, sel) -> Choice:
    """k and the candidates among the ``keep`` samples; ``reason`` gets ``candidate`` / ``below_importance_cut``.

    k = round(selection_percentage · ``n_pool``), at least 1, at most the kept samples.
    """
    selection = float(sel.selection_percentage)
    importance = sel.importance_selection_percentage
    n_kept = int(keep.sum())
    if n_kept == 0:
        raise SelectFlowError(
            f"no sample of the {n_pool} in the pool passed the quality filter (method {sel.quality_method!r}); "
            "check the router data or choose another quality method"
        )
    k = max(1, round(selection * n_pool))
    if k > n_kept:
        log.warning("k=%d exceeds the %d samples that passed the quality filter; selecting all of them", k, n_kept)
        k = n_kept
    kept = np.flatnonzero(keep)
    # quality descending, ties by sample_id: the order is a function of the data, not of shard order
    order = kept[np.lexsort((pool.sample_id[kept].astype(str), -score[kept]))]
    if sel.disable_diversity:
        stage, m = "quality", k
    elif importance is not None and importance > selection:
        stage, m = "two_stage", min(n_kept, max(k, round(importance * n_pool)))
    else:
        if importance is not None:
            log.info(
                "importance_selection_percentage %g <= selection_percentage %g: one FPS stage", importance, selection
            )
        stage, m = "fps", n_kept
    choice = Choice(k=k, stage=stage, order=order, chosen=order[:m])
    if stage != "quality" and sel.routing_strata > 1:
        labels = strata_labels(
            len(order),
            sel.routing_strata,
            lambda at: sample_features(pool, order[at], sel)[0],
            lambda label: sample_features(pool, order, sel, then=label)[0],
            seed=sel.strata_seed,
        )
        # a stratum's weight: its kept samples and, with strata_weight pool, the duplicates they stand for
        weight = duplicates_of(pool.sample_id[order], reason) if sel.strata_weight == "pool" else np.ones(len(order))
        take, labels, choice.quota = stratify(labels, weight, k, m)
        choice.chosen, choice.stratum = order[take], labels[take].astype(np.int64)
    reason[order] = "below_importance_cut"
    reason[choice.chosen] = "candidate"
    return choice


def write_candidates(path: str | os.PathLike, pool: Pool, score: np.ndarray, choice: Choice, attrs: dict, sel) -> None:
    """``candidates.h5`` (atomic) for ``choice``; ``attrs`` are the counts and names it records."""
    feats, metric = sample_features(pool, choice.chosen, sel)
    with atomic_path(path, suffix=".h5") as tmp:
        with h5py.File(tmp, "w") as f:
            f.create_dataset("sample_id", data=pool.sample_id[choice.chosen].astype(object), dtype=h5py.string_dtype())
            f.create_dataset("quality", data=score[choice.chosen].astype(np.float64))
            f.create_dataset("features", data=feats)
            # each candidate's response tokens (fps_snap: length)
            f.create_dataset("response_tokens", data=np.asarray(pool.n_response_tokens)[choice.chosen].astype(np.int32))
            # each candidate's dataset, prompt coverage (fps_relevance_hold_back) and boilerplate share
            # (fps_boilerplate_cut_z), where the shards have records
            if pool.text_key is not None:
                f.create_dataset("dataset", data=pool.dataset[choice.chosen].astype(object), dtype=h5py.string_dtype())
                for name, measure in (("coverage", prompt_coverage), ("boilerplate", boilerplate_share)):
                    f.create_dataset(
                        name, data=measure(lambda: pool.rows.record_batches(choice.chosen), len(choice.chosen))
                    )
            if choice.stratum is not None:
                f.create_dataset("stratum", data=choice.stratum)
                f.create_dataset("quota", data=choice.quota)
            f.attrs.update(attrs)
            f.attrs["metric"] = metric
            f.attrs["layout_version"] = CANDIDATES_LAYOUT_VERSION
            f.attrs["complete"] = True


def restratify(candidates_h5: str | os.PathLike, out_h5: str | os.PathLike, sel, chunk: int = 65536) -> bool:
    """``candidates_h5`` with its routing strata drawn anew by ``sel.strata_seed``, into ``out_h5`` (atomic),
    without reading the pool again; False, and nothing written, where that needs the pool.

    It can where every kept sample is a candidate (stage ``fps``: the default, no
    ``importance_selection_percentage``) and each weighs 1 (``strata_weight: kept``): then the
    candidates are the kept samples in quality order, their features are those :func:`choose` clusters,
    and only the ``stratum`` and ``quota`` datasets change, as :func:`candidates_of_pool` would write them
    with that seed. ``compare.fps_draws``' draws take this path (one pool scan for all of them).
    """
    with open_candidates(candidates_h5) as f:
        stage, k, n = f.attrs["stage"], int(f.attrs["k"]), len(f["sample_id"])
    if stage != "fps" or sel.disable_diversity or sel.routing_strata <= 1 or sel.strata_weight != "kept":
        return False
    with atomic_path(out_h5, suffix=".h5") as tmp:
        shutil.copyfile(candidates_h5, tmp)
        with h5py.File(tmp, "r+") as f:
            feats = f["features"]

            def labels_of(label):
                return np.concatenate([label(feats[lo : lo + chunk]) for lo in range(0, n, chunk)])

            labels = strata_labels(
                n, sel.routing_strata, lambda rows: h5_rows(feats, rows), labels_of, seed=sel.strata_seed
            )
            take, labels, quota = stratify(labels, np.ones(n), k, n)
            if not take.all():  # stage fps takes every kept sample; anything else is not this file's pool
                raise SelectFlowError(f"{candidates_h5}: stage fps, yet not every kept sample a candidate; rebuild it")
            del f["stratum"], f["quota"]
            f.create_dataset("stratum", data=labels.astype(np.int64))
            f.create_dataset("quota", data=quota)
    return True


def feature_metric(sel) -> str:
    """The distance of ``sel``'s features: ``selection.metric`` for routing, cosine for hidden states."""
    if sel.features not in FEATURES:
        raise SelectFlowError(f"unknown selection.features {sel.features!r}; use one of {', '.join(FEATURES)}")
    return "cosine" if sel.features == "hidden" else distance.check_metric(sel.metric)


def sample_features(pool: Pool, rows: np.ndarray | None, sel, then=None) -> tuple[np.ndarray, str]:
    """Float32 [len(rows), D] grid features of pool rows ``rows`` (in order; None: all), or ``then`` of them; and
    their metric.

    The one place ``selection.features`` (``sel``: a :class:`selectflow.config.SelectionConfig`)
    turns router data into the vectors the selection compares (:func:`feature_metric` gives the
    distance): routing, the ``moe_probs`` [L, E] under ``selection.metric`` (D = L·E); hidden,
    the ``hidden`` [H] states, L2-normalised for cosine distance (D = H). The rows are read back
    from their shards one shard at a time (``pool.rows``): memory [len(rows), D] plus one shard.
    With ``then`` (features [r, D] -> array [r, ...], e.g. a stratum label) only its results are
    kept, so the features of one shard at a time are held. A SelectFlowError names the shard
    and the key to set when hidden features are asked of router data dumped without them.
    """
    metric = feature_metric(sel)
    hidden = sel.features == "hidden"
    rows = np.arange(len(pool)) if rows is None else np.asarray(rows, dtype=np.int64)

    def convert(values):
        feats = _grid_features(values, hidden, metric)
        return feats if then is None else then(feats)

    return pool.rows.vectors(rows, hidden, convert), metric


def shard_features(shard: RouterShard, rows: np.ndarray | None, sel) -> tuple[np.ndarray, str]:
    """:func:`sample_features` of rows ``rows`` (None: all) of a shard read whole."""
    metric = feature_metric(sel)
    hidden = sel.features == "hidden"
    values = shard.hidden if hidden else shard.moe_probs
    if values is None:
        raise SelectFlowError(f"the router data {NO_HIDDEN}")
    return _grid_features(values if rows is None else values[np.asarray(rows, dtype=np.int64)], hidden, metric), metric


def _grid_features(values: np.ndarray, hidden: bool, metric: str) -> np.ndarray:
    """Grid features of ``moe_probs`` [r, L, E] or, ``hidden``, of hidden states [r, H] (one layer of H values)."""
    return distance.features(values[:, None, :] if hidden else values, metric)


def target_features(router_h5: str | os.PathLike, sel) -> np.ndarray:
    """Float32 [T, D] features of the target records in router file ``router_h5``: the candidates' kind,
    through :func:`shard_features` (so ``selection.features`` applies to the targets too)."""
    return shard_features(read_router_shard(router_h5), None, sel)[0]


def quality_table(
    pool: Pool,
    quality,
    in_pool: np.ndarray,
    keep: np.ndarray,
    reason: np.ndarray,
    choice: Choice,
    similarity: np.ndarray,
):
    """``candidates_quality.tsv``'s rows: the kept samples in quality order, then the dropped ones of
    ``in_pool`` (not excluded) by id; ``similarity``: a duplicate's similarity to the copy kept (1 exact,
    else the MinHash estimate; NaN for others)."""
    import pandas as pd

    candidate = np.zeros(len(pool), dtype=bool)
    candidate[choice.chosen] = True
    dropped = np.flatnonzero(in_pool & ~keep)
    rank = np.concatenate([choice.order, dropped[np.argsort(pool.sample_id[dropped].astype(str), kind="stable")]])
    return pd.DataFrame(
        {
            "sample_id": pool.sample_id[rank],
            "dataset": pool.dataset[rank],
            "quality": quality.score[rank],
            "kept": keep[rank],
            "candidate": candidate[rank],
            "reason": reason[rank],
            "similarity": similarity[rank],
            **{name: values[rank] for name, values in quality.inputs.items()},
        }
    )


def response_tokens(f) -> np.ndarray:
    """Each candidate's response tokens int [m] of the open ``candidates.h5`` ``f`` (``fps_snap: length``)."""
    if "response_tokens" not in f:
        raise SelectFlowError(
            f"{f.filename} has no response_tokens (written before selection.fps_snap: length); "
            + CANDIDATES_REBUILD_HINT
        )
    return f["response_tokens"][()]


# what candidates.h5 holds of the records for a hold-back: its name there, what it is, the key that reads it
_RECORD_MEASURES = {
    "coverage": ("prompt coverage", "selection.fps_relevance_hold_back"),
    "boilerplate": ("boilerplate share", "selection.fps_boilerplate_cut_z"),
}


def record_measure(f, name: str) -> tuple[np.ndarray, np.ndarray]:
    """Each candidate's dataset object [m] and its measure ``name`` float64 [m] of the open ``candidates.h5``
    ``f``: ``coverage`` (:func:`~selectflow.select.quality.prompt_coverage`, ``fps_relevance_hold_back``) or
    ``boilerplate`` (:func:`~selectflow.select.quality.boilerplate_share`, ``fps_boilerplate_cut_z``)."""
    if name not in f:
        what, key = _RECORD_MEASURES[name]
        raise SelectFlowError(
            f"{f.filename} has no {what} (written before {key}, or from router data without records, whose "
            "prompts and responses cannot be read): " + CANDIDATES_REBUILD_HINT
        )
    return f["dataset"].asstr()[()].astype(object), f[name][()]


def fps_options(
    f,
    sel: SelectionConfig,
    cands: Candidates,
    device: str | None = None,
    feats: np.ndarray | None = None,
    graph: Callable[..., tuple[np.ndarray, np.ndarray]] = knn_graph,
) -> dict:
    """Start, strata and quota of the open ``candidates.h5`` ``f``, the log interval, the weights of
    ``selection.fps_weight`` and the :class:`~selectflow.select.fps.Snap` of ``selection.fps_snap``
    (its score: the density, the quality rank or minus the response tokens, :func:`response_tokens`); both
    None where no FPS picks (another ``selection.diversity``, or the quality stage), except that
    ``diversity: stratified`` gets the weights of the hold-backs (``fps_weight: lof_cut`` and the hold-back
    keys; :func:`~selectflow.select.diversity.stratified`, which draws the held back last).

    Weights: None, facility location's quality weights ``1 - rank/m`` of ``cands`` (the file's
    :func:`read_candidates`), or the density weights of its features
    (:func:`~selectflow.select.diversity.density_weight`) or their local outlier factors
    (:func:`~selectflow.select.diversity.lof_weight`), or 1 with their extreme outlier factors held back
    (:func:`~selectflow.select.diversity.lof_cut_weight`); with ``selection.fps_quality_hold_back`` the
    lowest share by quality held back on top (:func:`~selectflow.select.diversity.quality_hold_back`); likewise
    with ``fps_relevance_hold_back`` (:func:`~selectflow.select.diversity.relevance_hold_back`) and
    ``fps_boilerplate_cut_z`` (:func:`~selectflow.select.diversity.boilerplate_hold_back`).
    These weights and snapping share one
    k-NN graph of the features (the larger of ``selection.diversity_neighbors`` and
    ``fps_snap_neighbors`` neighbours; on ``device``, default ``selection.device``; approximate above
    ``selection.knn_exact_max`` candidates, :meth:`~selectflow.config.SelectionConfig.knn_probes_for`), built by
    ``graph``, called as :func:`~selectflow.select.diversity.knn_graph` (a rank of the distributed
    FPS passes :func:`selectflow.select.fps_dist.knn_graph_distributed`, each rank building its
    own rows). ``feats``: the file's features when the caller has read them
    already (else read here when needed)."""
    strata, quota = (f["stratum"][()], f["quota"][()]) if "stratum" in f else (None, None)
    # start at the best candidate of a stratum that gets picks (index 0 unless strata say otherwise)
    start = 0 if strata is None else int(np.flatnonzero(quota[strata] > 0)[0])
    weight = snap = None
    # weights and snapping act on FPS's steps: another diversity, or the quality stage's top k, reads neither; but
    # diversity stratified reads the hold-backs (lof_cut and the hold-back keys), to draw the held back last
    diversifies = cands.attrs.get("stage") != "quality"
    fps = sel.diversity == "fps" and diversifies
    held = (fps or sel.diversity == "stratified") and diversifies
    weighs = (fps and sel.fps_weight in ("density", "lof")) or (held and sel.fps_weight == "lof_cut")
    # density, lof or lof_cut weights (diversity_neighbors) and snapping (fps_snap_neighbors) read one graph, of
    # the larger size: a row's first n + 1 columns are its n nearest neighbours (sorted by distance, ties by index)
    sizes = {"weight": sel.diversity_neighbors if weighs else 0}
    sizes["snap"] = sel.fps_snap_neighbors if fps and sel.fps_snap != "none" else 0
    if max(sizes.values()):
        feats = f["features"][()] if feats is None else feats
        metric = cands.attrs["metric"]
        nbr, dist = graph(
            feats, max(sizes.values()), metric, device=device or sel.device, probes=sel.knn_probes_for(len(feats))
        )
        if sizes["weight"]:
            kk = sizes["weight"] + 1
            weight = graph_weight(
                sel.fps_weight, feats, cands.sample_id, nbr[:, :kk], dist[:, :kk], metric, sel.lof_cut_z
            )
        if sizes["snap"]:
            kk = sizes["snap"] + 1
            tokens = response_tokens(f) if sel.fps_snap == "length" else None
            snap = Snap(nbr[:, :kk], snap_score(sel.fps_snap, dist[:, :kk], cands.quality, cands.sample_id, tokens))
    if fps and sel.fps_weight == "quality":
        weight = quality_weight(cands.quality, cands.sample_id)
    if held and sel.fps_quality_hold_back > 0:
        weight = quality_hold_back(weight, cands.quality, cands.sample_id, sel.fps_quality_hold_back)
    if held and sel.fps_relevance_hold_back > 0:
        dataset, coverage = record_measure(f, "coverage")
        weight = relevance_hold_back(
            weight, cands.quality, coverage, dataset, cands.sample_id, sel.fps_relevance_hold_back
        )
    if held and sel.fps_boilerplate_cut_z is not None:
        dataset, share = record_measure(f, "boilerplate")
        weight = boilerplate_hold_back(weight, share, dataset, sel.fps_boilerplate_cut_z)
    return {
        "start": start,
        "log_interval": sel.fps_log_interval,
        "strata": strata,
        "quota": quota,
        "weight": weight,
        "snap": snap,
    }


def candidates_of_pool(
    pool: Pool,
    out_h5: str | os.PathLike,
    quality_tsv: str | os.PathLike,
    sel: SelectionConfig,
    exclude_ids: set[str] | None = None,
) -> int:
    """:func:`selectflow.stages.select.build_candidates` of a :class:`~selectflow.select.pool.Pool`; return k.

    k = round(selection_percentage · pool), at least 1, at most the kept samples. Duplicates
    are dropped first (:func:`~selectflow.select.dedup.drop_duplicates`). With
    ``routing_strata`` > 1 (and diversity on) the kept samples are split into that many
    routing strata (:mod:`selectflow.select.strata`): each stratum gets candidates (its
    quality top) and FPS picks in proportion to the pool samples it stands for. The features
    of the candidates (``selection.features``: ``moe_probs`` or ``hidden``) are read back
    shard by shard (:func:`~selectflow.select.candidates.sample_features`).
    """
    in_pool = np.ones(len(pool), dtype=bool)
    if exclude_ids:
        in_pool = ~np.isin(pool.sample_id.astype(str), np.array(sorted(exclude_ids), dtype=str))
    quality = assess(pool, sel.quality_method, sel.quality_field, sel.quality_cut, sel.quality_cut_z)
    score, keep, reason = quality.score, quality.keep & in_pool, quality.reason.copy()
    reason[~in_pool] = "excluded"
    similarity = np.full(len(pool), np.nan)
    n_dup = drop_duplicates(
        pool,
        score,
        keep,
        reason,
        similarity,
        near_threshold=sel.near_duplicate_threshold,
        system_turns=sel.dedup_system_turns,
        answer_max_samples=sel.shared_answer_max_samples,
    )
    release_heap()  # the records its pass parsed left their holes
    n_pool, n_kept = int(in_pool.sum()), int(keep.sum())
    choice = choose(pool, score, keep, reason, n_pool, sel)
    write_candidates(
        out_h5,
        pool,
        score,
        choice,
        {
            "n_pool": n_pool,
            "n_kept": n_kept,
            "k": choice.k,
            "stage": choice.stage,
            "quality_method": resolve_method(pool, sel.quality_method),
            "n_duplicates": n_dup,
        },
        sel,
    )
    write_tsv(quality_table(pool, quality, in_pool, keep, reason, choice, similarity), quality_tsv, na_rep="nan")
    n_shared = sum(isinstance(r, str) and r.startswith("same_answer_as:") for r in reason)
    log.info(
        "pool %d, kept %d (%d duplicates dropped%s), candidates %d (%s), k %d",
        n_pool,
        n_kept,
        n_dup,
        f", {n_shared} of them for an answer a better sample has" if sel.shared_answer_min_words else "",
        len(choice.chosen),
        choice.stage,
        choice.k,
    )
    return choice.k
