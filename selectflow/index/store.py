"""Per-window FAISS indexes on disk, opened only when a window is searched.

* :class:`WindowStore` — searches the windows of ``index_dir`` (files as in
  :mod:`selectflow.index.layout`, built by :mod:`selectflow.index.build`), holding at most
  ``max_open`` indexes (or ``ram_budget_bytes``) open, least recently used closed first.
  Nothing else is kept in RAM but the small metadata, which is what lets hundreds of
  windows run in the memory of a few (the alternative, all embeddings and indexes in RAM,
  grows with the window count).
* :func:`exact_top_k` — the top ``k`` of one index by (distance, row), ties included.

Distances are FAISS's for the index metric: **squared** L2 (``flat_l2``, ``ivfpq``), L1
(``flat_l1``) or inner product (``flat_ip``, larger is nearer). For the flat types a
search is exact and deterministic: results are ordered by (distance, window, row) — i.e.
by global row for item windows — so ties between duplicate vectors always resolve the
same way, and :meth:`WindowStore.search_all` returns exactly what one flat index over all
windows returns under the same rule.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import faiss
import numpy as np
from tqdm.auto import tqdm

from selectflow.index.layout import REBUILD_HINT, WINDOW_NAME, WindowFiles, read_meta
from selectflow.runtime.errors import CorruptFileError, SelectFlowError
from selectflow.runtime.tables import read_tsv
from selectflow.runtime.units import format_bytes

log = logging.getLogger(__name__)


def larger_is_nearer(metric: str) -> bool:
    return metric == "ip"


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


@dataclass
class _OpenWindow:
    index: faiss.Index
    ids: np.ndarray  # [n] object (str)
    ram_bytes: int
    mmap: bool


def _scan_windows(index_dir: Path, n_windows: int | None) -> list[dict]:
    """The metadata of windows ``0..n-1`` in ``index_dir``; a missing file is a :class:`SelectFlowError` naming it.

    ``n`` is ``n_windows``, else the count the build recorded, else the highest window + 1.
    """
    found = {}
    for path in index_dir.glob("window_*.json"):
        match = WINDOW_NAME.match(path.stem)
        if match:
            found[int(match.group(1))] = read_meta(path)
    recorded = {m["n_windows"] for m in found.values() if m.get("n_windows")}
    if len(recorded) > 1:
        raise SelectFlowError(
            f"windows in {index_dir} were built for different window counts {sorted(recorded)}; "
            "delete the folder and rebuild all windows"
        )
    expected = n_windows or (recorded.pop() if recorded else (max(found) + 1 if found else 0))
    if expected == 0:
        raise SelectFlowError(f"no window indexes (window_*.json) in {index_dir}; rule index_window builds them")
    missing = []
    for w in range(expected):
        files = WindowFiles.of(index_dir, w)
        if w not in found:
            missing.append(files.faiss if not files.faiss.exists() else files.meta)
            continue
        missing.extend(p for p in (files.faiss, files.ids) if not p.exists())
    if missing:
        names = ", ".join(str(p) for p in missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise SelectFlowError(
            f"{len(missing)} window index file(s) missing in {index_dir} (expected {expected} windows): "
            f"{names}; {REBUILD_HINT}"
        )
    return [found[w] for w in range(expected)]


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
        max_open: int,
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
        self.meta = _scan_windows(self.index_dir, n_windows)
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
        table = read_tsv(files.ids, "window ids file")
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
                format_bytes(ram),
                format_bytes(self.ram_budget_bytes),
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

    def open_ram_bytes(self, w: int) -> int | None:
        """The RAM estimate of window ``w`` while it is open, else None."""
        entry = self._open.get(w)
        return None if entry is None else entry.ram_bytes

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
                f"queries have shape {tuple(np.shape(queries))} but window {w} "
                f"({WindowFiles.of(self.index_dir, w).faiss}) "
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
