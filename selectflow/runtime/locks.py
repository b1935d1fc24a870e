"""Stale Snakemake locks: a run killed with SIGKILL leaves ``.snakemake/locks/`` behind.

Snakemake then refuses every later run in the folder until ``snakemake --unlock``. The
workflow calls :func:`clear_stale_locks` at start-up (main process only): when no other
live Snakemake process works in this folder, the locks are stale and are removed, so the
README command alone resumes a killed run.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import psutil

log = logging.getLogger(__name__)


def _other_snakemake_here(workdir: Path) -> psutil.Process | None:
    me = psutil.Process()
    mine = {me.pid, *(p.pid for p in me.parents())}
    for proc in psutil.process_iter(["pid", "cmdline"]):
        try:
            if proc.pid in mine or not any("snakemake" in part for part in proc.info["cmdline"] or []):
                continue
            if Path(proc.cwd()).resolve() == workdir:
                return proc
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return None


def clear_stale_locks(workdir: str | os.PathLike = ".") -> list[Path]:
    """Remove ``.snakemake/locks/*`` when no other Snakemake process runs in ``workdir``."""
    workdir = Path(workdir).resolve()
    locks = sorted((workdir / ".snakemake" / "locks").glob("*.lock"))
    if not locks:
        return []
    other = _other_snakemake_here(workdir)
    if other is not None:
        log.info("Snakemake process %d is running in %s; its locks stay", other.pid, workdir)
        return []
    for lock in locks:
        lock.unlink(missing_ok=True)
    print(f"selectflow: removed {len(locks)} stale Snakemake lock(s) left by a killed run in {workdir}")
    return locks
