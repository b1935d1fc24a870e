"""Routing features, the distances between them, and distance-matrix block files.

Features: :func:`features` maps ``moe_probs`` [n, L, E] float32 to float32 [n, D]:

* ``wasserstein`` (``selection.metric``'s default): per-layer CDF over experts (cumsum), flattened to D = L·E.
  The L1 distance of two such rows is the sum over layers of the 1-D Wasserstein-1
  distance between the two routing distributions (Select-MoE's distance).
* ``cosine``: flattened probabilities, L2-normalised; distance ``1 - a·b``.
* ``l2``: flattened probabilities; Euclidean distance.

Exact arithmetic: features are snapped to a grid of multiples of ``2**-q``
(:func:`grid_bits`) chosen so that every partial sum of a distance is exactly
representable in the dtype it is computed in (float32 for ``wasserstein``, float64 for
``cosine``/``l2``). A distance therefore does not depend on summation order, chunking,
kernel (FAISS, ``torch.cdist``, matmul) or device: CPU and GPU, streaming and block files
give bit-identical float32 distances. The snapping moves each feature by at most
``2**-(q+1)`` (q = 14 for D = 1024), far below the distances that FPS compares.

:func:`pairwise` gives float32 [m, k] distances. Block files ``block_{i}_{j}.h5`` (i <= j)
hold rows ``[i·B, (i+1)·B)`` × columns ``[j·B, (j+1)·B)`` of the candidate distance matrix
in dataset ``distance`` float32, with attributes ``layout_version``, ``complete``, ``i``,
``j``, ``block_size``, ``n``, ``metric``, ``rows``, ``cols``.
"""

from __future__ import annotations

import functools
import logging
import math
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

import h5py
import numpy as np

from selectflow.runtime.device import resolve_device
from selectflow.runtime.errors import CorruptFileError, SelectFlowError
from selectflow.runtime.fsutil import atomic_path
from selectflow.runtime.oom import run_adaptive
from selectflow.schema import schema_enum

if TYPE_CHECKING:  # torch loads only when a function needs it
    import torch

log = logging.getLogger(__name__)

METRICS = schema_enum("selection", "metric")
BLOCK_LAYOUT_VERSION = 1
BLOCK_REBUILD_HINT = "rule distance_block rebuilds it: delete the file and rerun snakemake"
_FEATURE_ROWS = 16384  # rows converted at a time, so features() needs no float64 copy of everything


def check_metric(metric: str) -> str:
    if metric not in METRICS:
        raise SelectFlowError(f"unknown distance metric {metric!r}; use one of {', '.join(METRICS)}")
    return metric


def grid_bits(metric: str, dim: int) -> int:
    """Bits q of the feature grid (multiples of ``2**-q``) that keep ``metric`` sums exact.

    wasserstein: |a-b| <= 1 summed over ``dim`` in float32 (24-bit significand) needs
    dim·2**q <= 2**24. l2: a·b, |a|², |b|² (each <= dim) combine in float64 (53 bits) with
    products on a 2**-2q grid: 2q + log2(4·dim) <= 53. cosine: unit vectors, |a·b| <= 1:
    2q + 1 <= 53. Never above 24, the float32 storage limit for values in [-1, 1].
    """
    check_metric(metric)
    need = math.ceil(math.log2(max(int(dim), 1)))
    if metric == "wasserstein":
        bits = 24 - need
    elif metric == "l2":
        bits = (53 - need - 2) // 2
    else:
        bits = (53 - 1) // 2
    if bits < 1:
        raise SelectFlowError(f"feature dimension {dim} is too large for exact {metric} distances")
    return min(24, bits)


def features(moe_probs: np.ndarray, metric: str) -> np.ndarray:
    """Float32 [n, L·E] grid-snapped features of ``moe_probs`` [n, L, E] for ``metric``."""
    check_metric(metric)
    probs = np.asarray(moe_probs)
    if probs.ndim != 3:
        raise SelectFlowError(f"moe_probs must be [n, L, E], got shape {list(probs.shape)}")
    n, layers, experts = probs.shape
    dim = layers * experts
    scale = 2.0 ** grid_bits(metric, dim)
    out = np.empty((n, dim), dtype=np.float32)
    for lo in range(0, n, _FEATURE_ROWS):
        x = probs[lo : lo + _FEATURE_ROWS].astype(np.float64)
        if metric == "wasserstein":
            x = np.clip(np.cumsum(x, axis=2), 0.0, 1.0).reshape(-1, dim)
        elif metric == "cosine":
            x = x.reshape(-1, dim)
            norm = np.linalg.norm(x, axis=1, keepdims=True)
            x = x / np.where(norm > 0, norm, 1.0)
        else:
            x = np.clip(x.reshape(-1, dim), 0.0, 1.0)
        out[lo : lo + len(x)] = np.rint(x * scale) / scale
    return out


def compute_dtype(metric: str) -> torch.dtype:
    """The dtype in which ``metric`` distances are exact on the feature grid."""
    import torch

    return torch.float32 if check_metric(metric) == "wasserstein" else torch.float64


