"""Out-of-memory handling: recognise OOMs, shrink work adaptively, scale sizes per attempt.

* :func:`is_oom` tells a memory failure (CUDA OOM, host ``MemoryError``, FAISS
  allocation failure) from any other exception.
* :func:`run_adaptive` runs ``fn(lo, hi)`` over ``[start, stop)`` in sub-chunks and halves
  the sub-chunk after an OOM, keeping the sub-chunks already finished.
* :func:`attempt_size` is the size a rule uses on Snakemake attempt ``attempt``;
  :func:`scaled_resource` is the rule's resource function around it.
* :func:`release_heap` hands the C heap's freed holes back to the OS, so that work parsing many
  small objects (a pool's records) does not keep them in the resident set.
"""

from __future__ import annotations

import ctypes
import gc
import logging
from collections.abc import Callable
from typing import TypeVar

log = logging.getLogger(__name__)
T = TypeVar("T")

_OOM_TEXT = (
    "out of memory",
    "cuda error: out of memory",
    "cublas_status_alloc_failed",
    "failed to allocate",
    "std::bad_alloc",
    "cannot allocate memory",
    "can't allocate memory",
)

# Within-job halving of sub-chunks; the job wrapper switches it off when the config says
# so (retry.adaptive_chunks: false), leaving OOMs to the attempt-level retry alone.
_adaptive = True


def set_adaptive(enabled: bool) -> None:
    global _adaptive
    _adaptive = bool(enabled)


def is_oom(exc: BaseException) -> bool:
    """True for errors that mean "not enough memory" (host or device)."""
    if isinstance(exc, MemoryError):
        return True
    try:
        import torch

        if isinstance(exc, torch.cuda.OutOfMemoryError):
            return True
    except ImportError:  # pragma: no cover - torch is a hard dependency
        pass
    if isinstance(exc, RuntimeError):
        text = str(exc).lower()
        return any(t in text for t in _OOM_TEXT)
    return False


def free_memory() -> None:
    """Drop Python garbage and return cached CUDA blocks to the driver."""
    gc.collect()
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except ImportError:  # pragma: no cover
        pass


def release_heap() -> None:
    """Hand the free pages of the C heap back to the OS (glibc's ``malloc_trim(0)``; nothing elsewhere).

    Work that parses many small objects (a shard's JSON records) leaves the heap full of freed holes
    that glibc keeps; arrays allocated later are large enough to be mapped apart, so the holes stay in
    the resident set (about 0.3 KB a pool sample after scanning a pool) unless handed back."""
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:  # pragma: no cover - not glibc
        return
    libc.malloc_trim(0)


def limit_address_space_growth(budget_mb: float) -> int:
    """Cap this process's address space at its current size + ``budget_mb`` (RLIMIT_AS).

    Allocations beyond it fail at once with ``MemoryError`` / an allocator error, which
    the job wrapper treats as an OOM. Returns the limit in bytes.
    """
    import resource

    import psutil

    limit = psutil.Process().memory_info().vms + int(budget_mb * 2**20)
    resource.setrlimit(resource.RLIMIT_AS, (limit, resource.getrlimit(resource.RLIMIT_AS)[1]))
    return limit


def attempt_size(base: int, attempt: int, factor: float, floor: int = 1) -> int:
    """``base`` floor-divided by ``factor`` once per retry (attempt 1 is ``base``), never below ``floor``.

    The one rule for every attempt-scaled size: the rule's resource (``rules/common.smk``,
    with ``retry.factor``) and the job wrapper's "next attempt uses" line. It is applied one
    retry at a time, so ``attempt_size(attempt_size(b, n, f), 2, f) == attempt_size(b, n + 1, f)``:
    the next attempt's size follows from the current one (for an integer factor it equals
    ``b // f ** (attempt - 1)``).
    """
    size = max(int(floor), int(base))
    for _ in range(max(int(attempt), 1) - 1):
        size = max(int(floor), int(size // factor))
    return size


def scaled_resource(base: int, factor: float) -> Callable[[object, int], int]:
    """A Snakemake resource function: ``attempt_size(base, attempt, factor)`` per attempt."""

    def size(wildcards, attempt: int) -> int:
        return attempt_size(base, attempt, factor)

    return size


def run_adaptive(
    fn: Callable[[int, int], T],
    start: int,
    stop: int,
    chunk: int,
    *,
    min_chunk: int = 1,
    what: str = "chunk",
) -> list[T]:
    """Call ``fn(lo, hi)`` over ``[start, stop)`` in pieces of ``chunk``; halve on OOM.

    Finished pieces are kept; the failing piece is retried at half the size. When even
    ``min_chunk`` runs out of memory the OOM is re-raised for the job-level retry.
    """
    results: list[T] = []
    lo = start
    chunk = max(int(chunk), min_chunk)
    while lo < stop:
        hi = min(lo + chunk, stop)
        try:
            results.append(fn(lo, hi))
        except Exception as exc:  # noqa: BLE001 - filtered by is_oom
            if not is_oom(exc) or chunk <= min_chunk or not _adaptive:
                raise
            del exc
            free_memory()
            new = max(min_chunk, chunk // 2)
            log.warning("out of memory on %s [%d, %d) of size %d; retrying with %d", what, lo, hi, chunk, new)
            chunk = new
            continue
        lo = hi
    return results
