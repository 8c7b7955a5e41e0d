"""Memory: device and host allocation, copies of every kind (checked against the destination), memset."""
from __future__ import annotations

from enum import IntEnum

import numpy as np

from opencann.acl import state
from opencann.acl.context import current_context
from opencann.acl.state import STATE, initialized
from opencann.errors import AclError, ErrorCode


class MemcpyKind(IntEnum):
    HOST_TO_HOST = 0
    HOST_TO_DEVICE = 1
    DEVICE_TO_HOST = 2
    DEVICE_TO_DEVICE = 3
    DEFAULT = 4


class MallocPolicy(IntEnum):
    HUGE_FIRST = 0
    HUGE_ONLY = 1
    NORMAL_ONLY = 2
    HUGE_FIRST_P2P = 3
    HUGE_ONLY_P2P = 4
    NORMAL_ONLY_P2P = 5


class Memory:
    """A block of device or host memory from acl.malloc / acl.malloc_host."""

    def __init__(self, buf, size: int, on_device: bool, device_id: int, allocator):
        self._buf = buf
        self.size = size
        self.on_device = on_device
        self.device_id = device_id
        self._allocator = allocator

    @property
    def ptr(self) -> int:
        self._check()
        return self._buf.ptr

    @property
    def freed(self) -> bool:
        return self._buf is None

    def numpy(self, dtype=np.uint8, shape: tuple[int, ...] | None = None) -> np.ndarray:
        """A NumPy view of (the start of) this memory; host memory only, as on a real accelerator."""
        self._check()
        if self.on_device and STATE.devices[self.device_id].kind != "cpu":
            raise AclError(ErrorCode.INVALID_PARAM, "device memory is not host-visible: memcpy it to host first")
        dt = np.dtype(dtype)
        shape = (self.size // dt.itemsize,) if shape is None else tuple(np.atleast_1d(shape).tolist())
        if int(np.prod(shape, dtype=np.int64)) * dt.itemsize > self.size:
            raise AclError(ErrorCode.INVALID_PARAM, f"a {dt.name} view of shape {list(shape)} exceeds the "
                           f"memory's {self.size} bytes")
        return self._buf.device.view(self._buf, dt, shape)

    def _raw(self) -> np.ndarray:
        self._check()
        return self._buf.array[:self.size]

    def _check(self) -> None:
        if self._buf is None:
            raise AclError(ErrorCode.INVALID_PARAM, "memory was already freed")

    def free(self) -> None:
        self._check()
        self._allocator.free(self._buf)
        self._buf = None

    def __repr__(self) -> str:
        where = f"device {self.device_id}" if self.on_device else "host"
        return f"<acl.Memory {self.size} B on {where}{' (freed)' if self.freed else ''}>"


@initialized
def malloc(size: int, policy: MallocPolicy | int = MallocPolicy.HUGE_FIRST) -> Memory:
    """Device memory on the current context's device."""
    _check_size(size)
    if int(policy) not in MallocPolicy._value2member_map_:
        raise AclError(ErrorCode.INVALID_PARAM, f"unknown malloc policy {policy!r}")
    ctx = current_context()
    alloc = state.allocator(ctx.device_id)
    return Memory(alloc.malloc(size), size, True, ctx.device_id, alloc)


@initialized
def malloc_host(size: int) -> Memory:
    """Host memory (page-locked where the device has such a thing)."""
    _check_size(size)
    with STATE.lock:
        if STATE.host_allocator is None:
            from opencann.runtime.allocator import CachingAllocator

            STATE.host_allocator = CachingAllocator(STATE.devices[0])
    return Memory(STATE.host_allocator.malloc(size), size, False, -1, STATE.host_allocator)


@initialized
def free(mem: Memory) -> None:
    _memory(mem, "mem").free()


free_host = free


def _check_size(size) -> None:
    if not isinstance(size, int) or isinstance(size, bool) or size <= 0:
        raise AclError(ErrorCode.INVALID_PARAM, f"size must be a positive int, got {size!r}")


def _memory(m, what: str) -> Memory:
    if not isinstance(m, Memory):
        raise AclError(ErrorCode.INVALID_PARAM, f"{what} must be acl memory, got {type(m).__name__}")
    m._check()
    return m


def _source_bytes(src, kind: MemcpyKind) -> tuple[np.ndarray, bool]:
    """The source as a flat byte array, and whether it lives on a device."""
    if isinstance(src, Memory):
        return src._raw(), src.on_device
    if isinstance(src, (bytes, bytearray, memoryview)):
        return np.frombuffer(src, dtype=np.uint8), False
    if isinstance(src, np.ndarray):
        return np.ascontiguousarray(src).reshape(-1).view(np.uint8), False
    raise AclError(ErrorCode.INVALID_PARAM, f"cannot copy from {type(src).__name__}")


def _plan_copy(dst, src, count, kind) -> tuple[np.ndarray, np.ndarray]:
    dst = _memory(dst, "dst")
    try:
        kind = MemcpyKind(kind)
    except ValueError:
        raise AclError(ErrorCode.INVALID_PARAM, f"unknown memcpy kind {kind!r}") from None
    src_bytes, src_on_device = _source_bytes(src, kind)
    if not isinstance(count, int) or isinstance(count, bool) or count < 0:
        raise AclError(ErrorCode.INVALID_PARAM, f"count must be a non-negative int, got {count!r}")
    if count > dst.size:
        raise AclError(ErrorCode.INVALID_PARAM, f"memcpy of {count} bytes overflows the destination's {dst.size}")
    if count > src_bytes.nbytes:
        raise AclError(ErrorCode.INVALID_PARAM, f"memcpy of {count} bytes reads past the source's {src_bytes.nbytes}")
    if kind != MemcpyKind.DEFAULT:
        want_src, want_dst = kind in (MemcpyKind.DEVICE_TO_HOST, MemcpyKind.DEVICE_TO_DEVICE), \
            kind in (MemcpyKind.HOST_TO_DEVICE, MemcpyKind.DEVICE_TO_DEVICE)
        if (want_src, want_dst) != (src_on_device, dst.on_device):
            where = lambda d: "device" if d else "host"  # noqa: E731
            raise AclError(ErrorCode.INVALID_PARAM, f"memcpy kind {kind.name} does not match a copy from "
                           f"{where(src_on_device)} to {where(dst.on_device)} memory")
    return dst._raw(), src_bytes


@initialized
def memcpy(dst: Memory, src, count: int, kind: MemcpyKind | int = MemcpyKind.DEFAULT) -> None:
    """Copy ``count`` bytes (synchronously). ``src`` may be acl memory, bytes or a NumPy array."""
    d, s = _plan_copy(dst, src, count, kind)
    d[:count] = s[:count]


@initialized
def memcpy_async(dst: Memory, src, count: int, kind: MemcpyKind | int, stream) -> None:
    """Enqueue the copy on ``stream``; the source must stay unchanged until the stream reaches it."""
    d, s = _plan_copy(dst, src, count, kind)

    def copy() -> None:
        d[:count] = s[:count]

    _stream(stream).enqueue(copy)


def _plan_set(mem: Memory, value: int, count: int) -> np.ndarray:
    mem = _memory(mem, "mem")
    if not isinstance(value, int) or not 0 <= value <= 255:
        raise AclError(ErrorCode.INVALID_PARAM, f"memset value must be a byte (0-255), got {value!r}")
    if not isinstance(count, int) or count < 0 or count > mem.size:
        raise AclError(ErrorCode.INVALID_PARAM, f"memset of {count!r} bytes does not fit {mem.size}")
    return mem._raw()


@initialized
def memset(mem: Memory, value: int, count: int) -> None:
    _plan_set(mem, value, count)[:count] = value


@initialized
def memset_async(mem: Memory, value: int, count: int, stream) -> None:
    raw = _plan_set(mem, value, count)
    _stream(stream).enqueue(lambda: raw.__setitem__(slice(0, count), value))


def _stream(stream):
    from opencann.acl.stream import Stream

    if not isinstance(stream, Stream):
        raise AclError(ErrorCode.INVALID_PARAM, f"expected an acl.Stream, got {type(stream).__name__}")
    return stream


@initialized
def get_mem_info() -> tuple[int, int]:
    """(free, total) bytes of the current device, as the allocator sees it."""
    ctx = current_context()
    alloc = state.allocator(ctx.device_id)
    total = ctx.device.total_memory
    return max(0, total - alloc.stats.in_use), total


@initialized
def allocator_stats(device_id: int | None = None):
    """The caching allocator's figures (in_use, peak, cached, reserved) for a device."""
    return state.allocator(current_context().device_id if device_id is None else device_id).stats
