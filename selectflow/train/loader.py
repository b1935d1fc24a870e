"""The training batch stream: dataset → (device cache) → DataLoader → (prefetch) → device.

:class:`BatchStream` turns a :class:`~selectflow.train.data.TokenizedDataset` and a list of
micro-batches (lists of sample indices, in training order) into padded int64 batches on
the device (``input_ids`` / ``attention_mask`` / ``labels``, ``[B, T]``), wired by the
resolved ``train:`` keys:

* ``use_gpu_cache``: wrap the dataset in a :class:`~selectflow.train.cache.DeviceCacheDataset`
  (``gpu_cache_size`` samples, ``gpu_cache_bytes``) and pad on the device; worker processes
  cannot share that cache, so ``num_workers`` is then 0;
* ``num_workers`` / ``pin_memory``: the ``DataLoader``'s tokenising workers and pinned
  host batches (CUDA, without the cache);
* ``use_prefetch`` / ``prefetch_factor``: a :class:`~selectflow.train.prefetch.PrefetchLoader`
  thread; otherwise batches are copied to the device as they are consumed.

The trainer and ``bench/bench_loader.py`` both use it, so the benchmark measures the
pipeline the trainer runs.
"""

from __future__ import annotations

import logging
import os
from functools import partial

import torch

from selectflow.config import TrainConfig
from selectflow.runtime.units import parse_bytes
from selectflow.train.cache import DeviceCacheDataset
from selectflow.train.data import pad_collate
from selectflow.train.prefetch import PrefetchLoader, move_batch

log = logging.getLogger(__name__)


class BatchStream:
    """Device batches of ``micro_batches`` (in order) from ``dataset``; close it when done."""

    def __init__(self, dataset, micro_batches: list[list[int]], c: TrainConfig, device: torch.device, pad_id: int):
        self.cache: DeviceCacheDataset | None = None
        workers = c.num_workers
        if c.use_gpu_cache:
            limit = None if c.gpu_cache_bytes is None else parse_bytes(c.gpu_cache_bytes, "train.gpu_cache_bytes")
            dataset = self.cache = DeviceCacheDataset(dataset, device, c.gpu_cache_size, limit)
            if workers:
                log.warning(
                    "train.num_workers=%d ignored with train.use_gpu_cache: the device cache lives in this "
                    "process; loading runs in the %s thread",
                    workers,
                    "prefetch" if c.use_prefetch else "main",
                )
                workers = 0
        if workers:
            os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        loader = torch.utils.data.DataLoader(
            dataset,
            batch_sampler=micro_batches,
            num_workers=workers,
            collate_fn=partial(pad_collate, pad_id=pad_id, device=device if self.cache is not None else None),
            pin_memory=bool(c.pin_memory) and device.type == "cuda" and self.cache is None,
        )
        self._prefetch = PrefetchLoader(loader, device, c.prefetch_factor) if c.use_prefetch else None
        self._batches = self._prefetch if self._prefetch is not None else (move_batch(b, device) for b in loader)

    def __iter__(self):
        return iter(self._batches)

    def __enter__(self) -> BatchStream:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Stop the prefetch thread or the batch generator; either way the DataLoader's workers exit."""
        self._batches.close()
