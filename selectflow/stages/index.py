"""The index stage: pool manifest → one FAISS window per job → retrieval, one function per rule.

The rules of ``rules/index.smk`` call :func:`write_pool_manifest` (checkpoint
``pool_manifest``), :func:`index_embed`, :func:`index_window`, :func:`index_summary`,
:func:`retrieve` and :func:`decontaminate`; the functions below do the work:

* :func:`write_pool_manifest`: every pool sample, ordered by ``sample_id`` →
  ``pool_manifest.tsv`` (``sample_id``, ``dataset``, ``shard``, ``row``). Item windows are
  consecutive runs of ``window_size`` rows of it. Only this small table is ever read whole.
* :func:`embed_item_windows`: a group of item windows → encoder embeddings, one HDF5
  file per group (the encoder is loaded once for the whole group: one job, one model load).
* :func:`index_embedded_window`: one window's embeddings → its FAISS files (no torch,
  no model: a cheap job per window, so each window keeps its own output files).
* :func:`index_item_window`: both steps for one window in one call.
* :func:`index_sequence_window`: window ``w`` of an HDF5 array [items, positions(, F)].
* :func:`retrieve` / :func:`decontaminate`: queries → ``neighbors.tsv`` / pool samples too
  close to an evaluation set.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from selectflow.config import DecontaminateConfig, IndexConfig, RetrieveConfig
from selectflow.data.records import read_dataset, read_jsonl, record_prompt_response
from selectflow.index.windows import (
    item_windows,
    read_sequence_window,
    sequence_windows,
)
from selectflow.runtime.errors import SelectFlowError
from selectflow.runtime.fsutil import atomic_path
from selectflow.runtime.tables import read_tsv, write_tsv
from selectflow.runtime.units import GIB

log = logging.getLogger(__name__)


def write_pool_manifest(shard_paths: Sequence[str | os.PathLike], out_tsv: str | os.PathLike) -> int:
    """Write the pool's ``sample_id``-ordered manifest; return the pool size.

    Runs before any inference, so a ``sample_id`` used twice (two datasets with the same
    ``id`` s) stops the run before the router dump, naming both records.
    """
    rows = [
        (rec["sample_id"], rec["dataset"], rec["line"], str(path), row)
        for path in shard_paths
        for row, rec in enumerate(read_jsonl(path))
    ]
    table = pd.DataFrame(rows, columns=["sample_id", "dataset", "line", "shard", "row"])
    table = table.sort_values("sample_id", kind="stable")
    dup = table[table["sample_id"].duplicated(keep=False)]
    if len(dup):
        first = dup[dup["sample_id"] == dup["sample_id"].iloc[0]]
        where = ", ".join(f"dataset '{d}' line {n}" for d, n in zip(first["dataset"], first["line"]))
        raise SelectFlowError(
            f"sample_id {first['sample_id'].iloc[0]!r} is used by {where} ({dup['sample_id'].nunique()} ids repeat in "
            "all); give records unique 'id's across datasets, or drop the 'id' field to use dataset:line ids"
        )
    write_tsv(table, out_tsv)
    return len(table)


def read_manifest(path: str | os.PathLike) -> pd.DataFrame:
    return read_tsv(path, "pool manifest", dtype={"line": int, "shard": str, "row": int})


def n_item_windows(manifest_tsv: str | os.PathLike, window_size: int) -> int:
    return len(item_windows(len(read_manifest(manifest_tsv)), window_size))


def record_text(record: dict) -> str:
    """The text a sample is embedded by: its prompt and response."""
    return "".join(record_prompt_response(record))


def window_records(manifest_tsv: str | os.PathLike, w: int, window_size: int) -> list[dict]:
    """The normalised records of item window ``w`` (reads only the shards it touches)."""
    table = read_manifest(manifest_tsv)
    spans = item_windows(len(table), window_size)
    if not 0 <= w < len(spans):
        raise SelectFlowError(f"window {w} does not exist: {manifest_tsv} has {len(spans)} windows of {window_size}")
    part = table.iloc[spans[w][0] : spans[w][1]]
    records = {}
    for shard, rows in part.groupby("shard", sort=False):
        wanted = set(rows["row"])
        for row, rec in enumerate(read_jsonl(shard)):
            if row in wanted:
                records[rec["sample_id"]] = rec
    return [records[sid] for sid in part["sample_id"]]


def window_groups(n_windows: int, per_job: int) -> list[range]:
    """Windows ``0..n_windows-1`` cut into consecutive groups of ``per_job`` (the last may be shorter)."""
    if per_job < 1:
        raise SelectFlowError(f"index.windows_per_job must be >= 1, got {per_job}")
    return [range(g, min(g + per_job, n_windows)) for g in range(0, n_windows, per_job)]


def embed_item_windows(
    manifest_tsv,
    group: int,
    per_job: int,
    window_size: int,
    encoder_path,
    out_h5,
    *,
    batch_size: int,
    max_length: int,
    device: str,
) -> int:
    """Embed the item windows of group ``group`` (``per_job`` windows each) into ``out_h5``; return the rows.

    ``out_h5`` holds, per window ``w``, ``window_XXXXX/vectors`` float32 [n, H] and
    ``window_XXXXX/sample_id``, with attributes ``span`` and ``embed_seconds``; it is
    written atomically (whole or not at all). The encoder is loaded once for the group.
    """
    import h5py

    from selectflow.index.embed import encode_texts, load_encoder

    n_total = n_item_windows(manifest_tsv, window_size)
    groups = window_groups(n_total, per_job)
    if not 0 <= group < len(groups):
        raise SelectFlowError(
            f"window group {group} does not exist: {manifest_tsv} has {len(groups)} groups of "
            f"{per_job} windows of {window_size}"
        )
    model, tokenizer = load_encoder(encoder_path, device)
    rows = 0
    with atomic_path(out_h5, suffix=".h5") as tmp, h5py.File(tmp, "w") as f:
        for w in groups[group]:
            t0 = time.perf_counter()
            records = window_records(manifest_tsv, w, window_size)
            vectors = encode_texts(
                model, tokenizer, [record_text(r) for r in records], batch_size=batch_size, max_length=max_length
            )
            part = f.create_group(f"window_{w:05d}")
            part.create_dataset("vectors", data=vectors)
            part.create_dataset("sample_id", data=[r["sample_id"] for r in records], dtype=h5py.string_dtype())
            part.attrs["span"] = (w * window_size, w * window_size + len(records))
            part.attrs["embed_seconds"] = time.perf_counter() - t0
            rows += len(records)
            log.info(
                "window %d of %d: %d records embedded in %.2f s",
                w + 1,
                n_total,
                len(records),
                part.attrs["embed_seconds"],
            )
        f.attrs["n_windows"] = n_total
    return rows


def index_embedded_window(embeddings_h5, w: int, out_faiss, *, index_type: str, min_free_bytes: int = 0) -> dict:
    """Build window ``w``'s FAISS files from its vectors in ``embeddings_h5`` (:func:`embed_item_windows`)."""
    import h5py

    from selectflow.index.build import build_window_index

    with h5py.File(embeddings_h5, "r") as f:
        key = f"window_{w:05d}"
        if key not in f:
            raise SelectFlowError(f"{embeddings_h5} holds no {key}; delete the file and rerun to embed it again")
        part = f[key]
        vectors = part["vectors"][()]
        ids = [s.decode() if isinstance(s, bytes) else str(s) for s in part["sample_id"][()]]
        span = tuple(int(x) for x in part.attrs["span"])
        embed_seconds = float(part.attrs["embed_seconds"])
        n_windows = int(f.attrs["n_windows"])
    return build_window_index(
        vectors,
        ids,
        out_faiss,
        window=w,
        n_windows=n_windows,
        span=span,
        kind="items",
        index_type=index_type,
        min_free_bytes=min_free_bytes,
        embed_seconds=embed_seconds,
    )


