"""Per-window FAISS indexes on disk, opened only when a window is searched.

One window = one index file plus two small files beside it (``index_dir/``)::

    window_00003.faiss     the FAISS index (rows 0..n-1 of the window)
    window_00003.ids.tsv   row → sample_id (columns ``row``, ``sample_id``)
    window_00003.json      metadata, written last: layout_version, window, n_windows, kind
                           ("items" | "positions"), span, n, dim, index_type, metric,
                           built_on, build_seconds, file sizes (a window without it is
                           unfinished)

* :func:`build_window_index` — ``float32 [n, D]`` vectors + ``n`` ids → the three files,
  each written atomically, after a free-disk check.
* :class:`WindowStore` — searches windows, holding at most ``max_open`` indexes (or
  ``ram_budget_bytes``) open, least recently used closed first. Nothing else is kept in
  RAM but the small metadata, which is what lets hundreds of windows run in the memory of a
  few (the alternative, all embeddings and indexes in RAM, grows with the window count).
* :func:`build_windows` — the build loop over many windows, one window in RAM at a time.
* :func:`summarize_windows` — per-window build time, disk and RAM → table / TSV / log.

Distances are FAISS's for the index metric: **squared** L2 (``flat_l2``, ``ivfpq``), L1
(``flat_l1``) or inner product (``flat_ip``, larger is nearer). For the flat types a
search is exact and deterministic: results are ordered by (distance, window, row) — i.e.
by global row for item windows — so ties between duplicate vectors always resolve the
same way, and :meth:`WindowStore.search_all` returns exactly what one flat index over all
windows returns under the same rule.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import re
import shutil
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import faiss
import numpy as np
import pandas as pd
import psutil
from tqdm.auto import tqdm

from selectflow.runtime.errors import CorruptFileError, SelectFlowError
from selectflow.runtime.fsutil import atomic_open, atomic_path

log = logging.getLogger(__name__)

LAYOUT_VERSION = 1
REBUILD_HINT = "rule index_window rebuilds it (delete the window's files and rerun snakemake)"
INDEX_TYPES = ("flat_l2", "flat_ip", "flat_l1", "ivfpq")
_METRICS = {"flat_l2": "l2", "flat_ip": "ip", "flat_l1": "l1", "ivfpq": "l2"}
_FAISS_METRIC = {"l2": faiss.METRIC_L2, "ip": faiss.METRIC_INNER_PRODUCT, "l1": faiss.METRIC_L1}
_PQ_BITS = 8
_NAME = re.compile(r"^window_(\d+)$")


def window_name(window: int) -> str:
    return f"window_{window:05d}"


@dataclass(frozen=True)
class WindowFiles:
    faiss: Path
    ids: Path
    meta: Path

    @classmethod
    def beside(cls, faiss_path: str | os.PathLike) -> WindowFiles:
        """The ids and metadata paths that go with ``…/window_XXXXX.faiss``."""
        p = Path(faiss_path)
        stem = p.name[: -len(".faiss")] if p.name.endswith(".faiss") else p.name
        return cls(p, p.with_name(f"{stem}.ids.tsv"), p.with_name(f"{stem}.json"))

    @classmethod
    def of(cls, index_dir: str | os.PathLike, window: int) -> WindowFiles:
        return cls.beside(Path(index_dir) / f"{window_name(window)}.faiss")


def larger_is_nearer(metric: str) -> bool:
    return metric == "ip"


def _fmt_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    raise AssertionError("unreachable")


@contextlib.contextmanager
def _direct_kernel():
    """Make FAISS compute every (query, item) distance with its per-pair kernel.

    Once queries x dim reaches ``distance_compute_blas_threshold`` (128000 in FAISS 1.15)
    FAISS switches to BLAS (``|x|² + |q|² - 2 x·q``), whose rounding depends on where an
    item sits in the GEMM tiling: the same pair then gets a different float32 distance in
    a window index than in one big index (measured up to 1e-4), and duplicate vectors stop
    tying. The per-pair kernel gives each pair one value everywhere; on such batches it is
    2-3x slower (bench/bench_windows.py). The setting is process-global, hence restored.
    """
    old = faiss.cvar.distance_compute_blas_threshold
    faiss.cvar.distance_compute_blas_threshold = 2**30
    try:
        yield
    finally:
        faiss.cvar.distance_compute_blas_threshold = old


def _sort_rows(dist: np.ndarray, rows: np.ndarray, larger_better: bool) -> tuple[np.ndarray, np.ndarray]:
    """Order each query's hits by (distance, row); missing hits (row -1) go last."""
    key = np.where(rows < 0, np.inf, -dist if larger_better else dist)
    tie = np.where(rows < 0, np.iinfo(np.int64).max, rows)
    order = np.lexsort((tie, key), axis=-1)
    return np.take_along_axis(dist, order, -1), np.take_along_axis(rows, order, -1)


