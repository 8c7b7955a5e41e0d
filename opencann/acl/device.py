"""Devices: count, select, reset, properties."""
from __future__ import annotations

from dataclasses import dataclass

from opencann.acl import state
from opencann.acl.state import STATE, initialized


@dataclass(frozen=True)
class DeviceProperties:
    id: int
    kind: str  # "cpu" or "cuda"
    name: str
    total_memory: int  # bytes
    cores: int


@initialized
def device_count() -> int:
    return len(STATE.devices)


@initialized
def set_device(device_id: int) -> None:
    """Make ``device_id`` this thread's device (creating its default context on first use)."""
    from opencann.acl.context import Context

    state.device(device_id)
    with STATE.lock:
        if device_id not in STATE.default_contexts:
            STATE.default_contexts[device_id] = Context(device_id)
    STATE.local.device_id = device_id
    STATE.local.context = STATE.default_contexts[device_id]


@initialized
def reset_device(device_id: int) -> None:
    """Release the device's default context and cached memory."""
    state.device(device_id)
    with STATE.lock:
        ctx = STATE.default_contexts.pop(device_id, None)
        if ctx is not None:
            ctx.destroy()
        if device_id in STATE.allocators:
            STATE.allocators[device_id].empty_cache()
    if getattr(STATE.local, "device_id", None) == device_id:
        STATE.local.__dict__.clear()


@initialized
def get_device() -> int:
    from opencann.errors import AclError, ErrorCode

    device_id = getattr(STATE.local, "device_id", None)
    if device_id is None:
        raise AclError(ErrorCode.INVALID_DEVICE, "no device set on this thread: call acl.set_device(id)")
    return device_id


@initialized
def device_properties(device_id: int) -> DeviceProperties:
    dev = state.device(device_id)
    return DeviceProperties(device_id, dev.kind, dev.name, dev.total_memory, getattr(dev, "cores", 1))
