"""The CPU device: aligned host buffers, streams as ordered worker threads, events with timestamps."""
from __future__ import annotations

import os
import platform
import queue
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from opencann.errors import AclError, ErrorCode

ALIGNMENT = 64


class CpuBuffer:
    """``nbytes`` of host memory whose first byte is ``ALIGNMENT``-aligned."""

    __slots__ = ("device", "nbytes", "_raw", "array", "ptr")

    def __init__(self, device: CpuDevice, nbytes: int):
        if nbytes < 0:
            raise AclError(ErrorCode.INVALID_PARAM, f"cannot allocate {nbytes} bytes")
        self.device = device
        self.nbytes = nbytes
        try:
            self._raw = np.empty(nbytes + ALIGNMENT, dtype=np.uint8)
        except MemoryError:
            raise AclError(ErrorCode.BAD_ALLOC, f"out of host memory allocating {nbytes} bytes") from None
        offset = -self._raw.ctypes.data % ALIGNMENT
        self.array = self._raw[offset:offset + nbytes]
        self.ptr = self.array.ctypes.data

    def __repr__(self) -> str:
        return f"<CpuBuffer {self.nbytes} B at {self.ptr:#x}>"


class CpuStream:
    """An ordered queue of work run by one worker thread, asynchronously to the host."""

    def __init__(self):
        self._queue: queue.Queue = queue.Queue()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._work, daemon=True, name="opencann-cpu-stream")
        self._thread.start()

    def _work(self) -> None:
        while True:
            fn = self._queue.get()
            if fn is None:
                self._queue.task_done()
                return
            try:
                if self._error is None or getattr(fn, "always_runs", False):
                    fn()
            except BaseException as exc:  # reported at the next synchronize
                self._error = exc
            finally:
                self._queue.task_done()

    def enqueue(self, fn: Callable[[], Any]) -> None:
        if not self._thread.is_alive():
            raise AclError(ErrorCode.INVALID_RESOURCE_HANDLE, "stream was destroyed")
        self._queue.put(fn)

    def synchronize(self) -> None:
        """Wait until all enqueued work is done; re-raise the first error it hit."""
        self._queue.join()
        if self._error is not None:
            exc, self._error = self._error, None
            if isinstance(exc, AclError):
                raise exc
            raise AclError(ErrorCode.INTERNAL_ERROR, f"work on stream failed: {exc}") from exc

    def wait_event(self, event: CpuEvent) -> None:
        self.enqueue(event.synchronize)

    def destroy(self) -> None:
        if self._thread.is_alive():
            self._queue.put(None)
            self._thread.join()


class CpuEvent:
    """Completes when the work enqueued on its stream before ``record`` has run."""

    def __init__(self):
        self._done = threading.Event()
        self._done.set()
        self.timestamp: float | None = None

    def record(self, stream: CpuStream) -> None:
        self._done.clear()

        def mark() -> None:
            self.timestamp = time.perf_counter()
            self._done.set()

        mark.always_runs = True  # even after a failure on the stream (reported by its synchronize): no waiter hangs
        stream.enqueue(mark)

    def synchronize(self) -> None:
        self._done.wait()

    def query(self) -> bool:
        return self._done.is_set()

    def elapsed_ms(self, end: CpuEvent) -> float:
        if self.timestamp is None or end.timestamp is None:
            raise AclError(ErrorCode.INVALID_PARAM, "both events must be recorded and complete")
        return (end.timestamp - self.timestamp) * 1e3


class CpuDevice:
    kind = "cpu"

    def __init__(self, index: int = 0):
        self.index = index
        self.name = platform.processor() or platform.machine() or "cpu"
        self.cores = os.cpu_count() or 1
        try:
            self.total_memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        except (ValueError, OSError):
            self.total_memory = 0

    def alloc(self, nbytes: int) -> CpuBuffer:
        return CpuBuffer(self, nbytes)

    def free(self, buf: CpuBuffer) -> None:
        buf.array = buf._raw = None

    def view(self, buf: CpuBuffer, dtype: np.dtype, shape: tuple[int, ...]) -> np.ndarray:
        dt = np.dtype(dtype)
        count = int(np.prod(shape, dtype=np.int64))
        if count * dt.itemsize > buf.nbytes:
            raise AclError(ErrorCode.INVALID_PARAM,
                           f"view of {count * dt.itemsize} bytes exceeds the buffer's {buf.nbytes}")
        return buf.array[:count * dt.itemsize].view(dt).reshape(shape)

    def copy(self, dst: CpuBuffer, src: CpuBuffer | np.ndarray, nbytes: int,
             stream: CpuStream | None = None) -> None:
        src_bytes = src.array if isinstance(src, CpuBuffer) else np.ascontiguousarray(src).reshape(-1).view(np.uint8)
        if nbytes > dst.nbytes or nbytes > src_bytes.nbytes:
            raise AclError(ErrorCode.INVALID_PARAM, f"copy of {nbytes} bytes exceeds destination "
                           f"({dst.nbytes}) or source ({src_bytes.nbytes})")

        def do() -> None:
            dst.array[:nbytes] = src_bytes[:nbytes]

        stream.enqueue(do) if stream is not None else do()

    def stream(self) -> CpuStream:
        return CpuStream()

    def event(self) -> CpuEvent:
        return CpuEvent()