def index_item_window(
    manifest_tsv,
    w: int,
    window_size: int,
    encoder_path,
    out_faiss,
    *,
    index_type: str,
    batch_size: int,
    max_length: int,
    device: str,
    n_windows: int | None = None,
    min_free_bytes: int = 0,
) -> dict:
    """Embed item window ``w`` with the encoder and write its FAISS files."""
    from selectflow.index.build import build_window_index
    from selectflow.index.embed import encode_texts, load_encoder

    records = window_records(manifest_tsv, w, window_size)
    t0 = time.perf_counter()
    model, tokenizer = load_encoder(encoder_path, device)
    vectors = encode_texts(
        model, tokenizer, [record_text(r) for r in records], batch_size=batch_size, max_length=max_length
    )
    del model
    start = w * window_size
    return build_window_index(
        vectors,
        [r["sample_id"] for r in records],
        out_faiss,
        window=w,
        n_windows=n_windows,
        span=(start, start + len(records)),
        kind="items",
        index_type=index_type,
        min_free_bytes=min_free_bytes,
        embed_seconds=time.perf_counter() - t0,
    )


def index_sequence_window(
    h5_path, dataset: str, w: int, window_size: int, stride: int, out_faiss, *, index_type: str, min_free_bytes: int = 0
) -> dict:
    """Index window ``w`` of an HDF5 array [items, positions(, F)]; item ``i`` gets id ``str(i)``."""
    from selectflow.index.build import build_window_index

    spans = sequence_windows_of(h5_path, dataset, window_size, stride)
    start, stop = spans[w]
    vectors = read_sequence_window(h5_path, dataset, start, stop)
    return build_window_index(
        vectors,
        [str(i) for i in range(len(vectors))],
        out_faiss,
        window=w,
        n_windows=len(spans),
        span=(start, stop),
        kind="positions",
        index_type=index_type,
        min_free_bytes=min_free_bytes,
    )


