"""Device-resident cache of tokenised samples with LRU eviction (the seed's GPUMemoryDataset).

:class:`DeviceCacheDataset` wraps a dataset whose items are dicts of tensors (here the
int32 ``input_ids`` / ``labels`` of :class:`~selectflow.train.data.TokenizedDataset`):

* a **miss** computes the item from the wrapped dataset (tokenisation) and stores it on
  the device;
* the device tier holds at most ``max_items`` samples and ``max_bytes`` bytes; when full,
  the least recently used sample is **evicted** to host memory (the fallback tier), so a
  later access is a **host hit** (a copy back, no re-tokenisation) that promotes it again;
* a **device hit** returns the cached device tensors.

A real out-of-memory error while storing on the device freezes the device tier at its
current size instead of failing the run. On CPU the "device" is the CPU: the cache then
saves the tokenisation only. Counts are in :meth:`stats` and logged by :meth:`log_stats`.
Not thread-safe: one loading thread (the main one or the prefetch thread) reads it.
"""

from __future__ import annotations

import logging
from collections import OrderedDict

import torch

from selectflow.runtime.oom import free_memory, is_oom

log = logging.getLogger(__name__)


def _nbytes(item: dict[str, torch.Tensor]) -> int:
    return sum(t.numel() * t.element_size() for t in item.values())


class DeviceCacheDataset(torch.utils.data.Dataset):
    """LRU cache of ``base[i]`` on ``device`` (≤ ``max_items`` samples, ≤ ``max_bytes`` bytes)."""

    def __init__(self, base, device: torch.device, max_items: int, max_bytes: int | None = None):
        self.base = base
        self.device = torch.device(device)
        self.max_items = int(max_items)
        self.max_bytes = None if max_bytes is None else int(max_bytes)
        self._device: OrderedDict[int, dict[str, torch.Tensor]] = OrderedDict()
        self._host: dict[int, dict[str, torch.Tensor]] = {}
        self.device_bytes = 0
        self.device_hits = self.host_hits = self.misses = self.evictions = 0

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        index = int(index)
        item = self._device.get(index)
        if item is not None:
            self._device.move_to_end(index)
            self.device_hits += 1
            return item
        host = self._host.pop(index, None)
        if host is not None:
            self.host_hits += 1
        else:
            self.misses += 1
            host = self.base[index]
        return self._admit(index, host)

    def _fits(self, size: int) -> bool:
        return len(self._device) < self.max_items and (
            self.max_bytes is None or self.device_bytes + size <= self.max_bytes
        )

    def _admit(self, index: int, host: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        size = _nbytes(host)
        if self.max_items < 1 or (self.max_bytes is not None and size > self.max_bytes):
            self._host[index] = host
            return host
        while self._device and not self._fits(size):
            old, old_item = self._device.popitem(last=False)
            self.device_bytes -= _nbytes(old_item)
            self._host[old] = {k: t.cpu() for k, t in old_item.items()}
            self.evictions += 1
        try:
            item = {k: t.to(self.device) for k, t in host.items()}
        except Exception as exc:  # noqa: BLE001 - filtered by is_oom
            if not is_oom(exc):
                raise
            del exc
            free_memory()
            self.max_items = len(self._device)
            log.warning(
                "device cache: out of memory at %d samples (%.1f MiB); the cache stays at that size",
                self.max_items,
                self.device_bytes / 2**20,
            )
            self._host[index] = host
            return host
        self._device[index] = item
        self.device_bytes += size
        return item

    def stats(self) -> dict[str, int]:
        """Hit / miss / eviction counts and the current fill of both tiers."""
        return {
            "device_hits": self.device_hits,
            "host_hits": self.host_hits,
            "misses": self.misses,
            "evictions": self.evictions,
            "device_items": len(self._device),
            "host_items": len(self._host),
            "device_bytes": self.device_bytes,
        }

    def log_stats(self, when: str) -> None:
        s = self.stats()
        total = s["device_hits"] + s["host_hits"] + s["misses"]
        log.info(
            "device cache (%s): %d device hits, %d host hits, %d misses, %d evictions (hit rate %.1f%%); "
            "%d samples / %.2f MiB on %s, %d on host",
            when,
            s["device_hits"],
            s["host_hits"],
            s["misses"],
            s["evictions"],
            100.0 * s["device_hits"] / max(total, 1),
            s["device_items"],
            s["device_bytes"] / 2**20,
            self.device,
            s["host_items"],
        )
