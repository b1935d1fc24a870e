"""Background prefetching of batches onto the device (the seed's PrefetchDataLoader).

:class:`PrefetchLoader` iterates a source of batches (dicts of tensors, e.g. a
``DataLoader``) in a daemon thread, moves each batch to ``device`` and keeps up to
``prefetch_factor`` batches ready in a bounded queue, so loading, tokenisation and the
host→device copy of batch ``k+1`` overlap the compute on batch ``k``.

On CUDA the copies run on a side stream with ``non_blocking=True`` (truly asynchronous
from pinned memory, hence ``pin_memory``); the consumer's stream waits on an event
recorded after each batch's copies, and ``record_stream`` keeps the allocator from
reusing a batch's memory while the compute stream still reads it. On CPU the thread still
runs ahead (tokenisation and collation overlap the step).

Batches come out in source order; an exception in the thread is re-raised in the
consumer; :meth:`close` (or leaving the ``with`` block, or exhausting the iterator)
stops and joins the thread.
"""

from __future__ import annotations

import contextlib
import queue
import threading
from collections.abc import Iterable, Iterator

import torch

_END = object()


def move_batch(
    batch: dict[str, torch.Tensor], device: torch.device, pin_memory: bool = False
) -> dict[str, torch.Tensor]:
    """Copy a batch to ``device`` (non-blocking; pinned first when asked and it is on the host)."""
    out = {}
    for key, t in batch.items():
        if pin_memory and t.device.type == "cpu" and device.type == "cuda":
            t = t.pin_memory()
        out[key] = t.to(device, non_blocking=True)
    return out


class PrefetchLoader:
    """Iterate ``source`` in a thread, ``prefetch_factor`` device batches ahead."""

    def __init__(
        self,
        source: Iterable[dict[str, torch.Tensor]],
        device: torch.device,
        prefetch_factor: int = 2,
        pin_memory: bool = False,
    ):
        if prefetch_factor < 1:
            raise ValueError(f"prefetch_factor must be >= 1, got {prefetch_factor}")
        self.source = source
        self.device = torch.device(device)
        self.pin_memory = pin_memory
        self._queue: queue.Queue = queue.Queue(maxsize=prefetch_factor)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._cuda = self.device.type == "cuda"

    def __enter__(self) -> PrefetchLoader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _put(self, item) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _produce(self) -> None:
        stream = torch.cuda.Stream(device=self.device) if self._cuda else None
        try:
            source = iter(self.source)
            while not self._stop.is_set():
                # the source runs on the side stream too: device-side collation (cache hits) and
                # cache fills then overlap the compute stream instead of queueing behind it
                with torch.cuda.stream(stream) if stream is not None else contextlib.nullcontext():
                    batch = next(source, _END)
                    if batch is _END:
                        break
                    batch = move_batch(batch, self.device, self.pin_memory)
                    ready = None
                    if stream is not None:
                        ready = torch.cuda.Event()
                        ready.record(stream)
                if not self._put((batch, ready)):
                    return
            self._put(_END)
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer
            self._put(exc)

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        if self._thread is not None:
            raise RuntimeError("a PrefetchLoader can be iterated once")
        self._thread = threading.Thread(target=self._produce, name="prefetch", daemon=True)
        self._thread.start()
        try:
            while True:
                item = self._queue.get()
                if item is _END:
                    return
                if isinstance(item, BaseException):
                    raise item
                batch, ready = item
                if ready is not None:
                    current = torch.cuda.current_stream(self.device)
                    current.wait_event(ready)
                    for t in batch.values():
                        t.record_stream(current)
                yield batch
        finally:
            self.close()

    def close(self) -> None:
        """Stop the thread (it may be blocked on a full queue) and wait for it."""
        self._stop.set()
        while True:
            try:
                self._queue.get_nowait()
            except queue.Empty:
                break
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=30)

    @property
    def alive(self) -> bool:
        """True while the background thread runs."""
        return self._thread is not None and self._thread.is_alive()
