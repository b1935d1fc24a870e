"""One small JSON record per Snakemake job, beside its log: what ran, how long, how much memory.

:func:`selectflow.runtime.jobs.run_job` starts a :class:`JobRecord` before the job's body
and finishes it when the body ends, however it ends; the record is written atomically to
``{log}.job.json`` and replaced by every attempt, so it describes the job's last attempt.
The report (:mod:`selectflow.report.resources`) reads these records with
:func:`read_job_records` instead of parsing log text.

A record holds: ``version``, ``rule``, ``log``, ``wildcards``, ``attempt``, ``size_name`` and
``size`` (the attempt-scaled resource, or null), ``start`` / ``end`` (POSIX seconds),
``seconds`` (wall time of the body), ``status`` (:data:`STATUSES`), ``error`` (the exception
type of a failed attempt, else null), ``peak_host_rss_mb`` and ``gpu_peak_allocated_mb`` /
``gpu_peak_reserved_mb`` (null for a job that did not use CUDA), each rounded to 0.1 MB like
the log's ``rule X done:`` line.
"""

from __future__ import annotations

import json
import logging
import os
import resource
import sys
import time
from pathlib import Path

from selectflow.runtime.errors import EXIT_OOM, EXIT_USER_ERROR
from selectflow.runtime.fsutil import atomic_open

log = logging.getLogger(__name__)

VERSION = 1
SUFFIX = ".job.json"
# status of a finished attempt, by how the body ended (exit code of the job for the failures)
STATUSES = ("done", "input_error", "oom", "error", "interrupted")


def record_path(log_path: str | os.PathLike) -> Path:
    """The record of the job whose ``log:`` file is ``log_path``."""
    return Path(f"{log_path}{SUFFIX}")


def peak_memory() -> dict[str, float | None]:
    """Peak host RSS of this process and, when CUDA was used, peak GPU memory allocated / reserved (MB)."""
    peaks = {
        "peak_host_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "gpu_peak_allocated_mb": None,
        "gpu_peak_reserved_mb": None,
    }
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized():
        peaks["gpu_peak_allocated_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
        peaks["gpu_peak_reserved_mb"] = round(torch.cuda.max_memory_reserved() / 2**20, 1)
    return peaks


def status_of(exc: BaseException | None) -> tuple[str, str | None]:
    """``(status, error type)`` of a job body that ended with ``exc`` (None: it returned)."""
    if exc is None:
        return "done", None
    if isinstance(exc, SystemExit):
        # run_job turns every error into sys.exit(code); the error itself is the exit's context
        cause = exc.__context__
        status = {EXIT_OOM: "oom", EXIT_USER_ERROR: "input_error"}.get(exc.code, "error")
        return status, type(cause).__name__ if cause is not None else f"exit {exc.code}"
    if isinstance(exc, KeyboardInterrupt):
        return "interrupted", type(exc).__name__
    return "error", type(exc).__name__


class JobRecord:
    """The record of one attempt of one job: :meth:`start` it, then :meth:`finish` it."""

    def __init__(self, fields: dict):
        self.fields = fields

    @classmethod
    def start(cls, snakemake, size_name: str | None = None) -> JobRecord:
        """Begin the record of the job ``snakemake`` (the script's object) describes, now."""
        wildcards = getattr(snakemake, "wildcards", None)
        return cls(
            {
                "version": VERSION,
                "rule": snakemake.rule,
                "log": str(snakemake.log[0]),
                "wildcards": {k: str(v) for k, v in wildcards.items()} if wildcards is not None else {},
                "attempt": int(snakemake.resources.get("attempt", 1)),
                "size_name": size_name,
                "size": snakemake.resources.get(size_name) if size_name else None,
                "start": time.time(),
            }
        )

    def finish(self, exc: BaseException | None) -> None:
        """Write the record atomically, the body having ended with ``exc``; never raises."""
        status, error = status_of(exc)
        end = time.time()
        record = {
            **self.fields,
            "end": end,
            "seconds": round(end - self.fields["start"], 3),
            "status": status,
            "error": error,
            **peak_memory(),
        }
        try:
            with atomic_open(record_path(record["log"]), "w", encoding="utf-8") as fh:
                json.dump(record, fh, indent=1, default=str)
        except OSError as err:  # the job's own outcome matters more than its record
            log.warning("could not write the job record %s: %s", record_path(record["log"]), err)


def read_job_records(log_dir: str | os.PathLike) -> dict[str, dict]:
    """``{job: record}`` of every ``*.log.job.json`` under ``log_dir``, ``job`` being the log's
    path relative to ``log_dir`` without ``.log``; unreadable records are skipped (logged)."""
    log_dir = Path(log_dir)
    records = {}
    for path in sorted(log_dir.rglob(f"*{SUFFIX}")) if log_dir.is_dir() else []:
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            log.warning("skipping unreadable job record %s: %s", path, exc)
            continue
        log_file = path.relative_to(log_dir).as_posix()[: -len(SUFFIX)]
        records[Path(log_file).with_suffix("").as_posix()] = record
    return records