def squared_norms(x: torch.Tensor) -> torch.Tensor:
    """Float64 [n] squared L2 norms of the rows of ``x`` (exact on the l2 grid)."""
    # row pieces keep the temporary small when x is large
    import torch

    return torch.cat([(piece * piece).sum(1) for piece in (p.double() for p in x.split(4096))])


def pairwise(a: torch.Tensor, b: torch.Tensor, metric: str, *, b_sq: torch.Tensor | None = None) -> torch.Tensor:
    """Float32 [m, k] distances between grid features ``a`` [m, D] and ``b`` [k, D] (same device).

    wasserstein: L1 via FAISS on CPU (about 10x faster than ``torch.cdist(p=1)`` there) and
    ``torch.cdist(p=1)`` on CUDA; both exact in float32 on the grid, hence identical.
    cosine / l2: float64 matmul (exact on the grid), rounded once to float32. ``b_sq``
    (l2 only) is :func:`squared_norms` of ``b``, for callers that stream the same rows often.
    """
    import torch

    check_metric(metric)
    if a.shape[1] != b.shape[1]:
        raise SelectFlowError(f"feature widths differ: {a.shape[1]} vs {b.shape[1]}")
    if metric == "wasserstein":
        if a.device.type == "cpu":
            a_np = np.ascontiguousarray(a.numpy(), dtype=np.float32)
            b_np = np.ascontiguousarray(b.numpy(), dtype=np.float32)
            return torch.from_numpy(_l1_cpu(a_np, b_np))
        return torch.cdist(a.float(), b.float(), p=1)
    a64, b64 = a.double(), b.double()
    dots = a64 @ b64.T
    if metric == "cosine":
        return (1.0 - dots).clamp_min_(0.0).float()
    if b_sq is None:
        b_sq = squared_norms(b64)
    squared = squared_norms(a64)[:, None] + b_sq[None, :] - 2.0 * dots
    return squared.sqrt_().float()


_FAISS_SERIAL_ROWS = 10  # FAISS's pairwise_distances runs on one thread for at most this many query rows


@functools.cache
def _pool(threads: int) -> ThreadPoolExecutor:
    return ThreadPoolExecutor(threads, thread_name_prefix="selectflow-l1")


