"""Host and device memory readings during training.

* :func:`memory_snapshot` → host RSS and available memory (psutil) and, on CUDA, the
  allocator's allocated / reserved / peak bytes (``torch.cuda``), all in MiB
  (``0.0`` for the device figures on CPU).
* :class:`MemoryMonitor` samples every ``interval`` optimizer steps into rows for
  ``memory.tsv`` (and the log), and calls ``torch.cuda.empty_cache()`` every
  ``empty_cache_every`` steps (0: never) to hand cached blocks back to the driver.
"""

from __future__ import annotations

import logging
import os
import time

import pandas as pd
import psutil
import torch

from selectflow.runtime.tables import write_tsv

log = logging.getLogger(__name__)

MIB = 2**20
MEMORY_COLUMNS = [
    "step",
    "time_s",
    "host_rss_mb",
    "host_available_mb",
    "gpu_allocated_mb",
    "gpu_reserved_mb",
    "gpu_peak_mb",
]


def memory_snapshot(device: torch.device) -> dict[str, float]:
    """Current host RSS / available and device allocated / reserved / peak, in MiB."""
    vm = psutil.virtual_memory()
    snap = {
        "host_rss_mb": psutil.Process(os.getpid()).memory_info().rss / MIB,
        "host_available_mb": vm.available / MIB,
        "gpu_allocated_mb": 0.0,
        "gpu_reserved_mb": 0.0,
        "gpu_peak_mb": 0.0,
    }
    if device.type == "cuda":
        snap.update(
            gpu_allocated_mb=torch.cuda.memory_allocated(device) / MIB,
            gpu_reserved_mb=torch.cuda.memory_reserved(device) / MIB,
            gpu_peak_mb=torch.cuda.max_memory_allocated(device) / MIB,
        )
    return snap


def write_rows(path: str | os.PathLike, rows: list[dict], columns: list[str]) -> None:
    """Write ``rows`` as a tab-separated table (atomically, 6 significant digits)."""
    write_tsv(pd.DataFrame(rows, columns=columns), path, float_format="%.6g")


class MemoryMonitor:
    """Samples :func:`memory_snapshot` every ``interval`` steps; empties the CUDA cache on a schedule."""

    def __init__(self, device: torch.device, interval: int, empty_cache_every: int, rows: list[dict] | None = None):
        self.device = device
        self.interval = interval
        self.empty_cache_every = empty_cache_every
        self.rows: list[dict] = list(rows or [])
        self._t0 = time.perf_counter() - (self.rows[-1]["time_s"] if self.rows else 0.0)

    def sample(self, step: int) -> dict[str, float]:
        row = {"step": step, "time_s": time.perf_counter() - self._t0, **memory_snapshot(self.device)}
        self.rows.append(row)
        log.info(
            "memory at step %d: host RSS %.0f MiB (available %.0f MiB); device allocated %.0f MiB, "
            "reserved %.0f MiB, peak %.0f MiB",
            step,
            row["host_rss_mb"],
            row["host_available_mb"],
            row["gpu_allocated_mb"],
            row["gpu_reserved_mb"],
            row["gpu_peak_mb"],
        )
        return row

    def after_step(self, step: int) -> None:
        """Call after optimizer step ``step`` (1-based)."""
        if self.interval and step % self.interval == 0:
            self.sample(step)
        if self.empty_cache_every and step % self.empty_cache_every == 0 and self.device.type == "cuda":
            torch.cuda.empty_cache()

    def write(self, path: str | os.PathLike) -> None:
        write_rows(path, self.rows, MEMORY_COLUMNS)
