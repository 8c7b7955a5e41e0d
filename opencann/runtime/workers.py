"""opencann's own intra-op parallelism: a kernel splits its work into independent pieces and
:func:`parallel_for` runs them on the calling thread and on helper threads.

The libraries' pools (MKL's and Numba's GNU OpenMP, OpenBLAS's) split work evenly and meet at barriers: on a
busy machine a barrier waits for a descheduled worker, and idle workers spin for milliseconds, taking the core
from everything else. Here the pieces are claimed one at a time from a shared counter, so the calling thread
never waits for a piece no helper has started (on a busy machine it simply does more of them), and idle
helpers sleep on a queue. A call costs ~7 us. A piece must release the GIL for its heavy part (a Numba kernel
with ``nogil=True``, a BLAS call through ctypes), use per-thread scratch, and run the libraries on one thread
(helpers set MKL to one thread for themselves; the caller wraps its pieces in
:class:`opencann.ops.blas.OneThread`). Nested calls (a piece that splits again) run serially.

``set_size(n)`` sets how many threads take part (1: every piece runs on the caller); the TF adapter sets it per
step (``opencann.tf.enable(threads=n)``) and :func:`opencann.set_num_threads` for everything.
"""
from __future__ import annotations

import itertools
import os
import queue
import threading
from collections.abc import Callable

from opencann.errors import AclError, ErrorCode

_size = 1
_queues: list[queue.SimpleQueue] = []  # one per helper thread, started on first use
_lock = threading.Lock()
_local = threading.local()  # .busy: this thread is running pieces (a nested call runs serially)


def size() -> int:
    """How many threads take part in :func:`parallel_for` (the caller included)."""
    return _size


def set_size(n: int) -> None:
    """Let ``n`` threads (>= 1, the caller included) run the pieces of each :func:`parallel_for`."""
    global _size
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise AclError(ErrorCode.INVALID_PARAM, f"workers.set_size: want a positive int, got {n!r}")
    _size = n


class _Job:
    def __init__(self, fn: Callable[[int], None], count: int):
        self.fn, self.count, self.claims = fn, count, itertools.count()
        self.lock, self.done, self.finished, self.error = threading.Lock(), 0, threading.Event(), None

    def work(self) -> None:
        """Claim and run pieces until none is left."""
        _local.busy = True
        try:
            for i in self.claims:  # next() on itertools.count is atomic under the GIL
                if i >= self.count:
                    return
                try:
                    self.fn(i)
                except BaseException as exc:  # noqa: BLE001 - handed to the caller
                    self.error = self.error or exc
                with self.lock:
                    self.done += 1
                    if self.done == self.count:
                        self.finished.set()
        finally:
            _local.busy = False


def _helper(jobs: queue.SimpleQueue) -> None:
    from opencann.ops import blas

    lib = blas.library()
    if lib is not None:
        lib.MKL_Set_Num_Threads_Local(1)
    while True:
        jobs.get().work()


def _helpers(n: int) -> list[queue.SimpleQueue]:
    """The first ``n`` helpers' queues, starting any that are missing."""
    with _lock:
        while len(_queues) < n:
            jobs: queue.SimpleQueue = queue.SimpleQueue()
            threading.Thread(target=_helper, args=(jobs,), name=f"opencann-worker-{len(_queues)}",
                             daemon=True).start()
            _queues.append(jobs)
        return _queues[:n]


def parallel_for(fn: Callable[[int], None], count: int) -> None:
    """Call ``fn(i)`` once for each ``i`` in ``range(count)``, on up to :func:`size` threads; returns when all
    are done and re-raises the first exception a piece raised."""
    helpers = min(_size, count) - 1
    if helpers <= 0 or getattr(_local, "busy", False):
        for i in range(count):
            fn(i)
        return
    job = _Job(fn, count)
    for jobs in _helpers(helpers):
        jobs.put(job)
    job.work()
    job.finished.wait()
    if job.error is not None:
        raise job.error


def _after_fork() -> None:
    """Threads do not survive ``fork``: a child starts its own helpers."""
    global _lock
    _queues.clear()
    _lock = threading.Lock()


os.register_at_fork(after_in_child=_after_fork)