def _l1_cpu(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Float32 [m, k] L1 distances by FAISS; few-row queries are spread over threads by rows of ``b``.

    FAISS parallelises over query rows only, so the streaming FPS step (one query against
    all N rows) would run on one core; here pieces of ``b`` go to a thread pool (FAISS
    releases the GIL), several pieces per thread so a descheduled thread delays little.
    """
    import faiss
    import torch

    threads = torch.get_num_threads()
    if len(a) > _FAISS_SERIAL_ROWS or threads == 1 or len(b) < 4096:
        return faiss.pairwise_distances(a, b, faiss.METRIC_L1)
    out = np.empty((len(a), len(b)), dtype=np.float32)
    cuts = np.linspace(0, len(b), 4 * threads + 1).astype(int)

    def piece(lo: int, hi: int) -> None:
        out[:, lo:hi] = faiss.pairwise_distances(a, b[lo:hi], faiss.METRIC_L1)

    for future in [_pool(threads).submit(piece, lo, hi) for lo, hi in zip(cuts[:-1], cuts[1:])]:
        future.result()
    return out


def seed_style_wasserstein(probs_a, probs_b) -> torch.Tensor:
    """The original's naive distance: |CDF_a - CDF_b| broadcast to [m, k, L, E], then summed.

    Kept only as the reference for tests and the benchmark: memory grows as m·k·L·E.
    """
    import torch

    cdf_a = torch.as_tensor(probs_a, dtype=torch.float32).cumsum(-1)
    cdf_b = torch.as_tensor(probs_b, dtype=torch.float32).cumsum(-1)
    return (cdf_a[:, None] - cdf_b[None]).abs().sum(dim=(-1, -2))


def block_count(n: int, block_size: int) -> int:
    """Blocks per side of the n×n matrix cut into ``block_size`` squares."""
    if block_size < 1:
        raise SelectFlowError(f"distance block size must be >= 1, got {block_size}")
    return max(1, math.ceil(n / block_size))


def block_path(block_dir: str | os.PathLike, i: int, j: int) -> Path:
    return Path(block_dir) / f"block_{i}_{j}.h5"


def _span(n: int, block_size: int, i: int) -> tuple[int, int]:
    return i * block_size, min((i + 1) * block_size, n)


def compute_block(
    features,
    i: int,
    j: int,
    block_size: int,
    out_path: str | os.PathLike,
    *,
    metric: str,
    device: str,
    sub_chunk: int = 256,
) -> None:
    """Write block (i, j), i <= j, of the distance matrix of ``features`` [n, D] to ``out_path``.

    ``features`` is any row-sliceable float32 array (numpy or an h5py dataset, read lazily).
    Rows go through the device ``sub_chunk`` at a time; an OOM halves the sub-chunk.
    """
    import torch

    check_metric(metric)
    n = int(features.shape[0])
    nb = block_count(n, block_size)
    if not (0 <= i <= j < nb):
        raise SelectFlowError(
            f"distance block ({i}, {j}) does not exist: need 0 <= i <= j < {nb} for n={n}, block_size={block_size}"
        )
    dev = resolve_device(device)
    r0, r1 = _span(n, block_size, i)
    c0, c1 = _span(n, block_size, j)
    cols = torch.from_numpy(np.asarray(features[c0:c1], dtype=np.float32)).to(dev)
    with atomic_path(out_path, suffix=".h5") as tmp:
        with h5py.File(tmp, "w") as f:
            dset = f.create_dataset("distance", shape=(r1 - r0, c1 - c0), dtype=np.float32)

            def rows(lo: int, hi: int) -> None:
                a = torch.from_numpy(np.asarray(features[lo:hi], dtype=np.float32)).to(dev)
                dset[lo - r0 : hi - r0] = pairwise(a, cols, metric).cpu().numpy()

            run_adaptive(rows, r0, r1, sub_chunk, what=f"distance block ({i}, {j}) rows")
            f.attrs.update(
                {"i": i, "j": j, "block_size": block_size, "n": n, "metric": metric, "rows": r1 - r0, "cols": c1 - c0}
            )
            f.attrs["layout_version"] = BLOCK_LAYOUT_VERSION
            f.attrs["complete"] = True
    log.info("distance block (%d, %d): [%d, %d) x [%d, %d) -> %s", i, j, r0, r1, c0, c1, out_path)


def _corrupt(path: Path, problem: str) -> CorruptFileError:
    return CorruptFileError(f"{path}: {problem}; {BLOCK_REBUILD_HINT}")


def _open_block(path: Path, expect: dict) -> h5py.File:
    """Open a block file and check its layout and attributes against ``expect``."""
    if not path.is_file():
        raise _corrupt(path, "distance block is missing")
    try:
        f = h5py.File(path, "r")
    except OSError as exc:
        raise _corrupt(path, f"not a readable HDF5 file ({exc}), truncated or corrupt") from None
    try:
        version = f.attrs.get("layout_version")
        if version != BLOCK_LAYOUT_VERSION:
            raise _corrupt(path, f"layout_version {version!r}, expected {BLOCK_LAYOUT_VERSION}")
        if not f.attrs.get("complete", False):
            raise _corrupt(path, "no completeness marker (half-written)")
        for key, want in expect.items():
            got = f.attrs.get(key)
            got = got.item() if hasattr(got, "item") else got
            if got != want:
                raise _corrupt(path, f"attribute {key}={got!r}, expected {want!r} (stale block)")
        shape = (int(f.attrs["rows"]), int(f.attrs["cols"]))
        if "distance" not in f or f["distance"].shape != shape:
            raise _corrupt(path, f"dataset 'distance' missing or not of shape {shape}")
    except BaseException:
        f.close()
        raise
    return f


def read_block(path: str | os.PathLike, **expect) -> np.ndarray:
    """Read and validate one block file; ``expect`` pins attributes (``n=``, ``metric=``...)."""
    path = Path(path)
    with _open_block(path, expect) as f:
        try:
            return f["distance"][()]
        except OSError as exc:
            raise _corrupt(path, f"cannot read its distances ({exc}), truncated") from None


class BlockMatrix:
    """Rows of the symmetric n×n distance matrix stored as upper-triangle block files.

    Row p lies in block row ``bi = p // B``: blocks (bi, j >= bi) give it as a row, blocks
    (j < bi, bi) as a column. Every file is validated once, when the matrix is opened.
    """

    def __init__(self, block_dir: str | os.PathLike, n: int, block_size: int, metric: str):
        self.block_dir = Path(block_dir)
        self.n, self.block_size, self.metric = int(n), int(block_size), metric
        self.nb = block_count(self.n, self.block_size)
        for i in range(self.nb):
            for j in range(i, self.nb):
                (r0, r1), (c0, c1) = _span(self.n, self.block_size, i), _span(self.n, self.block_size, j)
                expect = {
                    "i": i,
                    "j": j,
                    "n": self.n,
                    "block_size": self.block_size,
                    "metric": metric,
                    "rows": r1 - r0,
                    "cols": c1 - c0,
                }
                _open_block(block_path(self.block_dir, i, j), expect).close()

    def row(self, p: int) -> np.ndarray:
        """Float32 [n] distances from candidate ``p`` to every candidate."""
        bi, r = divmod(int(p), self.block_size)
        out = np.empty(self.n, dtype=np.float32)
        for j in range(self.nb):
            lo, hi = _span(self.n, self.block_size, j)
            path = block_path(self.block_dir, min(bi, j), max(bi, j))
            try:
                with h5py.File(path, "r") as f:
                    out[lo:hi] = f["distance"][r, :] if j >= bi else f["distance"][:, r]
            except OSError as exc:
                raise _corrupt(path, f"cannot read its distances ({exc})") from None
        return out
