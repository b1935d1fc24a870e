"""Farthest point sampling (greedy max-min) over candidate features or a distance matrix.

Both modes start at candidate ``start`` (the caller passes the highest-quality one), then
repeatedly pick the candidate whose distance to its nearest earlier pick is largest.
**Ties go to the lowest candidate index** (``argmax`` returns the first maximum).
Distances are exact on the feature grid (see :mod:`selectflow.select.distance`), so both modes, any
chunk or block size, and CPU or GPU pick the same candidates in the same order.

* :func:`fps_streaming`: distances from each new pick to all N candidates are computed on
  the fly from the features [N, D] float32, in row chunks; one pass over the features per
  step and O(N) extra memory (the running min-distance vector), no N×N anywhere.
* :func:`fps_matrix`: rows of the precomputed distance matrix read from block files
  (:class:`selectflow.select.distance.BlockMatrix`).

Both return :class:`FPSResult`: picks int64 [k] and the min distance of each pick to the
earlier ones, float64 [k] (``inf`` at step 0). ``k >= N`` returns all N in FPS order.

With ``strata`` (int [N], the routing stratum of each candidate) and ``quota`` (int [S],
picks per stratum, summing to k) FPS is the same greedy max-min over all candidates, except
that a stratum whose quota is filled leaves the race: the picks keep the strata's shares,
and within and across strata each pick is still the farthest one left.

With ``weight`` (float [N], positive; ``selection.fps_weight: quality``, ``density``, ``lof`` or ``lof_cut``) each
step picks the candidate with the largest ``weight × distance to its nearest earlier pick``
(quality-, density- or outlier-factor-weighted FPS); the result's ``min_distance`` is still the plain distance
of each pick.

With ``snap`` (:class:`Snap`, ``selection.fps_snap: density``) the farthest candidate of a step
(weighted or not) is only the *nominee*: the step picks the densest candidate still in the race
among the nominee's nearest neighbours (the nominee included; densest = the smallest mean
distance to its own neighbours, ties to the lowest index), and a nominee that is not picked
leaves the race, its neighbourhood now represented by the pick (unless its stratum needs every
candidate it has left). FPS still goes where the picks are farthest apart, but it takes the
typical record there instead of the outlier itself. ``selection.fps_snap: quality`` picks the
best-ranked candidate by quality instead of the densest, ``fps_snap: length`` the one with the
longest response (ties to the lower index: the better quality), by the same rules.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from tqdm import tqdm

from selectflow.runtime.device import resolve_device
from selectflow.runtime.errors import SelectFlowError
from selectflow.runtime.oom import free_memory, is_oom, run_adaptive
from selectflow.select.distance import (
    BlockMatrix,
    compute_dtype,
    pairwise,
    squared_norms,
)

if TYPE_CHECKING:  # torch loads only when a function needs it
    import torch

log = logging.getLogger(__name__)


@dataclass
class FPSResult:
    picks: np.ndarray  # [k] int64 candidate indices, in pick order
    min_distance: np.ndarray  # [k] float64 distance to the nearest earlier pick (inf at step 0)

    def curve(self) -> pd.DataFrame:
        """Columns ``step``, ``candidate_index``, ``min_distance``."""
        return pd.DataFrame(
            {"step": np.arange(len(self.picks)), "candidate_index": self.picks, "min_distance": self.min_distance}
        )


@dataclass
class Snap:
    """The k-NN graph snapped FPS picks from (:func:`~selectflow.select.diversity.knn_graph` of the candidates)."""

    neighbors: np.ndarray  # int64 [N, kk]: each candidate's nearest candidates
    # float [N], smaller first: each candidate's mean distance to its neighbours (fps_snap density: the
    # densest), its quality rank (quality: the best) or minus its response tokens (length: the longest)
    score: np.ndarray

    def pick(self, nominee: int, open_: np.ndarray) -> int:
        """The candidate of smallest score still open (``open_`` bool [N]) among ``nominee`` and its
        neighbours; ties to the lowest index."""
        near = self.neighbors[nominee]
        near = np.append(near[open_[near]], nominee)
        best = np.lexsort((near, self.score[near]))[0]
        return int(near[best])


def fps_streaming(
    features,
    k: int,
    *,
    metric: str,
    start: int = 0,
    device: str,
    chunk: int = 1 << 20,
    log_interval: int,
    strata: np.ndarray | None = None,
    quota: np.ndarray | None = None,
    weight: np.ndarray | None = None,
    snap: Snap | None = None,
) -> FPSResult:
    """FPS over ``features`` [N, D] float32 (grid features), distances computed per step.

    ``chunk`` rows go through :func:`~selectflow.select.distance.pairwise` at a time (a chunk
    costs only its float32 output: the kernels make no [chunk, D] temporary); an OOM
    halves it and the smaller size is kept for the following steps. cosine and l2 hold the
    features in float64 (their exact dtype) so that no step converts them again.
    """
    import torch

    dev = resolve_device(device)
    feats = torch.as_tensor(np.ascontiguousarray(features, dtype=np.float32)).to(compute_dtype(metric))
    n = feats.shape[0]
    if dev.type != "cpu":
        try:
            feats = feats.to(dev)
        except Exception as exc:  # noqa: BLE001 - filtered by is_oom
            if not is_oom(exc):
                raise
            del exc
            free_memory()
            log.warning(
                "features [%d, %d] do not fit on %s; streaming them from host memory every step", *feats.shape, dev
            )
    sq = squared_norms(feats) if metric == "l2" else None
    min_dist = torch.full((n,), math.inf, dtype=torch.float32, device=dev)
    rows = {"chunk": int(chunk)}

    def update(p: int) -> None:
        point = feats[p : p + 1].to(dev)
        sizes: list[int] = []

        def part(lo: int, hi: int) -> None:
            b_sq = None if sq is None else sq[lo:hi].to(dev)
            d = pairwise(point, feats[lo:hi].to(dev), metric, b_sq=b_sq)[0]
            # in place and idempotent, so a piece retried after an OOM stays correct
            _fold(min_dist[lo:hi], d)
            sizes.append(hi - lo)

        run_adaptive(part, 0, n, rows["chunk"], what="FPS distance rows")
        rows["chunk"] = min(sizes[:-1] or sizes)

    return _greedy(_Race(min_dist, weight), k, start, update, log_interval, "streaming", strata, quota, snap)


def fps_matrix(
    matrix: BlockMatrix,
    k: int,
    *,
    log_interval: int,
    start: int = 0,
    strata: np.ndarray | None = None,
    quota: np.ndarray | None = None,
    weight: np.ndarray | None = None,
    snap: Snap | None = None,
) -> FPSResult:
    """FPS reading one row of the precomputed distance matrix per step."""
    import torch

    min_dist = torch.full((matrix.n,), math.inf, dtype=torch.float32)

    def update(p: int) -> None:
        _fold(min_dist, torch.from_numpy(matrix.row(p)))

    return _greedy(_Race(min_dist, weight), k, start, update, log_interval, "matrix", strata, quota, snap)


# On CPU the per-step vector ops go through numpy: torch would wake its OpenMP pool for
# them, and right after FAISS's pool ran that costs milliseconds per step on a busy box.
def _fold(min_dist: torch.Tensor, d: torch.Tensor) -> None:
    """``min_dist = minimum(min_dist, d)`` in place."""
    import torch

    if min_dist.device.type == "cpu":
        np.minimum(min_dist.numpy(), d.numpy(), out=min_dist.numpy())
    else:
        torch.minimum(min_dist, d, out=min_dist)


def _argmax(min_dist: torch.Tensor, weight: torch.Tensor | None = None) -> int:
    """Index of the largest entry of ``min_dist`` (times ``weight``, when given); the lowest such index on ties."""
    import torch

    if min_dist.device.type == "cpu":
        values = min_dist.numpy() if weight is None else min_dist.numpy() * weight.numpy()
        return int(np.argmax(values))
    return int(torch.argmax(min_dist if weight is None else min_dist * weight))


def weight_tensor(weight: np.ndarray | None, n: int, device) -> torch.Tensor | None:
    """``weight`` [n] as float32 on ``device``, checked (positive and finite); None stays None."""
    import torch

    if weight is None:
        return None
    weight = np.asarray(weight, dtype=np.float32)
    if weight.shape != (n,) or not (np.isfinite(weight) & (weight > 0)).all():
        raise SelectFlowError(f"FPS weights must be {n} positive finite numbers, one per candidate")
    return torch.from_numpy(weight).to(device)


class _Race:
    """The running min-distances of all N candidates in one process (the distributed one is in fps_dist)."""

    def __init__(self, min_dist: torch.Tensor, weight: np.ndarray | None = None):
        self.min_dist = min_dist
        self.n = int(min_dist.numel())
        self.weight = weight_tensor(weight, self.n, min_dist.device)

    def drop(self, index: int | np.ndarray) -> None:
        """Candidates ``index`` (global) leave the race."""
        import torch

        if not isinstance(index, (int, np.integer)):
            index = torch.from_numpy(np.asarray(index)).to(self.min_dist.device)
        self.min_dist[index] = -math.inf

    def best(self) -> tuple[int, float]:
        """The candidate farthest from the picks (weighted; lowest index on ties) and its distance."""
        p = _argmax(self.min_dist, self.weight)
        return p, float(self.min_dist[p])

    def value(self, index: int) -> float:
        """Candidate ``index``'s distance to its nearest pick."""
        return float(self.min_dist[index])


