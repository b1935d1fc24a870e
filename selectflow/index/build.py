"""Building window indexes: ``float32 [n, D]`` vectors + ``n`` sample ids → one window's files.

* :func:`build_window_index` — one window: checks the vectors and ids, plans the index
  (``ivfpq`` falls back to exact ``flat_l2`` on windows too small to train), checks the free
  disk, builds (IVF-PQ on a GPU when there is one) and writes the three files of
  :mod:`selectflow.index.layout`, each atomically, the metadata last.
* :func:`build_windows` — the build loop over many windows, one window in RAM at a time.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import time
from collections.abc import Callable, Sequence

import faiss
import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from selectflow.index.layout import (
    INDEX_TYPES,
    LAYOUT_VERSION,
    METRICS,
    WINDOW_NAME,
    WindowFiles,
)
from selectflow.index.summary import summarize_windows
from selectflow.runtime.errors import SelectFlowError
from selectflow.runtime.fsutil import atomic_open, atomic_path
from selectflow.runtime.tables import write_tsv
from selectflow.runtime.units import format_bytes

log = logging.getLogger(__name__)

_FAISS_METRIC = {"l2": faiss.METRIC_L2, "ip": faiss.METRIC_INNER_PRODUCT, "l1": faiss.METRIC_L1}
_PQ_BITS = 8


def _default_pq_m(dim: int) -> int:
    """Most sub-quantizers (<= 64) of >= 8 dimensions each: fewer dims per code trains slowly and adds little."""
    return next((m for m in (64, 32, 16, 8, 4, 2) if dim % m == 0 and dim // m >= 8), 1)


def _ivfpq_plan(n: int, dim: int, ivf_nlist: int | None, pq_m: int | None) -> tuple[int, int] | None:
    """(nlist, pq_m) for an IVF-PQ index of ``n`` vectors, or None when ``n`` is too few to train.

    FAISS wants ~39 training points per centroid, for the IVF lists and for the 256
    centroids of each PQ sub-quantizer; below that the clusters are noise.
    """
    nlist = ivf_nlist or max(1, int(4 * math.sqrt(n)))
    m = pq_m or _default_pq_m(dim)
    if dim % m:
        raise SelectFlowError(f"pq_m={m} does not divide the vector dimension {dim}; pick a divisor of {dim}")
    if n < 39 * max(nlist, 2**_PQ_BITS):
        return None
    return nlist, m


def _estimate_bytes(n: int, dim: int, ids: Sequence[str], plan: tuple[int, int] | None) -> int:
    if plan is None:
        index = n * dim * 4
    else:
        nlist, m = plan
        index = n * (m + 8) + nlist * dim * 4 + 2**_PQ_BITS * dim * 4
    ids_bytes = sum(len(s.encode()) for s in ids) + n * (len(str(n)) + 2)
    return index + ids_bytes + 64 * 1024


def _want_gpu(use_gpu) -> bool:
    has = hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0
    if use_gpu in ("auto", None):
        return has
    if use_gpu in (True, "cuda", "gpu"):
        if not has:
            raise SelectFlowError(
                "use_gpu=True but the installed faiss has no GPU support (install faiss-gpu) or sees no GPU"
            )
        return True
    if use_gpu in (False, "cpu"):
        return False
    raise SelectFlowError(f"use_gpu must be 'auto', True or False, got {use_gpu!r}")


def _make_index(vectors: np.ndarray, metric: str, plan: tuple[int, int] | None, gpu: bool) -> tuple[faiss.Index, str]:
    dim = vectors.shape[1]
    if plan is None:
        # A flat "build" is a copy of the vectors: on a GPU it would only add two transfers.
        index = faiss.IndexFlat(dim, _FAISS_METRIC[metric])
        index.add(vectors)
        return index, "cpu"
    nlist, m = plan
    index = faiss.index_factory(dim, f"IVF{nlist},PQ{m}", _FAISS_METRIC[metric])
    index.do_polysemous_training = False  # only polysemous search uses it, and it is most of the training time
    if gpu:
        try:
            res = faiss.StandardGpuResources()
            on_gpu = faiss.index_cpu_to_gpu(res, 0, index)
            on_gpu.train(vectors)
            on_gpu.add(vectors)
            return faiss.index_gpu_to_cpu(on_gpu), "gpu"
        except RuntimeError as exc:  # GPU IVF-PQ supports fewer (pq_m, dim) shapes than the CPU one
            log.warning("GPU IVF-PQ build failed (%s); building on CPU", str(exc).splitlines()[0])
    index.train(vectors)
    index.add(vectors)
    return index, "cpu"


def _window_number(files: WindowFiles, window: int | None) -> int:
    if window is not None:
        return window
    match = WINDOW_NAME.match(files.meta.stem)
    if not match:
        raise SelectFlowError(f"{files.faiss}: name it window_XXXXX.faiss or pass window=")
    return int(match.group(1))


def _checked_input(vectors, ids: Sequence, window: int, index_type: str, kind: str) -> tuple[np.ndarray, list[str]]:
    """``float32 [n, D]`` contiguous vectors and ``n`` string ids, or a :class:`SelectFlowError` naming the fault."""
    if index_type not in INDEX_TYPES:
        raise SelectFlowError(f"unknown index_type {index_type!r}; use one of {', '.join(INDEX_TYPES)}")
    if kind not in ("items", "positions"):
        raise SelectFlowError(f"kind must be 'items' or 'positions', got {kind!r}")
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    ids = [str(s) for s in ids]
    if vectors.ndim != 2 or vectors.shape[0] == 0:
        raise SelectFlowError(f"window {window}: vectors must be a non-empty [n, D] array, got shape {vectors.shape}")
    n = vectors.shape[0]
    if len(ids) != n:
        raise SelectFlowError(f"window {window}: {n} vectors but {len(ids)} sample ids")
    if len(set(ids)) != n:
        raise SelectFlowError(f"window {window}: sample ids repeat; every row needs its own id")
    bad_id = next((s for s in ids if "\t" in s or "\n" in s or "\r" in s or not s), None)
    if bad_id is not None:
        raise SelectFlowError(f"window {window}: sample id {bad_id!r} is empty or holds a tab/newline")
    finite = np.isfinite(vectors).all(axis=1)
    if not finite.all():
        row = int(np.argmin(finite))
        raise SelectFlowError(
            f"window {window}: vector of sample {ids[row]!r} (row {row}) has NaN/inf; fix the embeddings"
        )
    return vectors, ids


def _check_disk(path, need: int, min_free_bytes: int) -> None:
    """Fail before any work when the folder of ``path`` has less than ``need + min_free_bytes`` free."""
    path.parent.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(path.parent).free
    if free < need + min_free_bytes:
        raise SelectFlowError(
            f"not enough disk for {path}: the window needs ~{format_bytes(need)}"
            + (f" and {format_bytes(min_free_bytes)} must stay free" if min_free_bytes else "")
            + f", but {path.parent} has {format_bytes(free)} free; free space or move index_dir to a larger disk"
        )


def build_window_index(
    vectors: np.ndarray,
    ids: Sequence[str],
    out_faiss: str | os.PathLike,
    *,
    window: int | None = None,
    n_windows: int | None = None,
    span: tuple[int, int] | None = None,
    kind: str = "items",
    index_type: str,
    use_gpu="auto",
    ivf_nlist: int | None = None,
    pq_m: int | None = None,
    nprobe: int | None = None,
    min_free_bytes: int = 0,
    embed_seconds: float | None = None,
) -> dict:
    """Index one window's ``float32 [n, D]`` vectors; write ``.faiss``, ``.ids.tsv``, ``.json``; return the metadata.

    ``window`` defaults to the number in the file name (``window_00007.faiss`` → 7).
    ``n_windows`` (the total) lets a :class:`~selectflow.index.store.WindowStore` notice a
    missing window. ``kind`` is ``items`` (windows partition the items) or ``positions``
    (every window holds all items over a different span of positions; only per-window
    search applies). ``ivfpq`` falls back to ``flat_l2`` (with a warning) when the window is
    too small to train. Fails before any work when the disk has less than the estimated
    size plus ``min_free_bytes`` free. ``embed_seconds`` (the time the vectors took to
    compute, when known) is kept in the metadata for the report.
    """
    files = WindowFiles.beside(out_faiss)
    window = _window_number(files, window)
    vectors, ids = _checked_input(vectors, ids, window, index_type, kind)
    n, dim = vectors.shape
    plan = None
    if index_type == "ivfpq":
        plan = _ivfpq_plan(n, dim, ivf_nlist, pq_m)
        if plan is None:
            log.warning("window %d: %d vectors are too few to train IVF-PQ; using an exact flat_l2 index", window, n)
    _check_disk(files.faiss, _estimate_bytes(n, dim, ids, plan), min_free_bytes)

    t0 = time.perf_counter()
    index, built_on = _make_index(vectors, METRICS[index_type], plan, _want_gpu(use_gpu))
    build_seconds = time.perf_counter() - t0

    t0 = time.perf_counter()
    files.meta.unlink(missing_ok=True)  # the window reads as unfinished until the new metadata lands
    with atomic_path(files.faiss, suffix=".faiss") as tmp:
        faiss.write_index(index, str(tmp))
    write_tsv(pd.DataFrame({"row": np.arange(n), "sample_id": ids}), files.ids)
    meta = {
        "layout_version": LAYOUT_VERSION,
        "window": window,
        "n_windows": n_windows,
        "kind": kind,
        "span": list(span) if span is not None else None,
        "n": n,
        "dim": dim,
        "index_type": index_type if plan is not None or index_type != "ivfpq" else "flat_l2",
        "requested_index_type": index_type,
        "metric": METRICS[index_type],
        "nlist": plan[0] if plan else None,
        "pq_m": plan[1] if plan else None,
        "nprobe": (nprobe or min(plan[0], 16)) if plan else None,
        "built_on": built_on,
        "build_seconds": round(build_seconds, 6),
        "embed_seconds": None if embed_seconds is None else round(float(embed_seconds), 6),
        "write_seconds": round(time.perf_counter() - t0, 6),
        "faiss_bytes": files.faiss.stat().st_size,
        "ids_bytes": files.ids.stat().st_size,
    }
    with atomic_open(files.meta, "w", encoding="utf-8") as fh:
        json.dump(meta, fh, indent=1)
    return meta


def build_windows(
    source: Callable[[int, tuple[int, int]], tuple[np.ndarray, Sequence[str]]],
    windows: Sequence[tuple[int, int]],
    index_dir: str | os.PathLike,
    *,
    kind: str = "items",
    progress: bool = True,
    **build_kwargs,
) -> pd.DataFrame:
    """Build every window: ``source(w, span) -> (vectors, ids)``, index, write, drop; return the summary.

    Only one window's vectors are in memory at a time, so peak RAM does not grow with
    ``len(windows)`` (the loop the workflow runs as one ``index_window`` job per window).
    """
    for w, span in enumerate(tqdm(windows, desc="index windows", unit="window", disable=not progress)):
        vectors, ids = source(w, span)
        meta = build_window_index(
            vectors,
            ids,
            WindowFiles.of(index_dir, w).faiss,
            window=w,
            n_windows=len(windows),
            span=span,
            kind=kind,
            **build_kwargs,
        )
        del vectors  # before the next source() call, or two windows would be in RAM at once
        log.debug(
            "window %d: %d x %d %s in %.2fs", w, meta["n"], meta["dim"], meta["index_type"], meta["build_seconds"]
        )
    return summarize_windows(index_dir)
