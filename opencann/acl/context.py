"""Contexts: a device plus the streams created in it; each thread has a current context."""
from __future__ import annotations

from opencann.acl import state
from opencann.acl.state import STATE, initialized
from opencann.errors import AclError, ErrorCode


class Context:
    def __init__(self, device_id: int):
        self.device_id = device_id
        self.device = state.device(device_id)
        self.streams: list = []
        self.alive = True
        with STATE.lock:
            STATE.contexts.append(self)

    def check(self) -> None:
        if not self.alive:
            raise AclError(ErrorCode.INVALID_RESOURCE_HANDLE, "context was destroyed")

    def destroy(self) -> None:
        for s in list(self.streams):
            s.destroy()
        self.alive = False
        with STATE.lock:
            if self in STATE.contexts:
                STATE.contexts.remove(self)
        if getattr(STATE.local, "context", None) is self:
            STATE.local.context = None

    def __repr__(self) -> str:
        return f"<acl.Context device={self.device_id}{'' if self.alive else ' destroyed'}>"


@initialized
def create_context(device_id: int) -> Context:
    """A new context on ``device_id``, made current for this thread (as aclrtCreateContext does)."""
    ctx = Context(device_id)
    STATE.local.context = ctx
    STATE.local.device_id = device_id
    return ctx


@initialized
def set_context(ctx: Context) -> None:
    if not isinstance(ctx, Context):
        raise AclError(ErrorCode.INVALID_PARAM, f"expected an acl.Context, got {type(ctx).__name__}")
    ctx.check()
    STATE.local.context = ctx
    STATE.local.device_id = ctx.device_id


@initialized
def current_context() -> Context:
    ctx = getattr(STATE.local, "context", None)
    if ctx is None or not ctx.alive:
        raise AclError(ErrorCode.INVALID_RESOURCE_HANDLE,
                       "no current context on this thread: call acl.set_device() or acl.create_context()")
    return ctx


@initialized
def destroy_context(ctx: Context) -> None:
    ctx.check()
    ctx.destroy()
