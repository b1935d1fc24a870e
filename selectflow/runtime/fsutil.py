"""Atomic file writes: a temp file in the target's folder, then ``os.replace``.

A reader never sees a half-written output, whatever kills the writer.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = ""):
    """Yield a temp path beside ``path``; on clean exit move it onto ``path``.

    On an exception the temp file is removed and ``path`` is left untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix or ".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; results are shared like any file
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "w", **kwargs):
    """Open a temp file for writing that replaces ``path`` when the block ends cleanly."""
    with atomic_path(path) as tmp:
        with open(tmp, mode, **kwargs) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike):
    """Yield a temp folder beside ``path``; on clean exit it replaces ``path`` whole."""
    import shutil

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        yield tmp
        os.chmod(tmp, 0o777 & ~_umask())
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def h5_rows(dataset, rows):
    """Rows ``rows`` (any order, repeats allowed) of an HDF5 dataset, reading only those: h5py takes
    increasing, distinct indices, so they are read sorted and put back in the order asked."""
    import numpy as np

    distinct, back = np.unique(np.asarray(rows, dtype=np.int64), return_inverse=True)
    values = dataset[distinct] if len(distinct) else np.empty((0, *dataset.shape[1:]), dtype=dataset.dtype)
    return values[back]


def h5_write_rows(dataset, rows, values) -> None:
    """Write ``values[i]`` to row ``rows[i]`` of an HDF5 dataset (``rows`` distinct, any order), one
    contiguous run of rows a write."""
    import numpy as np

    rows = np.asarray(rows, dtype=np.int64)
    order = np.argsort(rows, kind="stable")
    rows = rows[order]
    for run in np.split(np.arange(len(rows)), np.flatnonzero(np.diff(rows) != 1) + 1):
        if len(run):
            dataset[rows[run[0]] : rows[run[-1]] + 1] = values[order[run]]


def open_checked_h5(path: str | os.PathLike, what: str, layout_version: int, hint: str):
    """Open a workflow HDF5 file for reading, checked: missing → :class:`SelectFlowError`;
    unreadable, of another ``layout_version`` or without its completeness marker →
    :class:`CorruptFileError`. Every message names the file and ends with ``hint``.
    """
    import h5py

    from selectflow.runtime.errors import CorruptFileError, SelectFlowError

    path = Path(path)
    if not path.is_file():
        raise SelectFlowError(f"{what} {path} is missing; {hint}")
    try:
        f = h5py.File(path, "r")
    except OSError as exc:
        raise CorruptFileError(
            f"{path} is not a readable HDF5 file ({exc}); it is truncated or corrupt; {hint}"
        ) from None
    version = f.attrs.get("layout_version")
    if version != layout_version:
        f.close()
        raise CorruptFileError(f"{path}: layout_version {version!r}, expected {layout_version}; {hint}")
    if not f.attrs.get("complete", False):
        f.close()
        raise CorruptFileError(f"{path}: no completeness marker (half-written); {hint}")
    return f