def sequence_windows_of(h5_path, dataset: str, window_size: int, stride: int) -> list[tuple[int, int]]:
    import h5py

    with h5py.File(h5_path, "r") as f:
        return sequence_windows(f[dataset].shape[1], window_size, stride)


def _query_texts(path: str | os.PathLike) -> tuple[list[str], list[str]]:
    """(ids, texts) of a query JSONL: selected_data.jsonl (has sample_id) or any input dataset."""
    records = read_jsonl(path)
    if records and all("sample_id" in r for r in records):
        return [r["sample_id"] for r in records], [record_text(r) for r in records]
    normalised = read_dataset(path, Path(path).stem)
    return [r["sample_id"] for r in normalised], [record_text(r) for r in normalised]


def _encode_queries(path, encoder_path, index: IndexConfig, batch_size: int):
    from selectflow.index.embed import encode_texts, load_encoder

    ids, texts = _query_texts(path)
    model, tokenizer = load_encoder(encoder_path, index.device)
    return ids, encode_texts(model, tokenizer, texts, batch_size=batch_size, max_length=index.max_length)


@contextlib.contextmanager
def _opened_store(index_dir, n_windows: int, index: IndexConfig):
    from selectflow.index.store import WindowStore

    store = WindowStore(index_dir, max_open=index.max_open, n_windows=n_windows)
    try:
        yield store
    finally:
        store.close()


# ----------------------------------------------------------------------------- the rules' functions


def index_embed(manifest_tsv, group: int, encoder_path, out_h5, index: IndexConfig, batch_size: int) -> None:
    """Rule index_embed: item window group ``group`` → its embeddings HDF5 (``batch_size`` from the resources)."""
    embed_item_windows(
        manifest_tsv,
        group,
        index.windows_per_job,
        index.window_size,
        encoder_path,
        out_h5,
        batch_size=batch_size,
        max_length=index.max_length,
        device=index.device,
    )


def index_window(spec: dict, w: int, source, out_faiss, index: IndexConfig) -> None:
    """Rule index_window: window ``w`` of index ``spec`` (common.smk's ``index_spec``) → its FAISS files.

    ``source`` is the group's embeddings HDF5 for item windows, the sequence array for position windows.
    """
    common = {"index_type": spec.get("index_type") or index.index_type, "min_free_bytes": int(index.min_free_gb * GIB)}
    if spec["kind"] == "items":
        index_embedded_window(source, w, out_faiss, **common)
    else:
        index_sequence_window(
            source, spec["dataset"], w, spec["window_size"], spec["window_stride"], out_faiss, **common
        )


def index_summary(index_dir, out_tsv) -> None:
    """Rule index_summary: per-window build time, disk and RAM of the index in ``index_dir`` → ``out_tsv``."""
    from selectflow.index.summary import summarize_windows

    summarize_windows(index_dir, out_tsv)


def retrieve(
    index_dir,
    n_windows: int,
    queries_jsonl,
    encoder_path,
    out_tsv,
    index: IndexConfig,
    retrieve_cfg: RetrieveConfig,
    batch_size: int,
) -> None:
    """Rule retrieve: top-``k`` pool neighbours of every query across all windows → ``out_tsv``."""
    from selectflow.index import retrieve as search

    ids, vectors = _encode_queries(queries_jsonl, encoder_path, index, batch_size)
    with _opened_store(index_dir, n_windows, index) as store:
        table = search.retrieve(store, vectors, ids, retrieve_cfg.k)
        search.write_table(table, out_tsv)
        log.info("%d queries x top-%d over %d windows -> %s", len(ids), retrieve_cfg.k, len(store), out_tsv)
        log.info("store: %s", store.stats())


def decontaminate(
    index_dir,
    n_windows: int,
    eval_jsonl,
    encoder_path,
    out_tsv,
    index: IndexConfig,
    decontaminate_cfg: DecontaminateConfig,
    batch_size: int,
) -> None:
    """Rule decontaminate: pool samples within the threshold of any evaluation sample → ``out_tsv``.

    Columns sample_id, eval_id, distance, window: one row per (pool sample, eval sample) pair.
    """
    from selectflow.index import retrieve as search

    threshold = decontaminate_cfg.threshold
    ids, vectors = _encode_queries(eval_jsonl, encoder_path, index, batch_size)
    with _opened_store(index_dir, n_windows, index) as store:
        table = search.decontaminate(store, vectors, ids, threshold)
        search.write_table(table, out_tsv)
        hits = table["sample_id"].nunique()
        log.info(
            "decontamination at %s %g: %d pool samples near %d eval samples -> %s",
            store.metric(),
            threshold,
            hits,
            table["eval_id"].nunique(),
            out_tsv,
        )
    log.info("%d pool samples within %g of the evaluation set %s", hits, threshold, eval_jsonl)
