"""opencann's own workers (runtime/workers.py): every piece once, on several threads, errors to the caller."""
import threading
import time

import numpy as np
import pytest

from opencann.errors import AclError
from opencann.runtime import workers


def test_every_piece_runs_once_and_helpers_share_the_work(two_workers):
    seen, threads = [], set()

    def piece(i):
        time.sleep(0.002)  # releases the GIL, as a piece's kernel does
        seen.append(i)
        threads.add(threading.get_ident())

    workers.parallel_for(piece, 16)
    assert sorted(seen) == list(range(16))
    assert len(threads) == 2


def test_results_match_the_serial_loop(two_workers):
    x = np.random.default_rng(0).standard_normal((64, 300)).astype(np.float32)
    out = np.empty_like(x)
    workers.parallel_for(lambda i: np.exp(x[8 * i:8 * i + 8], out=out[8 * i:8 * i + 8]), 8)
    np.testing.assert_array_equal(out, np.exp(x))


def test_one_thread_runs_on_the_caller():
    before = workers.size()
    workers.set_size(1)
    try:
        threads = set()
        workers.parallel_for(lambda i: threads.add(threading.get_ident()), 5)
        assert threads == {threading.get_ident()}
    finally:
        workers.set_size(before)


def test_a_failing_piece_raises_in_the_caller_after_the_others(two_workers):
    done = []

    def piece(i):
        if i == 3:
            raise ValueError("piece 3")
        done.append(i)

    with pytest.raises(ValueError, match="piece 3"):
        workers.parallel_for(piece, 8)
    assert sorted(done) == [0, 1, 2, 4, 5, 6, 7]
    workers.parallel_for(lambda i: None, 4)  # the pool still works


def test_nested_calls_run_serially(two_workers):
    inner = []
    workers.parallel_for(lambda i: workers.parallel_for(lambda j: inner.append((i, j)), 3), 4)
    assert sorted(inner) == [(i, j) for i in range(4) for j in range(3)]


def test_size_is_validated():
    for bad in (0, -1, 1.5, True, "2"):
        with pytest.raises(AclError, match="positive int"):
            workers.set_size(bad)
