"""Streams (ordered, asynchronous work queues) and events."""
from __future__ import annotations

from opencann.acl.context import current_context
from opencann.acl.state import initialized
from opencann.errors import AclError, ErrorCode


class Stream:
    """Work enqueued on a stream runs in order, asynchronously to the host."""

    def __init__(self):
        self.context = current_context()
        self._impl = self.context.device.stream()
        self.context.streams.append(self)
        self.alive = True

    def enqueue(self, fn) -> None:
        self._check()
        self._impl.enqueue(fn)

    def synchronize(self) -> None:
        """Block until the work enqueued so far is done; raises the first error it hit."""
        self._check()
        self._impl.synchronize()

    def wait_event(self, event: Event) -> None:
        """Work enqueued after this waits until ``event`` completes."""
        self._check()
        self._impl.wait_event(event._impl)

    def destroy(self) -> None:
        if self.alive:
            self._impl.destroy()
            self.alive = False
            if self in self.context.streams:
                self.context.streams.remove(self)

    def _check(self) -> None:
        if not self.alive:
            raise AclError(ErrorCode.INVALID_RESOURCE_HANDLE, "stream was destroyed")


class Event:
    def __init__(self):
        self._impl = current_context().device.event()
        self.recorded = False

    def record(self, stream: Stream) -> None:
        stream._check()  # before the event is marked pending, or it would never complete
        self._impl.record(stream._impl)
        self.recorded = True

    def synchronize(self) -> None:
        self._impl.synchronize()

    def query(self) -> bool:
        """True when the work before the record has completed (or it was never recorded)."""
        return self._impl.query()

    def destroy(self) -> None:
        self._impl.synchronize()


@initialized
def create_stream() -> Stream:
    return Stream()


@initialized
def create_event() -> Event:
    return Event()


@initialized
def elapsed_time(start: Event, end: Event) -> float:
    """Milliseconds between two completed events."""
    if not (start.recorded and end.recorded):
        raise AclError(ErrorCode.INVALID_PARAM, "both events must be recorded")
    if not (start.query() and end.query()):  # a re-recorded event still holds its previous timestamp
        raise AclError(ErrorCode.INVALID_PARAM, "both events must be complete: synchronize them first")
    return start._impl.elapsed_ms(end._impl)
