"""The Device interface: what every backend (one module each) implements.

Nothing outside ``opencann/devices/`` knows which backend it runs on: the runtime allocates
:class:`Buffer` objects, enqueues work on a :class:`Stream` and records :class:`Event` objects through
this interface.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

import numpy as np


class Buffer(Protocol):
    """A block of device memory of ``nbytes`` bytes."""

    device: Device
    nbytes: int
    ptr: int  # the address, for handles and alignment checks


class Stream(Protocol):
    """An ordered queue of work that runs asynchronously to the host."""

    def enqueue(self, fn: Callable[[], Any]) -> None: ...
    def synchronize(self) -> None: ...
    def wait_event(self, event: Event) -> None: ...


class Event(Protocol):
    """A marker recorded on a stream; completes when the work enqueued before it is done."""

    def record(self, stream: Stream) -> None: ...
    def synchronize(self) -> None: ...
    def query(self) -> bool: ...
    def elapsed_ms(self, end: Event) -> float: ...


class Device(Protocol):
    kind: str  # "cpu", "cuda"
    index: int
    name: str
    total_memory: int

    def alloc(self, nbytes: int) -> Buffer: ...
    def free(self, buf: Buffer) -> None: ...
    def view(self, buf: Buffer, dtype: np.dtype, shape: tuple[int, ...]) -> Any: ...
    def copy(self, dst: Buffer, src: Buffer | np.ndarray, nbytes: int, stream: Stream | None = None) -> None: ...
    def stream(self) -> Stream: ...
    def event(self) -> Event: ...
