"""A caching allocator per device: freed blocks are kept by size class and handed out again.

Sizes are rounded up (512 B granules below 1 MiB, 1 MiB granules above), so a model loaded and
unloaded repeatedly reuses the same blocks and the footprint stays flat.
"""
from __future__ import annotations

import threading
from collections import defaultdict
from dataclasses import dataclass

from opencann.errors import AclError, ErrorCode

SMALL, LARGE, LARGE_FROM = 512, 1 << 20, 1 << 20


def round_size(nbytes: int) -> int:
    granule = SMALL if nbytes < LARGE_FROM else LARGE
    return max(granule, -(-nbytes // granule) * granule)


@dataclass
class AllocatorStats:
    in_use: int = 0  # bytes handed out and not yet freed
    peak: int = 0  # highest in_use so far
    cached: int = 0  # bytes of freed blocks kept for reuse
    allocations: int = 0  # calls that had to ask the device for memory

    @property
    def reserved(self) -> int:
        """All memory the allocator holds from the device."""
        return self.in_use + self.cached


class CachingAllocator:
    """Thread-safe; ``malloc`` returns a device buffer of at least ``nbytes``."""

    def __init__(self, device, limit: int | None = None):
        self.device = device
        self.limit = limit if limit is not None else device.total_memory or None
        self._cache: dict[int, list] = defaultdict(list)
        self._live: dict[int, tuple[object, int]] = {}  # ptr -> (buffer, rounded size)
        self._lock = threading.Lock()
        self.stats = AllocatorStats()

    def malloc(self, nbytes: int):
        if not isinstance(nbytes, int) or nbytes < 0:
            raise AclError(ErrorCode.INVALID_PARAM, f"allocation size must be a non-negative int, got {nbytes!r}")
        size = round_size(nbytes)
        with self._lock:
            if self._cache[size]:
                buf = self._cache[size].pop()
                self.stats.cached -= size
            else:
                if self.limit is not None and self.stats.reserved + size > self.limit:
                    self._release_cache()
                    if self.stats.reserved + size > self.limit:
                        raise AclError(ErrorCode.BAD_ALLOC, f"cannot allocate {nbytes} bytes: {self.stats.in_use} "
                                       f"in use of the device's {self.limit}")
                buf = self.device.alloc(size)
                self.stats.allocations += 1
            self._live[buf.ptr] = (buf, size)
            self.stats.in_use += size
            self.stats.peak = max(self.stats.peak, self.stats.in_use)
        return buf

    def free(self, buf) -> None:
        with self._lock:
            entry = self._live.pop(getattr(buf, "ptr", None), None)
            if entry is None or entry[0] is not buf:
                raise AclError(ErrorCode.INVALID_PARAM, "free of memory this allocator did not hand out "
                               "(or already freed)")
            size = entry[1]
            self.stats.in_use -= size
            self.stats.cached += size
            self._cache[size].append(buf)

    def owner_of(self, ptr: int):
        """The live buffer starting at ``ptr``, or None."""
        entry = self._live.get(ptr)
        return entry[0] if entry else None

    def empty_cache(self) -> None:
        """Give every cached block back to the device."""
        with self._lock:
            self._release_cache()

    def _release_cache(self) -> None:
        for blocks in self._cache.values():
            for buf in blocks:
                self.device.free(buf)
        self._cache.clear()
        self.stats.cached = 0
