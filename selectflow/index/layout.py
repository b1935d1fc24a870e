"""The files of one window index on disk, and their metadata.

One window = one index file plus two small files beside it (``index_dir/``)::

    window_00003.faiss     the FAISS index (rows 0..n-1 of the window)
    window_00003.ids.tsv   row → sample_id (columns ``row``, ``sample_id``)
    window_00003.json      metadata, written last: layout_version, window, n_windows, kind
                           ("items" | "positions"), span, n, dim, index_type, metric,
                           built_on, build_seconds, file sizes (a window without it is
                           unfinished)

:mod:`selectflow.index.build` writes them, :mod:`selectflow.index.store` searches them,
:mod:`selectflow.index.summary` tabulates them.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

from selectflow.runtime.errors import CorruptFileError
from selectflow.schema import schema_enum

LAYOUT_VERSION = 1
REBUILD_HINT = "rule index_window rebuilds it (delete the window's files and rerun snakemake)"
INDEX_TYPES = schema_enum("index", "index_type")
METRICS = {"flat_l2": "l2", "flat_ip": "ip", "flat_l1": "l1", "ivfpq": "l2"}
WINDOW_NAME = re.compile(r"^window_(\d+)$")


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


def read_meta(path: Path) -> dict:
    """A window's metadata JSON; unreadable or of another layout version: :class:`CorruptFileError`."""
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise CorruptFileError(f"window metadata {path} is unreadable ({exc}); {REBUILD_HINT}") from None
    if meta.get("layout_version") != LAYOUT_VERSION:
        raise CorruptFileError(
            f"{path}: layout_version {meta.get('layout_version')!r}, expected {LAYOUT_VERSION}; {REBUILD_HINT}"
        )
    return meta
