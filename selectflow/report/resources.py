"""Resources per job and per rule: the jobs' records and ``benchmark:`` TSVs in, a table and a figure out.

Each job :func:`selectflow.runtime.jobs.run_job` ran left a JSON record beside its log
(:mod:`selectflow.runtime.jobrecord`); rules with a ``benchmark:`` directive also left a
Snakemake benchmark TSV under the benchmarks folder, at the log's relative path.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from selectflow.report.canvas import message, save_png
from selectflow.runtime.jobrecord import read_job_records

COLUMNS = ["rule", "job", "attempts", "seconds", "max_rss_mb", "gpu_peak_mb"]


def read_benchmark(path: str | os.PathLike) -> pd.DataFrame:
    """A Snakemake ``benchmark:`` TSV (``s``, ``h:m:s``, ``max_rss``, …), one row per repeat."""
    return pd.read_csv(path, sep="\t")


def bench_seconds(path: str | os.PathLike) -> float:
    """Mean wall seconds of a benchmark file; NaN when it cannot be read."""
    try:
        return float(read_benchmark(path)["s"].mean())
    except (OSError, ValueError, KeyError):
        return float("nan")


def _mb(value) -> float:
    return float("nan") if value is None else float(value)


def job_resources(log_dir: str | os.PathLike, bench_dir: str | os.PathLike) -> pd.DataFrame:
    """One row per finished job: ``rule, job, attempts, seconds, max_rss_mb, gpu_peak_mb``.

    A job is a record ``{log}.job.json`` under ``log_dir`` whose last attempt is ``done``
    (:mod:`selectflow.runtime.jobrecord`) and/or a ``benchmark:`` TSV under ``bench_dir``
    at the same relative path (the workflow's layout). ``seconds``: the benchmark's wall
    time, else the record's (the job body, without interpreter start-up). ``max_rss_mb``:
    the benchmark's ``max_rss`` (the job's process tree), else the record's
    ``peak_host_rss_mb``. ``gpu_peak_mb``: the record's ``gpu_peak_allocated_mb``, NaN for
    CPU jobs.
    """
    jobs: dict[str, dict] = {}
    for job, record in read_job_records(log_dir).items():
        if record.get("status") != "done":
            continue
        jobs[job] = {
            "rule": record["rule"],
            "attempts": int(record.get("attempt", 1)),
            "seconds": _mb(record.get("seconds")),
            "max_rss_mb": _mb(record.get("peak_host_rss_mb")),
            "gpu_peak_mb": _mb(record.get("gpu_peak_allocated_mb")),
        }
    bench_dir = Path(bench_dir)
    for path in sorted(bench_dir.rglob("*.tsv")) if bench_dir.is_dir() else []:
        bench = read_benchmark(path)
        if bench.empty or "s" not in bench:
            continue
        job = path.relative_to(bench_dir).with_suffix("").as_posix()
        row = jobs.setdefault(job, {"rule": job.split("/")[0], "attempts": 1, "gpu_peak_mb": np.nan})
        row["seconds"] = float(bench["s"].mean())
        rss = pd.to_numeric(bench.get("max_rss"), errors="coerce").max()
        if np.isfinite(rss):
            row["max_rss_mb"] = float(rss)
    return pd.DataFrame([{"job": job, **row} for job, row in sorted(jobs.items())], columns=COLUMNS)


def resources_figure(table: pd.DataFrame, out_png) -> None:
    """Per rule: total runtime (job count), largest peak host RSS, largest GPU peak."""
    fig = Figure(figsize=(12, 1.8 + 0.35 * max(3, table["rule"].nunique())), layout="constrained")
    axes = fig.subplots(1, 3, sharey=True)
    if table.empty:
        fig.suptitle("Resources per rule")
        for ax in axes:
            ax.set_axis_off()
        message(axes[1], "no finished job records or benchmark files found")
        save_png(fig, out_png)
        return
    per_rule = table.groupby("rule", sort=True).agg(
        jobs=("job", "size"),
        seconds=("seconds", lambda s: s.sum(min_count=1)),
        rss=("max_rss_mb", "max"),
        gpu=("gpu_peak_mb", "max"),
        retried=("attempts", lambda a: int((a > 1).sum())),
    )
    y = np.arange(len(per_rule))
    labels = [f"{rule} ({jobs} job{'s' if jobs > 1 else ''})" for rule, jobs in zip(per_rule.index, per_rule["jobs"])]
    panels = [
        (axes[0], per_rule["seconds"], "C0", "total runtime (s)"),
        (axes[1], per_rule["rss"], "C1", "peak host RSS of one job (MB)"),
        (axes[2], per_rule["gpu"], "C2", "peak GPU memory allocated (MB)"),
    ]
    for ax, values, colour, title in panels:
        ax.set_title(title, fontsize=10)
        if values.isna().all():
            ax.set_xticks([])
            ax.text(
                0.5,
                0.5,
                "no GPU job in this run\n(all jobs ran on CPU)" if ax is axes[2] else "not recorded",
                transform=ax.transAxes,
                ha="center",
                va="center",
                fontsize=10,
            )
            continue
        ax.barh(y, values.fillna(0).to_numpy(), color=colour)
        for yi, v in zip(y, values):
            ax.text(0, yi, " n/a" if np.isnan(v) else f" {v:,.1f}", va="center", fontsize=8)
        ax.grid(axis="x", alpha=0.3)
    axes[0].set_yticks(y, labels)
    axes[0].invert_yaxis()
    retried = int(per_rule["retried"].sum())
    fig.suptitle(f"Resources per rule: {len(table)} finished jobs" + (f", {retried} after a retry" if retried else ""))
    save_png(fig, out_png)
