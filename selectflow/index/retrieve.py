"""Queries against a :class:`~selectflow.index.store.WindowStore`: neighbours, decontamination, on-demand embeddings.

* :func:`retrieve` → the table of ``neighbors.tsv`` (query_id, rank, sample_id, window,
  distance): the ``k`` nearest pool items of each query over all windows.
* :func:`decontaminate` → the table of pool samples within ``threshold`` of an eval sample
  (sample_id, eval_id, distance, window), one row per pair.
* :class:`OnDemandNeighbors` → for a training batch from one window, its neighbours in that
  window embedded by the model *as it is now* (``float32 [q, k, H]``): neighbour
  embeddings are never precomputed, so they are never stale and never all in RAM.

Distances are in the index metric: squared L2 (``flat_l2``, ``ivfpq``), L1 (``flat_l1``)
or inner product (``flat_ip``, where larger means nearer).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from selectflow.index.embed import encode_texts
from selectflow.index.store import WindowStore
from selectflow.runtime.errors import SelectFlowError
from selectflow.runtime.tables import write_tsv


def write_table(table: pd.DataFrame, out_tsv: str | os.PathLike) -> None:
    """Write a :func:`retrieve` or :func:`decontaminate` table (atomically); ``%.9g`` round-trips float32 distances."""
    write_tsv(table, out_tsv, float_format="%.9g")


def _check_ids(vectors: np.ndarray, ids: Sequence[str], what: str) -> None:
    if len(vectors) != len(ids):
        raise SelectFlowError(f"{len(vectors)} {what} vectors but {len(ids)} {what} ids")
    if len(set(ids)) != len(ids):
        raise SelectFlowError(f"{what} ids repeat; every {what} sample needs its own id")


def retrieve(
    store: WindowStore, query_vectors: np.ndarray, query_ids: Sequence[str], k: int, *, progress: bool = True
) -> pd.DataFrame:
    """The ``k`` nearest pool items of every query (rank 1 = nearest), a row per (query, neighbour).

    Fewer than ``k`` rows per query only when the pool has fewer items (or, for ``ivfpq``,
    when the probed lists hold fewer).
    """
    _check_ids(query_vectors, query_ids, "query")
    dist, sample_ids, windows = store.search_all(query_vectors, k, progress=progress)
    q, kk = dist.shape
    table = pd.DataFrame(
        {
            "query_id": np.repeat(np.asarray(query_ids, dtype=object), kk),
            "rank": np.tile(np.arange(1, kk + 1), q),
            "sample_id": [s for row in sample_ids for s in row],
            "window": windows.ravel(),
            "distance": dist.ravel(),
        }
    )
    return table[table["sample_id"] != ""].reset_index(drop=True)


def decontaminate(
    store: WindowStore, eval_vectors: np.ndarray, eval_ids: Sequence[str], threshold: float, *, progress: bool = True
) -> pd.DataFrame:
    """Pool samples within ``threshold`` of an eval sample (threshold included), a row per (sample, eval) pair.

    "Within" is squared-L2 / L1 distance <= ``threshold``, or inner product >= ``threshold``
    for ``flat_ip``. Uses FAISS range search per window, so every pair is found however many
    there are (a top-k search would miss pairs beyond k); exact for flat indexes,
    approximate (PQ distances, probed lists only) for ``ivfpq``. Rows are ordered by eval
    sample, then distance, window and row.
    """
    _check_ids(eval_vectors, eval_ids, "eval")
    store.require_item_windows("decontaminate")
    larger = store.metric() == "ip"
    parts = []
    for w in tqdm(range(len(store)), desc="decontaminate windows", unit="window", disable=not progress):
        query, dist, rows = store.range_window(w, eval_vectors, threshold)
        if len(rows):
            parts.append(
                pd.DataFrame(
                    {
                        "q": query,
                        "sample_id": store.sample_ids(w, rows),
                        "eval_id": np.asarray(eval_ids, dtype=object)[query],
                        "distance": dist,
                        "window": w,
                        "row": rows,
                    }
                )
            )
    columns = ["sample_id", "eval_id", "distance", "window"]
    if not parts:
        return pd.DataFrame(columns=columns)
    table = pd.concat(parts, ignore_index=True)
    table["key"] = -table["distance"] if larger else table["distance"]
    return table.sort_values(["q", "key", "window", "row"], kind="stable")[columns].reset_index(drop=True)


@dataclass
class NeighborBatch:
    """What :class:`OnDemandNeighbors` returns for one batch of ``q`` queries."""

    sample_ids: list[list[str]]  # [q][k]
    distances: np.ndarray  # float32 [q, k]
    embeddings: np.ndarray  # float32 [q, k, H], from the model passed to the call


class OnDemandNeighbors:
    """Neighbours of a training batch within its window, embedded with the current model.

    ``texts`` maps sample id → text for the pool (small, kept in RAM); the window's FAISS
    index comes from ``store`` (opened on demand, LRU-closed). Each call searches window
    ``window`` with the batch's query vectors and encodes only those neighbours' texts with
    the ``model`` given to that call, so after an optimiser step the next batch sees
    embeddings from the new weights; nothing is refreshed at epoch ends.

    With ``query_ids`` a query's own row is left out of its neighbours.
    """

    def __init__(
        self,
        store: WindowStore,
        texts: Mapping[str, str],
        tokenizer,
        *,
        k: int,
        batch_size: int,
        max_length: int,
    ):
        if k < 1:
            raise SelectFlowError(f"k must be >= 1, got {k}")
        self.store = store
        self.texts = texts
        self.tokenizer = tokenizer
        self.k = k
        self.batch_size = batch_size
        self.max_length = max_length

    def __call__(
        self, model, window: int, query_vectors: np.ndarray, query_ids: Sequence[str] | None = None
    ) -> NeighborBatch:
        if not 0 <= window < len(self.store):
            raise SelectFlowError(f"window {window} does not exist; the store holds windows 0..{len(self.store) - 1}")
        n = self.store.meta[window]["n"]
        extra = 1 if query_ids is not None else 0
        k = min(self.k, n - extra)
        if k < 1:
            raise SelectFlowError(f"window {window} has {n} items: too few for neighbours of a query in it")
        dist, rows = self.store.knn_rows(window, query_vectors, k + extra)
        ids = self.store.sample_ids(window, rows)
        if query_ids is not None:
            if len(query_ids) != len(ids):
                raise SelectFlowError(f"{len(ids)} query vectors but {len(query_ids)} query ids")
            # Drop the query's own hit; otherwise drop the farthest, so every row keeps k.
            own = ids == np.asarray(query_ids, dtype=object)[:, None]
            drop = np.where(own.any(axis=1), own.argmax(axis=1), ids.shape[1] - 1)
            keep = np.ones(ids.shape, dtype=bool)
            keep[np.arange(len(ids)), drop] = False
            ids = ids[keep].reshape(len(ids), k)
            dist = dist[keep].reshape(len(dist), k)
        unique = list(dict.fromkeys(ids.ravel().tolist()))
        missing = [s for s in unique if s not in self.texts]
        if missing:
            raise SelectFlowError(
                f"no text for sample id {missing[0]!r} (window {window}); the texts given to OnDemandNeighbors "
                "must cover the indexed pool"
            )
        vectors = encode_texts(
            model,
            self.tokenizer,
            [self.texts[s] for s in unique],
            batch_size=self.batch_size,
            max_length=self.max_length,
        )
        where = {s: i for i, s in enumerate(unique)}
        index = np.vectorize(where.__getitem__, otypes=[np.int64])(ids)
        return NeighborBatch(ids.tolist(), dist, vectors[index])
