"""Rule-level glue of the index stage: pool manifest → one FAISS window per job → retrieval.

* :func:`write_pool_manifest`: every pool sample, ordered by ``sample_id`` →
  ``pool_manifest.tsv`` (``sample_id``, ``dataset``, ``shard``, ``row``). Item windows are
  consecutive runs of ``window_size`` rows of it. Only this small table is ever read whole.
* :func:`index_item_window`: window ``w``'s records → encoder embeddings → FAISS files.
* :func:`index_sequence_window`: window ``w`` of an HDF5 array [items, positions(, F)].
* :func:`retrieve_neighbors` / :func:`find_contaminated`: queries → ``neighbors.tsv`` /
  pool samples too close to an evaluation set.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from .embed import encode_texts, load_encoder
from .errors import SelectFlowError
from .fsutil import atomic_open
from .index_store import WindowStore, build_window_index
from .records import read_dataset, read_jsonl, record_prompt_response
from .windows import item_windows, read_sequence_window, sequence_windows

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
    with atomic_open(out_tsv, "w", encoding="utf-8") as fh:
        table.to_csv(fh, sep="\t", index=False)
    return len(table)


def read_manifest(path: str | os.PathLike) -> pd.DataFrame:
    return pd.read_csv(path, sep="\t", dtype={"sample_id": str, "dataset": str, "line": int, "shard": str, "row": int},
                       keep_default_na=False)


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
    part = table.iloc[spans[w][0]:spans[w][1]]
    records = {}
    for shard, rows in part.groupby("shard", sort=False):
        wanted = set(rows["row"])
        for row, rec in enumerate(read_jsonl(shard)):
            if row in wanted:
                records[rec["sample_id"]] = rec
    return [records[sid] for sid in part["sample_id"]]


def index_item_window(manifest_tsv, w: int, window_size: int, encoder_path, out_faiss, *, index_type: str = "flat_l2",
                      batch_size: int = 32, max_length: int = 256, device: str = "auto", n_windows: int | None = None,
                      min_free_bytes: int = 0) -> dict:
    """Embed item window ``w`` with the encoder and write its FAISS files."""
    records = window_records(manifest_tsv, w, window_size)
    model, tokenizer = load_encoder(encoder_path, device)
    vectors = encode_texts(model, tokenizer, [record_text(r) for r in records], batch_size=batch_size,
                           max_length=max_length)
    del model
    start = w * window_size
    return build_window_index(vectors, [r["sample_id"] for r in records], out_faiss, window=w, n_windows=n_windows,
                              span=(start, start + len(records)), kind="items", index_type=index_type,
                              min_free_bytes=min_free_bytes)


def index_sequence_window(h5_path, dataset: str, w: int, window_size: int, stride: int, out_faiss, *,
                          index_type: str = "flat_l2", min_free_bytes: int = 0) -> dict:
    """Index window ``w`` of an HDF5 array [items, positions(, F)]; item ``i`` gets id ``str(i)``."""
    spans = sequence_windows_of(h5_path, dataset, window_size, stride)
    start, stop = spans[w]
    vectors = read_sequence_window(h5_path, dataset, start, stop)
    return build_window_index(vectors, [str(i) for i in range(len(vectors))], out_faiss, window=w,
                              n_windows=len(spans), span=(start, stop), kind="positions", index_type=index_type,
                              min_free_bytes=min_free_bytes)


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


def _encode_queries(path, encoder_path, batch_size: int, max_length: int, device: str):
    ids, texts = _query_texts(path)
    model, tokenizer = load_encoder(encoder_path, device)
    return ids, encode_texts(model, tokenizer, texts, batch_size=batch_size, max_length=max_length)


def retrieve_neighbors(index_dir, n_windows: int, queries_jsonl, encoder_path, k: int, out_tsv, *, max_open: int = 4,
                       batch_size: int = 32, max_length: int = 256, device: str = "auto") -> pd.DataFrame:
    """Top-``k`` pool neighbours of every query across all windows → ``out_tsv``."""
    from .retrieve import retrieve

    ids, vectors = _encode_queries(queries_jsonl, encoder_path, batch_size, max_length, device)
    store = WindowStore(index_dir, max_open=max_open, n_windows=n_windows)
    try:
        table = retrieve(store, vectors, ids, k, out_tsv)
        log.info("store: %s", store.stats())
    finally:
        store.close()
    return table


def find_contaminated(index_dir, n_windows: int, eval_jsonl, encoder_path, threshold: float, out_tsv, *,
                      max_open: int = 4, batch_size: int = 32, max_length: int = 256, device: str = "auto") -> set[str]:
    """Pool samples within ``threshold`` of any evaluation sample → ``out_tsv`` (sample_id, eval_id, distance)."""
    from .retrieve import decontaminate

    ids, vectors = _encode_queries(eval_jsonl, encoder_path, batch_size, max_length, device)
    store = WindowStore(index_dir, max_open=max_open, n_windows=n_windows)
    try:
        hits = decontaminate(store, vectors, ids, threshold, out_tsv)
    finally:
        store.close()
    log.info("%d pool samples within %g of the evaluation set %s", len(hits), threshold, eval_jsonl)
    return hits