def exact_top_k(search: Callable, n: int, queries: np.ndarray, k: int, larger_better: bool):
    """Top ``k <= n`` of ``n`` items by (distance, row) from ``search(x, kk) -> (D, I)`` (FAISS order).

    FAISS returns the right distances but an arbitrary subset of items tied at the k-th
    distance. Asking for ``k + 1`` shows whether the tie may go on past ``k``; for those
    queries the request doubles until the tie ends (or all ``n`` items are in), so the
    ``k`` smallest rows among tied items are always the ones kept.
    """
    q = len(queries)
    out_d = np.empty((q, k), dtype=np.float32)
    out_i = np.empty((q, k), dtype=np.int64)
    todo = np.arange(q)
    kk = min(k + 1, n)
    while todo.size:
        dist, rows = search(queries[todo], kk)
        more = (dist[:, k - 1] == dist[:, kk - 1]) if kk < n and kk > k else np.zeros(len(todo), dtype=bool)
        done = todo[~more]
        d_sorted, i_sorted = _sort_rows(dist[~more], rows[~more], larger_better)
        out_d[done], out_i[done] = d_sorted[:, :k], i_sorted[:, :k]
        todo = todo[more]
        kk = min(2 * kk, n)
    return out_d, out_i


# ----------------------------------------------------------------------------- build


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


