"""Selection toward a target set: RDS+-style round-robin over the target records.

In: the target records' features ``targets`` [T, D] float32 and the candidates' features
``cands`` [m, D] float32, both grid features of the same kind
(:func:`selectflow.select.candidates.sample_features` and ``shard_features``, one conversion, so
whatever feature the candidates use, the targets use too), candidates in quality order (index 0 = best). Out: ``k``
candidate
indices int64 in pick order.

Round-robin (:func:`toward_target`): round after round, each target in the given order
takes its nearest candidate not yet picked, until ``k`` are picked (a round may stop part
way; when T > k the first round does, so the caller chooses the order: the selection stage
visits the targets in a seeded shuffle, not file order). Ties: of two candidates at the same
distance from a target, the one with the lower index, the higher-quality one, comes first.

Bounded memory: never a T×m matrix. Each target keeps only its ``ceil(k / T) + slack``
nearest candidates (:func:`nearest`, computed over blocks of at most ``block`` distances);
a target that finds every one of them picked by others gets its next nearest unpicked ones
computed again, twice as many each time. Memory O(T·(k/T + slack) + block).
"""

from __future__ import annotations

import logging
import math

import numpy as np

from selectflow.runtime.errors import SelectFlowError
from selectflow.select import distance

log = logging.getLogger(__name__)

SLACK = 8  # nearest candidates kept per target beyond its share ceil(k / T)
BLOCK = 1 << 24  # distances [rows, cols] computed at a time: 64 MiB of float32


def nearest(
    targets, cands, m: int, metric: str, *, excluded: np.ndarray | None = None, chunk: int = 1024, block: int = BLOCK
) -> np.ndarray:
    """Each target's ``m`` nearest candidates not ``excluded``, by (distance, index): int64 [T, m'].

    ``targets`` [T, D] and ``cands`` [n, D] are tensors on one device in
    :func:`~selectflow.select.distance.compute_dtype`; ``m' = min(m, candidates not excluded)``.
    Candidates go ``chunk`` at a time, targets as many as keep a block within ``block``
    distances. A stable sort of [best so far, next chunk] keeps the order exact: every index
    held is below the chunk's, and distances are exact on the grid.
    """
    import torch

    n = len(cands)
    free = n if excluded is None else int(n - np.count_nonzero(excluded))
    m = min(int(m), free)
    cols = max(1, min(int(chunk), n))
    rows = max(1, block // cols)
    mask = None if excluded is None else torch.as_tensor(np.asarray(excluded, dtype=bool), device=cands.device)
    out = np.empty((len(targets), m), dtype=np.int64)
    for r0 in range(0, len(targets), rows):
        t = targets[r0 : r0 + rows]
        best_d = torch.empty((len(t), 0), dtype=torch.float32, device=cands.device)
        best_i = torch.empty((len(t), 0), dtype=torch.int64, device=cands.device)
        for lo in range(0, n, cols):
            d = distance.pairwise(t, cands[lo : lo + cols], metric).to(cands.device)
            if mask is not None:
                d[:, mask[lo : lo + cols]] = math.inf
            idx = torch.arange(lo, lo + d.shape[1], device=cands.device).expand(len(t), -1)
            d, idx = torch.cat([best_d, d], 1), torch.cat([best_i, idx], 1)
            d, order = torch.sort(d, dim=1, stable=True)
            best_d, best_i = d[:, :m], torch.gather(idx, 1, order[:, :m])
        out[r0 : r0 + len(t)] = best_i.cpu().numpy()
    return out


def toward_target(
    targets: np.ndarray,
    cands: np.ndarray,
    k: int,
    metric: str,
    *,
    slack: int = SLACK,
    chunk: int = 1024,
    device: str = "cpu",
    block: int = BLOCK,
) -> np.ndarray:
    """Round-robin picks int64 [k] of the candidates nearest to the targets (module docstring).

    ``device`` (``auto``, ``cpu``, ``cuda``) is where the distances run; the picks are the
    same on any, the distances being exact.
    """
    import torch

    from selectflow.runtime.device import resolve_device

    n, n_targets = len(cands), len(targets)
    if n_targets == 0:
        raise SelectFlowError("selection toward a target got no target records; check selection.target")
    if n == 0:
        raise SelectFlowError("selection toward a target got no candidates")
    if not 1 <= int(k) <= n:
        raise SelectFlowError(f"cannot select {k} of {n} candidates: k must be in [1, {n}]")
    dev = resolve_device(device)
    dtype = distance.compute_dtype(metric)
    x = torch.as_tensor(np.ascontiguousarray(cands, dtype=np.float32)).to(dtype).to(dev)
    t = torch.as_tensor(np.ascontiguousarray(targets, dtype=np.float32)).to(dtype).to(dev)
    lists = list(nearest(t, x, math.ceil(k / n_targets) + int(slack), metric, chunk=chunk, block=block))
    pos = np.zeros(n_targets, dtype=np.int64)
    picked = np.zeros(n, dtype=bool)
    picks: list[int] = []
    refills = 0
    while len(picks) < k:
        for i in range(n_targets):
            if len(picks) == k:
                break
            row = lists[i]
            while pos[i] < len(row) and picked[row[pos[i]]]:
                pos[i] += 1
            if pos[i] == len(row):  # all of its nearest taken by other targets: its next ones
                lists[i] = row = nearest(
                    t[i : i + 1], x, 2 * max(len(row), 1), metric, excluded=picked, chunk=chunk, block=block
                )[0]
                pos[i] = 0
                refills += 1
            j = int(row[pos[i]])
            picked[j] = True
            picks.append(j)
            pos[i] += 1
    log.info(
        "toward target: %d picks for %d targets from %d candidates (%d lists recomputed)", k, n_targets, n, refills
    )
    return np.asarray(picks, dtype=np.int64)
