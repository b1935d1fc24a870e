"""Farthest point sampling across W processes (ranks), exact: the same picks as one process.

The candidate rows are cut into W contiguous slices, rank r holding rows
``[r·N/W, (r+1)·N/W)`` (:func:`row_range`) and their running min-distances. Each step:

1. the owner of the new pick broadcasts its feature row to every rank;
2. each rank folds the distances from that row to its own rows into its minima
   (:func:`selectflow.select.distance.pairwise`, in row chunks, OOM-adaptive);
3. each rank takes its local farthest candidate (value, global index) and an all-gather
   picks the global one: the largest value, **ties to the lowest index**, as
   :func:`selectflow.select.fps.fps_streaming` does.

Distances are exact on the feature grid (:mod:`selectflow.select.distance`), so a rank's
distances are bit-identical to the single process's whatever the slice: the picks and the
curve are the same for any W. Per step the ranks exchange one feature row (D values) and
W (value, index) pairs; each rank reads the features once and holds N/W rows.

The caller starts the ranks and the process group (``torch.distributed``: ``nccl`` on GPUs,
``gloo`` on CPU); :func:`fps_distributed` runs inside it on every rank and returns the
same :class:`~selectflow.select.fps.FPSResult` on each. Routing strata work as in one
process: ``strata`` [N] and ``quota`` are small and every rank holds them whole. So does snapped FPS's
k-NN graph (:class:`~selectflow.select.fps.Snap`, [N, n_neighbors + 1]: :func:`knn_graph_distributed`
builds it, each rank its own rows); the snapped pick's distance comes from the rank that holds it.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Mapping

import numpy as np

from selectflow.runtime.device import resolve_device
from selectflow.runtime.oom import run_adaptive
from selectflow.select.distance import compute_dtype, pairwise, squared_norms
from selectflow.select.diversity import knn_graph
from selectflow.select.fps import FPSResult, Snap, _argmax, _fold, _greedy, weight_tensor

log = logging.getLogger(__name__)


def row_range(n: int, world: int, rank: int) -> tuple[int, int]:
    """Rows ``[lo, hi)`` of ``n`` that rank ``rank`` of ``world`` holds (contiguous, balanced)."""
    return rank * n // world, (rank + 1) * n // world


def backend_for(device: str, world: int) -> str:
    """``nccl`` when ``device`` resolves to CUDA with at least ``world`` GPUs visible, else ``gloo`` (CPU ranks)."""
    import torch

    dev = resolve_device(device)
    return "nccl" if dev.type == "cuda" and torch.cuda.device_count() >= world else "gloo"


def rank_device(backend: str, local_rank: int):
    """The device a rank computes on: its own GPU under ``nccl``, the CPU under ``gloo``."""
    import torch

    if backend == "nccl":
        torch.cuda.set_device(local_rank)
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


# the thread counts Snakemake sets to a job's threads; torch takes MKL_NUM_THREADS over OMP_NUM_THREADS
THREAD_VARS = (
    "OMP_NUM_THREADS",
    "MKL_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "GOTO_NUM_THREADS",
    "VECLIB_MAXIMUM_THREADS",
    "NUMEXPR_NUM_THREADS",
)


def rank_thread_env(environ: Mapping[str, str], world: int) -> dict[str, str]:
    """:data:`THREAD_VARS` for each of ``world`` ranks that share one job's CPU threads.

    The job's threads are ``environ``'s ``OMP_NUM_THREADS`` (under Snakemake the rule's
    threads), else the CPUs this process may run on; each rank gets an equal part, at least one.
    """
    job = int(environ.get("OMP_NUM_THREADS") or len(os.sched_getaffinity(0)))
    return dict.fromkeys(THREAD_VARS, str(max(1, job // world)))


def knn_graph_distributed(
    feats: np.ndarray, n_neighbors: int, metric: str, device: str = "cpu", probes: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`~selectflow.select.diversity.knn_graph` of all rows of ``feats`` on every rank of the group,
    each rank computing its own rows (:func:`row_range`) against all of them and an all-gather joining
    them: the same graph as one process, at 1/W of its distances per rank (``probes``: approximate, each
    rank building the same seeded index and searching its own rows)."""
    import torch
    import torch.distributed as dist

    world, rank = dist.get_world_size(), dist.get_rank()
    parts = [row_range(len(feats), world, r) for r in range(world)]
    lo, hi = parts[rank]
    comm = torch.device(device) if dist.get_backend() == "nccl" else torch.device("cpu")
    nbr, far = knn_graph(feats, n_neighbors, metric, device=device, rows=(lo, hi), probes=probes)
    joined = []
    for mine in (nbr, far):  # int64 indices, float32 distances: each gathered in its own dtype
        local = torch.zeros((max(b - a for a, b in parts), mine.shape[1]), dtype=torch.from_numpy(mine).dtype)
        local[: hi - lo] = torch.from_numpy(mine)
        local = local.to(comm)
        everyone = [torch.empty_like(local) for _ in range(world)]
        dist.all_gather(everyone, local)
        joined.append(np.concatenate([part[: b - a].cpu().numpy() for part, (a, b) in zip(everyone, parts)]))
    return joined[0], joined[1]