def build_window_index(
    vectors: np.ndarray,
    ids: Sequence[str],
    out_faiss: str | os.PathLike,
    *,
    window: int | None = None,
    n_windows: int | None = None,
    span: tuple[int, int] | None = None,
    kind: str = "items",
    index_type: str = "flat_l2",
    use_gpu="auto",
    ivf_nlist: int | None = None,
    pq_m: int | None = None,
    nprobe: int | None = None,
    min_free_bytes: int = 0,
    embed_seconds: float | None = None,
) -> dict:
    """Index one window's ``float32 [n, D]`` vectors; write ``.faiss``, ``.ids.tsv``, ``.json``; return the metadata.

    ``window`` defaults to the number in the file name (``window_00007.faiss`` → 7).
    ``n_windows`` (the total) lets a :class:`WindowStore` notice a missing window.
    ``kind`` is ``items`` (windows partition the items) or ``positions`` (every window
    holds all items over a different span of positions; only per-window search applies).
    ``ivfpq`` falls back to ``flat_l2`` (with a warning) when the window is too small to
    train. Fails before any work when the disk has less than the estimated size plus
    ``min_free_bytes`` free. ``embed_seconds`` (the time the vectors took to compute, when
    known) is kept in the metadata for the report.
    """
    files = WindowFiles.beside(out_faiss)
    if window is None:
        match = _NAME.match(files.meta.stem)
        if not match:
            raise SelectFlowError(f"{out_faiss}: name it window_XXXXX.faiss or pass window=")
        window = int(match.group(1))
    if index_type not in INDEX_TYPES:
        raise SelectFlowError(f"unknown index_type {index_type!r}; use one of {', '.join(INDEX_TYPES)}")
    if kind not in ("items", "positions"):
        raise SelectFlowError(f"kind must be 'items' or 'positions', got {kind!r}")
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    ids = [str(s) for s in ids]
    if vectors.ndim != 2 or vectors.shape[0] == 0:
        raise SelectFlowError(f"window {window}: vectors must be a non-empty [n, D] array, got shape {vectors.shape}")
    n, dim = vectors.shape
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

    metric = _METRICS[index_type]
    plan = None
    if index_type == "ivfpq":
        plan = _ivfpq_plan(n, dim, ivf_nlist, pq_m)
        if plan is None:
            log.warning("window %d: %d vectors are too few to train IVF-PQ; using an exact flat_l2 index", window, n)
    effective = index_type if plan is not None or index_type != "ivfpq" else "flat_l2"

    need = _estimate_bytes(n, dim, ids, plan)
    files.faiss.parent.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(files.faiss.parent).free
    if free < need + min_free_bytes:
        raise SelectFlowError(
            f"not enough disk for {files.faiss}: the window needs ~{_fmt_bytes(need)}"
            + (f" and {_fmt_bytes(min_free_bytes)} must stay free" if min_free_bytes else "")
            + f", but {files.faiss.parent} has {_fmt_bytes(free)} free; free space or move index_dir to a larger disk"
        )

    t0 = time.perf_counter()
    index, built_on = _make_index(vectors, metric, plan, _want_gpu(use_gpu))
    build_seconds = time.perf_counter() - t0

    t0 = time.perf_counter()
    files.meta.unlink(missing_ok=True)  # the window reads as unfinished until the new metadata lands
    with atomic_path(files.faiss, suffix=".faiss") as tmp:
        faiss.write_index(index, str(tmp))
    with atomic_open(files.ids, "w", encoding="utf-8", newline="") as fh:
        pd.DataFrame({"row": np.arange(n), "sample_id": ids}).to_csv(fh, sep="\t", index=False)
    meta = {
        "layout_version": LAYOUT_VERSION,
        "window": window,
        "n_windows": n_windows,
        "kind": kind,
        "span": list(span) if span is not None else None,
        "n": n,
        "dim": dim,
        "index_type": effective,
        "requested_index_type": index_type,
        "metric": metric,
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


# ----------------------------------------------------------------------------- store


def _read_meta(path: Path) -> dict:
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise CorruptFileError(f"window metadata {path} is unreadable ({exc}); {REBUILD_HINT}") from None
    if meta.get("layout_version") != LAYOUT_VERSION:
        raise CorruptFileError(
            f"{path}: layout_version {meta.get('layout_version')!r}, expected {LAYOUT_VERSION}; {REBUILD_HINT}"
        )
    return meta


@dataclass
class _OpenWindow:
    index: faiss.Index
    ids: np.ndarray  # [n] object (str)
    ram_bytes: int
    mmap: bool


class WindowStore:
    """Search per-window indexes in ``index_dir``, opening each only when it is searched.

    At most ``max_open`` windows are open at once, and (when ``ram_budget_bytes`` is set)
    their estimated RAM stays under the budget; the least recently used window is closed
    first. Flat indexes are memory-mapped where the installed FAISS can (their pages are
    file-backed, so the OS can drop them under pressure); the RAM estimate of an open
    window is its file size plus its ids, an upper bound either way.

    The expected window count is ``n_windows`` or the ``n_windows`` recorded by the build;
    a window whose files are absent raises :class:`SelectFlowError` naming the file.

    ``exact=False`` lets FAISS use BLAS for large query batches (queries x dim >= 128000):
    2-3x faster there, but a distance may then differ in its last bits between a window
    index and one big index, so merged results can differ from a flat index at near-ties.
    """

    def __init__(
        self,
        index_dir: str | os.PathLike,
        *,
        max_open: int = 4,
        ram_budget_bytes: int | None = None,
        n_windows: int | None = None,
        nprobe: int | None = None,
        exact: bool = True,
    ):
        if max_open < 1:
            raise SelectFlowError(f"max_open must be >= 1, got {max_open}")
        self.index_dir = Path(index_dir)
        if not self.index_dir.is_dir():
            raise SelectFlowError(f"index folder {self.index_dir} does not exist; rule index_window builds it")
        self.max_open = max_open
        self.ram_budget_bytes = ram_budget_bytes
        self.nprobe = nprobe
        self.exact = exact
        found = {}
        for path in self.index_dir.glob("window_*.json"):
            match = _NAME.match(path.stem)
            if match:
                found[int(match.group(1))] = _read_meta(path)
        recorded = {m["n_windows"] for m in found.values() if m.get("n_windows")}
        if len(recorded) > 1:
            raise SelectFlowError(
                f"windows in {self.index_dir} were built for different window counts {sorted(recorded)}; "
                "delete the folder and rebuild all windows"
            )
        expected = n_windows or (recorded.pop() if recorded else (max(found) + 1 if found else 0))
        if expected == 0:
            raise SelectFlowError(
                f"no window indexes (window_*.json) in {self.index_dir}; rule index_window builds them"
            )
        missing = []
        for w in range(expected):
            files = WindowFiles.of(self.index_dir, w)
            if w not in found:
                missing.append(files.faiss if not files.faiss.exists() else files.meta)
                continue
            missing.extend(p for p in (files.faiss, files.ids) if not p.exists())
        if missing:
            names = ", ".join(str(p) for p in missing[:5]) + (
                f" and {len(missing) - 5} more" if len(missing) > 5 else ""
            )
            raise SelectFlowError(
                f"{len(missing)} window index file(s) missing in {self.index_dir} (expected {expected} windows): "
                f"{names}; {REBUILD_HINT}"
            )
        self.meta = [found[w] for w in range(expected)]
        self._open: OrderedDict[int, _OpenWindow] = OrderedDict()
        self.loads = 0
        self.hits = 0
        self.evictions = 0

    def __len__(self) -> int:
        return len(self.meta)

    # -- opening and eviction

    def _read_index(self, w: int, path: Path) -> tuple[faiss.Index, bool]:
        """The index, memory-mapped when this FAISS can map its type (flag absent or refused: read into RAM)."""
        ivf = self.meta[w]["index_type"] == "ivfpq"
        mmap_flag = faiss.IO_FLAG_MMAP if ivf else getattr(faiss, "IO_FLAG_MMAP_IFC", 0)
        if mmap_flag:
            try:
                return faiss.read_index(str(path), mmap_flag | faiss.IO_FLAG_READ_ONLY), True
            except RuntimeError:
                pass
        try:
            return faiss.read_index(str(path)), False
        except RuntimeError as exc:
            raise CorruptFileError(
                f"{path} is not a readable FAISS index ({str(exc).splitlines()[0]}); {REBUILD_HINT}"
            ) from None

    def _window(self, w: int) -> _OpenWindow:
        if not 0 <= w < len(self.meta):
            raise SelectFlowError(f"window {w} does not exist; {self.index_dir} holds windows 0..{len(self.meta) - 1}")
        if w in self._open:
            self._open.move_to_end(w)
            self.hits += 1
            return self._open[w]
        files = WindowFiles.of(self.index_dir, w)
        for path in (files.faiss, files.ids):
            if not path.is_file():
                raise SelectFlowError(
                    f"window index file {path} is missing (window {w} of {len(self.meta)}); {REBUILD_HINT}"
                )
        meta = self.meta[w]
        index, mmap = self._read_index(w, files.faiss)
        table = pd.read_csv(files.ids, sep="\t", dtype={"sample_id": str}, keep_default_na=False, na_filter=False)
        if list(table.columns) != ["row", "sample_id"] or not np.array_equal(table["row"], np.arange(len(table))):
            raise CorruptFileError(f"{files.ids}: expected columns row, sample_id with rows 0..n-1; {REBUILD_HINT}")
        if not index.ntotal == len(table) == meta["n"] or index.d != meta["dim"]:
            raise CorruptFileError(
                f"window {w}: index holds {index.ntotal} x {index.d}, ids file {len(table)} rows, metadata "
                f"{meta['n']} x {meta['dim']}; the files come from different builds; {REBUILD_HINT}"
            )
        if meta["index_type"] == "ivfpq":
            faiss.extract_index_ivf(index).nprobe = self.nprobe or meta["nprobe"]
        ids = table["sample_id"].to_numpy(dtype=object)
        ram = files.faiss.stat().st_size + int(sum(len(s) for s in ids)) + 56 * len(ids)
        entry = _OpenWindow(index, ids, ram, mmap)
        self._open[w] = entry
        self.loads += 1
        self._evict()
        if self.ram_budget_bytes is not None and ram > self.ram_budget_bytes:
            log.warning(
                "window %d alone needs ~%s, over the RAM budget of %s",
                w,
                _fmt_bytes(ram),
                _fmt_bytes(self.ram_budget_bytes),
            )
        return entry

    def _evict(self) -> None:
        def over() -> bool:
            if len(self._open) > self.max_open:
                return True
            return self.ram_budget_bytes is not None and self.ram_held_bytes() > self.ram_budget_bytes

        while len(self._open) > 1 and over():
            self._open.popitem(last=False)
            self.evictions += 1

    def close(self) -> None:
        self._open.clear()

    def ram_held_bytes(self) -> int:
        return sum(o.ram_bytes for o in self._open.values())

    def stats(self) -> dict:
        """Open windows (LRU order), loads, hits, evictions and the RAM estimate of what is open."""
        return {
            "open": len(self._open),
            "open_windows": list(self._open),
            "mmap_open": sum(o.mmap for o in self._open.values()),
            "loads": self.loads,
            "hits": self.hits,
            "evictions": self.evictions,
            "ram_held_bytes": self.ram_held_bytes(),
        }

    # -- search

    def _queries(self, w: int, queries: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(queries, dtype=np.float32)
        if x.ndim == 1:
            x = x[None, :]
        dim = self.meta[w]["dim"]
        if x.ndim != 2 or x.shape[1] != dim:
            raise SelectFlowError(
                f"queries have shape {tuple(np.shape(queries))} but window {w} ({WindowFiles.of(self.index_dir, w).faiss}) "
                f"holds {dim}-dimensional vectors"
            )
        if not np.isfinite(x).all():
            raise SelectFlowError(f"query vectors for window {w} hold NaN/inf; fix the query embeddings")
        return x

    def metric(self, w: int = 0) -> str:
        return self.meta[w]["metric"]

    def knn_rows(self, w: int, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """``(distances float32 [q, k'], rows int64 [q, k'])`` within window ``w``, ``k' = min(k, n_w)``.

        Exact and ordered by (distance, row) for flat indexes (``exact=False``: up to FAISS's
        BLAS rounding); approximate for ``ivfpq``, where missing hits have row -1 and
        distance ±inf.
        """
        if k < 1:
            raise SelectFlowError(f"k must be >= 1, got {k}")
        x = self._queries(w, queries)
        meta = self.meta[w]
        index = self._window(w).index
        k = min(k, meta["n"])
        larger = larger_is_nearer(meta["metric"])
        if meta["index_type"] == "ivfpq":
            dist, rows = index.search(x, k)
            dist = np.where(rows < 0, -np.inf if larger else np.inf, dist).astype(np.float32)
            return _sort_rows(dist, rows, larger)
        with _direct_kernel() if self.exact else contextlib.nullcontext():
            return exact_top_k(index.search, meta["n"], x, k, larger)

    def sample_ids(self, w: int, rows: np.ndarray) -> np.ndarray:
        """Sample ids of ``rows`` of window ``w`` (object array, same shape; row -1 → ``""``)."""
        ids = self._window(w).ids
        return np.where(rows < 0, "", ids[np.maximum(rows, 0)]).astype(object)

    def search_window(self, w: int, queries: np.ndarray, k: int) -> tuple[np.ndarray, list[list[str]]]:
        """Nearest ``k`` items of window ``w`` only: ``(distances float32 [q, k'], sample ids [q][k'])``."""
        dist, rows = self.knn_rows(w, queries, k)
        return dist, self.sample_ids(w, rows).tolist()

    def require_item_windows(self, what: str) -> None:
        first = self.meta[0]
        for meta in self.meta:
            if meta["kind"] == "positions":
                raise SelectFlowError(
                    f"{what} merges windows that partition the items, but {self.index_dir} holds position windows "
                    "(every window has all items); search one window at a time with search_window"
                )
            if (meta["dim"], meta["metric"]) != (first["dim"], first["metric"]):
                raise SelectFlowError(
                    f"{what} needs one dimension and metric across windows: window {meta['window']} has "
                    f"{meta['dim']}/{meta['metric']}, window 0 has {first['dim']}/{first['metric']}; rebuild the index"
                )

    def search_all(
        self, queries: np.ndarray, k: int, *, progress: bool = True
    ) -> tuple[np.ndarray, list[list[str]], np.ndarray]:
        """Nearest ``k`` over all windows: ``(distances [q, k'], sample ids [q][k'], windows int64 [q, k'])``.

        Per-window top-k lists are merged by (distance, window, row); for flat indexes this
        is exactly one flat index over the concatenated windows with ties broken by global row.
        """
        self.require_item_windows("search_all")
        x = self._queries(0, queries)
        larger = larger_is_nearer(self.meta[0]["metric"])
        k = min(k, sum(m["n"] for m in self.meta))
        best_d = np.empty((len(x), 0), dtype=np.float32)
        best_w = np.empty((len(x), 0), dtype=np.int64)
        best_r = np.empty((len(x), 0), dtype=np.int64)
        best_s = np.empty((len(x), 0), dtype=object)
        for w in tqdm(range(len(self.meta)), desc="search windows", unit="window", disable=not progress):
            dist, rows = self.knn_rows(w, x, k)
            cand_d = np.concatenate([best_d, dist], axis=1)
            cand_w = np.concatenate([best_w, np.full(rows.shape, w, dtype=np.int64)], axis=1)
            cand_r = np.concatenate([best_r, np.where(rows < 0, np.iinfo(np.int64).max, rows)], axis=1)
            cand_s = np.concatenate([best_s, self.sample_ids(w, rows)], axis=1)
            order = np.lexsort((cand_r, cand_w, -cand_d if larger else cand_d), axis=-1)[:, :k]
            best_d, best_w, best_r, best_s = (
                np.take_along_axis(a, order, -1) for a in (cand_d, cand_w, cand_r, cand_s)
            )
        return best_d, best_s.tolist(), best_w

    def range_window(self, w: int, queries: np.ndarray, threshold: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Items of window ``w`` within ``threshold`` of each query, threshold included.

        Within means distance <= threshold for ``l2`` (squared) and ``l1``, inner product
        >= threshold for ``ip``. Returns ``(query index int64 [m], distance float32 [m],
        row int64 [m])`` sorted by (query, distance, row).
        """
        x = self._queries(w, queries)
        if not math.isfinite(threshold):
            raise SelectFlowError(f"threshold must be a finite number, got {threshold}")
        larger = larger_is_nearer(self.meta[w]["metric"])
        # FAISS keeps hits strictly inside the radius; one float32 step outward includes it.
        radius = float(np.nextafter(np.float32(threshold), np.float32(-np.inf if larger else np.inf)))
        with _direct_kernel() if self.exact else contextlib.nullcontext():
            lims, dist, rows = self._window(w).index.range_search(x, radius)
        query = np.repeat(np.arange(len(x), dtype=np.int64), np.diff(lims).astype(np.int64))
        order = np.lexsort((rows, -dist if larger else dist, query))
        return query[order], dist[order].astype(np.float32), rows[order].astype(np.int64)


# ----------------------------------------------------------------------------- report


def summarize_windows(index: str | os.PathLike | WindowStore, out_tsv: str | os.PathLike | None = None) -> pd.DataFrame:
    """Per window: size, type, build time, bytes on disk and (for an open store) RAM held; log the totals.

    Columns: window, n, dim, index_type, metric, built_on, build_seconds, embed_seconds
    (NaN when the vectors came from elsewhere), disk_bytes, open, ram_bytes. Written to ``out_tsv`` (atomically) when given.
    """
    store = index if isinstance(index, WindowStore) else WindowStore(index)
    rows = []
    for meta in store.meta:
        entry = store._open.get(meta["window"])
        rows.append(
            {
                "window": meta["window"],
                "n": meta["n"],
                "dim": meta["dim"],
                "index_type": meta["index_type"],
                "metric": meta["metric"],
                "built_on": meta["built_on"],
                "build_seconds": meta["build_seconds"],
                "embed_seconds": meta.get("embed_seconds") if meta.get("embed_seconds") is not None else float("nan"),
                "disk_bytes": meta["faiss_bytes"] + meta["ids_bytes"],
                "open": entry is not None,
                "ram_bytes": entry.ram_bytes if entry is not None else 0,
            }
        )
    table = pd.DataFrame(rows)
    log.info(
        "%d windows, %d rows: %s of indexes on disk, %.1fs of builds; %d open holding ~%s; process RSS %s",
        len(table),
        int(table["n"].sum()),
        _fmt_bytes(table["disk_bytes"].sum()),
        table["build_seconds"].sum(),
        int(table["open"].sum()),
        _fmt_bytes(table["ram_bytes"].sum()),
        _fmt_bytes(psutil.Process().memory_info().rss),
    )
    if out_tsv is not None:
        with atomic_open(out_tsv, "w", encoding="utf-8", newline="") as fh:
            table.to_csv(fh, sep="\t", index=False)
    return table
