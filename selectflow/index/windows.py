"""Windows: how a pool (of items, or of sequence positions) is cut into independently indexed parts.

* :func:`item_windows` → ``[(start, stop), ...]`` consecutive item ranges; each window
  is its own FAISS index and together they cover every item once.
* :func:`sequence_windows` → ``[(start, stop), ...]`` position ranges of one width over a
  sequence axis, ``stride`` apart (``stride < window_size`` overlaps neighbours).
* :func:`read_sequence_window` → ``float32 [items, D]``: one position window of an HDF5
  array ``[items, positions]`` or ``[items, positions, features]``, each item's slice
  flattened (``D = (stop - start) * features``).
"""

from __future__ import annotations

import os
from pathlib import Path

import h5py
import numpy as np

from selectflow.runtime.errors import SelectFlowError


def item_windows(n_items: int, window_size: int) -> list[tuple[int, int]]:
    """Split ``[0, n_items)`` into consecutive ranges of ``window_size``; the last one may be shorter."""
    if n_items < 0:
        raise SelectFlowError(f"n_items must be >= 0, got {n_items}")
    if window_size < 1:
        raise SelectFlowError(f"window_size must be >= 1, got {window_size}")
    return [(start, min(start + window_size, n_items)) for start in range(0, n_items, window_size)]


def sequence_windows(n_positions: int, window_size: int, stride: int) -> list[tuple[int, int]]:
    """Windows of exactly ``window_size`` positions, starting every ``stride`` positions.

    The tail: when the last regular window stops short of ``n_positions``, one more window
    is added that ends at ``n_positions`` (it starts at ``n_positions - window_size`` and so
    overlaps its neighbour more than ``stride`` says). Every position is covered and every
    window has the same width, so all windows flatten to vectors of one dimension. A
    sequence shorter than ``window_size`` is one window ``(0, n_positions)``.
    """
    if n_positions < 1:
        raise SelectFlowError(f"n_positions must be >= 1, got {n_positions}")
    if window_size < 1 or stride < 1:
        raise SelectFlowError(f"window_size and stride must be >= 1, got window_size={window_size}, stride={stride}")
    if stride > window_size:
        raise SelectFlowError(
            f"stride {stride} > window_size {window_size} would skip positions between windows; "
            "use stride <= window_size"
        )
    if n_positions <= window_size:
        return [(0, n_positions)]
    out = [(start, start + window_size) for start in range(0, n_positions - window_size + 1, stride)]
    if out[-1][1] < n_positions:
        out.append((n_positions - window_size, n_positions))
    return out


def read_sequence_window(h5_path: str | os.PathLike, dataset_name: str, start: int, stop: int) -> np.ndarray:
    """Read positions ``[start, stop)`` of every item of ``h5_path[dataset_name]`` as ``float32 [items, D]``.

    Only the window's hyperslab is read from disk, never the whole array.
    """
    path = Path(h5_path)
    if not path.is_file():
        raise SelectFlowError(f"sequence file {path} does not exist; check the path in the config")
    with h5py.File(path, "r") as f:
        if dataset_name not in f:
            raise SelectFlowError(f"{path} has no dataset '{dataset_name}' (it has {sorted(f.keys())})")
        ds = f[dataset_name]
        if ds.ndim not in (2, 3):
            raise SelectFlowError(
                f"{path}:{dataset_name} has shape {ds.shape}; expected [items, positions] or "
                "[items, positions, features]"
            )
        if not 0 <= start < stop <= ds.shape[1]:
            raise SelectFlowError(
                f"window [{start}, {stop}) is outside the {ds.shape[1]} positions of {path}:{dataset_name}"
            )
        block = ds[:, start:stop]
    return np.ascontiguousarray(block.reshape(block.shape[0], -1), dtype=np.float32)