class _ShardedRace:
    """The min-distances of this rank's rows; the global farthest candidate by an all-gather."""

    def __init__(self, min_dist, lo: int, n: int, comm, weight=None):
        self.min_dist, self.lo, self.n, self.comm = min_dist, lo, n, comm
        self.weight = weight_tensor(weight, int(min_dist.numel()), min_dist.device)  # this rank's rows

    def drop(self, index) -> None:
        import torch

        local = np.atleast_1d(np.asarray(index, dtype=np.int64)) - self.lo
        local = local[(local >= 0) & (local < self.min_dist.numel())]
        if len(local):
            self.min_dist[torch.from_numpy(local).to(self.min_dist.device)] = -math.inf

    def best(self) -> tuple[int, float]:
        import torch
        import torch.distributed as dist

        if self.min_dist.numel():
            p = _argmax(self.min_dist, self.weight)
            d = float(self.min_dist[p])
            # the score as _argmax compares it (a float32 product, on the rank's device), so the ranks rank as one
            # process would
            score = d if self.weight is None else float(self.min_dist[p] * self.weight[p])
            mine = [score, float(self.lo + p), d]
        else:  # an empty slice never wins: it loses every tie by its index
            mine = [-math.inf, float(self.n), -math.inf]
        # float64 holds the float32 distance and any index below 2**53 exactly
        local = torch.tensor(mine, dtype=torch.float64, device=self.comm)
        everyone = [torch.empty_like(local) for _ in range(dist.get_world_size())]
        dist.all_gather(everyone, local)
        rows = torch.stack(everyone).cpu().numpy()  # [score, index, distance] of each rank's best
        tied = rows[rows[:, 0] == rows[:, 0].max()]
        winner = tied[np.argmin(tied[:, 1])]  # the lowest index of the best score
        return int(winner[1]), float(winner[2])

    def value(self, index: int) -> float:
        """Candidate ``index``'s distance to its nearest pick, from the rank that holds it."""
        import torch
        import torch.distributed as dist

        local = int(index) - self.lo
        mine = float(self.min_dist[local]) if 0 <= local < self.min_dist.numel() else -math.inf
        value = torch.tensor([mine], dtype=torch.float64, device=self.comm)
        dist.all_reduce(value, op=dist.ReduceOp.MAX)
        return float(value[0])


def fps_distributed(
    features,
    k: int,
    *,
    metric: str,
    start: int = 0,
    device=None,
    chunk: int = 1 << 20,
    log_interval: int,
    strata: np.ndarray | None = None,
    quota: np.ndarray | None = None,
    weight: np.ndarray | None = None,
    snap: Snap | None = None,
) -> FPSResult:
    """FPS over ``features`` [N, D] (any row-sliceable array: numpy, h5py dataset) on every rank of the group.

    Each rank reads only its rows (:func:`row_range`) and computes on ``device`` (a
    ``torch.device``; default :func:`rank_device` of the group's backend). Collectives run
    on the CPU under gloo and on the rank's GPU under nccl. Same arguments and result as
    :func:`selectflow.select.fps.fps_streaming`.
    """
    import torch
    import torch.distributed as dist

    world, rank = dist.get_world_size(), dist.get_rank()
    backend = dist.get_backend()
    dev = (
        device
        if device is not None
        else rank_device(backend, int(torch.cuda.current_device()) if backend == "nccl" else 0)
    )
    comm = dev if backend == "nccl" else torch.device("cpu")
    n, dim = int(features.shape[0]), int(features.shape[1])
    lo, hi = row_range(n, world, rank)
    bounds = np.array([row_range(n, world, r)[0] for r in range(world)] + [n])
    feats = torch.from_numpy(np.ascontiguousarray(features[lo:hi], dtype=np.float32)).to(compute_dtype(metric)).to(dev)
    sq = squared_norms(feats) if metric == "l2" else None
    min_dist = torch.full((hi - lo,), math.inf, dtype=torch.float32, device=dev)
    row = torch.empty(dim, dtype=feats.dtype, device=comm)
    rows = {"chunk": int(chunk)}
    log.info(
        "rank %d/%d (%s, %s): candidate rows [%d, %d) of %d, %d CPU threads",
        rank,
        world,
        backend,
        dev,
        lo,
        hi,
        n,
        torch.get_num_threads(),
    )

    def update(p: int) -> None:
        owner = int(np.searchsorted(bounds, p, side="right") - 1)
        if owner == rank:
            row.copy_(feats[p - lo])
        dist.broadcast(row, src=owner)
        point = row.to(dev)[None]
        sizes: list[int] = []

        def part(a: int, b: int) -> None:
            d = pairwise(point, feats[a:b], metric, b_sq=None if sq is None else sq[a:b])[0]
            _fold(min_dist[a:b], d)  # in place and idempotent: a piece retried after an OOM stays correct
            sizes.append(b - a)

        if hi > lo:
            run_adaptive(part, 0, hi - lo, rows["chunk"], what="FPS distance rows")
            rows["chunk"] = min(sizes[:-1] or sizes)

    race = _ShardedRace(min_dist, lo, n, comm, None if weight is None else np.asarray(weight)[lo:hi])
    return _greedy(race, k, start, update, log_interval, f"{world} ranks", strata, quota, snap)
