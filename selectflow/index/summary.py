"""Per-window build time, disk and RAM of one index → a table, a TSV (``summary.tsv``) and a log line."""

from __future__ import annotations

import logging
import os

import pandas as pd
import psutil

from selectflow.index.store import WindowStore
from selectflow.runtime.tables import write_tsv
from selectflow.runtime.units import format_bytes

log = logging.getLogger(__name__)


def summarize_windows(index: str | os.PathLike | WindowStore, out_tsv: str | os.PathLike | None = None) -> pd.DataFrame:
    """Per window: size, type, build time, bytes on disk and (for an open store) RAM held; log the totals.

    Columns: window, n, dim, index_type, metric, built_on, build_seconds, embed_seconds
    (NaN when the vectors came from elsewhere), disk_bytes, open, ram_bytes. Written to ``out_tsv`` (atomically) when
    given.
    """
    # reads the windows' metadata only: the store opens no window here
    store = index if isinstance(index, WindowStore) else WindowStore(index, max_open=1)
    rows = []
    for meta in store.meta:
        ram = store.open_ram_bytes(meta["window"])
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
                "open": ram is not None,
                "ram_bytes": ram if ram is not None else 0,
            }
        )
    table = pd.DataFrame(rows)
    log.info(
        "%d windows, %d rows: %s of indexes on disk, %.1fs of builds; %d open holding ~%s; process RSS %s",
        len(table),
        int(table["n"].sum()),
        format_bytes(table["disk_bytes"].sum()),
        table["build_seconds"].sum(),
        int(table["open"].sum()),
        format_bytes(table["ram_bytes"].sum()),
        format_bytes(psutil.Process().memory_info().rss),
    )
    if out_tsv is not None:
        write_tsv(table, out_tsv)
    return table
