"""Tab-separated tables: the one writer (atomic) and the one reader of the workflow's TSV files.

Sample ids and dataset names always stay strings ("NA" and "007" included); a numeric column
listed in ``nan_columns`` reads the literal ``nan`` as a missing value.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

import pandas as pd

from selectflow.runtime.errors import SelectFlowError
from selectflow.runtime.fsutil import atomic_open

ID_COLUMNS = {"sample_id": str, "dataset": str}


def write_tsv(
    table: pd.DataFrame, path: str | os.PathLike, *, float_format: str | None = None, na_rep: str = ""
) -> None:
    """Write ``table`` (no index) to ``path`` atomically: readers see the old file or the whole new one."""
    with atomic_open(path, "w", encoding="utf-8", newline="") as fh:
        table.to_csv(fh, sep="\t", index=False, float_format=float_format, na_rep=na_rep)


def read_tsv(
    path: str | os.PathLike, what: str, *, nan_columns: Iterable[str] = (), dtype: dict | None = None
) -> pd.DataFrame:
    """Read a table the workflow wrote; a missing file is a :class:`SelectFlowError` naming ``what``."""
    if not Path(path).is_file():
        raise SelectFlowError(f"{what} {path} is missing; rerun snakemake to rebuild it")
    return pd.read_csv(
        path,
        sep="\t",
        dtype={**ID_COLUMNS, **(dtype or {})},
        keep_default_na=False,
        na_values={name: ["nan"] for name in nan_columns},
    )
