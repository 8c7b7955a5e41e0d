"""Fixtures shared by the test modules."""
import pytest


@pytest.fixture
def two_workers():
    """opencann's workers at two threads for the test (:mod:`opencann.runtime.workers`), then as before."""
    from opencann.runtime import workers

    before = workers.size()
    workers.set_size(2)
    yield
    workers.set_size(before)