def _greedy(
    race,
    k: int,
    start: int,
    update: Callable[[int], None],
    log_interval: int,
    mode: str,
    strata: np.ndarray | None = None,
    quota: np.ndarray | None = None,
    snap: Snap | None = None,
) -> FPSResult:
    """The max-min loop shared by every mode; ``update(p)`` folds pick p into the race's min-distances;
    ``snap``: snapped FPS (the module's docstring)."""
    n = race.n
    if n == 0:
        raise SelectFlowError("farthest point sampling got no candidates")
    if int(k) < 1:
        raise SelectFlowError(f"farthest point sampling needs k >= 1, got {k}")
    if not 0 <= int(start) < n:
        raise SelectFlowError(f"FPS start index {start} is outside the {n} candidates")
    if int(log_interval) < 1:
        raise SelectFlowError(f"fps_log_interval must be >= 1, got {log_interval}")
    k = min(int(k), n)
    # every candidate has a stratum (one for all without strata) and each stratum a quota left
    group = np.zeros(n, dtype=np.int64) if strata is None else np.asarray(strata)
    left = np.array([k], dtype=np.int64) if strata is None else np.asarray(quota, dtype=np.int64).copy()
    if strata is not None:
        if group.shape != (n,) or left.sum() != k or (left > np.bincount(group, minlength=len(left))).any():
            raise SelectFlowError(
                "FPS strata and quota do not fit the candidates (quota must sum to k, each <= its stratum)"
            )
        if left[group[start]] < 1:
            raise SelectFlowError(f"FPS start index {start} lies in a stratum with quota 0")
        race.drop(np.flatnonzero(left[group] == 0))  # a stratum with quota 0 never enters the race
    if snap is not None:  # who is still in the race, and how many per stratum: a nominee may leave only if
        open_ = left[group] > 0  # its stratum can still fill its quota
        in_race = np.bincount(group[open_], minlength=len(left))
    picks = np.empty(k, dtype=np.int64)
    at = np.empty(k, dtype=np.float64)
    p, d = int(start), math.inf
    for step in tqdm(range(k), desc=f"FPS ({mode})", unit="pick", disable=None):
        picks[step], at[step] = p, d
        if step % log_interval == 0:
            log.info("pick %d/%d: candidate %d, max-min distance %.6g (FPS %s)", step, k, p, d, mode)
        if step + 1 == k:
            break
        update(p)
        # a picked candidate must never win again, even when all that remain are its duplicates
        race.drop(p)
        g = group[p]
        left[g] -= 1
        # a stratum that is full: its candidates leave the race
        full = np.flatnonzero(group == g) if left[g] == 0 else None
        if full is not None:
            race.drop(full)
        if snap is None:
            p, d = race.best()
            continue
        open_[p], in_race[g] = False, in_race[g] - 1
        if full is not None:
            open_[full], in_race[g] = False, 0
        nominee, _ = race.best()
        p = snap.pick(nominee, open_)
        if p != nominee and in_race[group[nominee]] > left[group[nominee]]:
            race.drop(nominee)
            open_[nominee], in_race[group[nominee]] = False, in_race[group[nominee]] - 1
        d = race.value(p)
    log.info("FPS %s done: %d picks of %d candidates, last max-min distance %.6g", mode, k, n, at[-1])
    return FPSResult(picks=picks, min_distance=at)
