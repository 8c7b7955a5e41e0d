"""Process-wide acl state: initialisation, devices, their allocators, loaded models, per-thread context."""
from __future__ import annotations

import threading
from functools import wraps

from opencann.devices.cpu import CpuDevice
from opencann.errors import AclError, ErrorCode
from opencann.runtime.allocator import CachingAllocator
from opencann.runtime.model import ModelManager


class _State:
    def __init__(self):
        self.lock = threading.RLock()
        self.initialized = False
        self.devices = [CpuDevice(0)]  # a CUDA device joins this list where CuPy finds a GPU
        self.allocators: dict[int, CachingAllocator] = {}
        self.host_allocator: CachingAllocator | None = None
        self.models = ModelManager()
        self.local = threading.local()  # .context, .device_id
        self.default_contexts: dict[int, object] = {}
        self.contexts: list = []  # every live context (default or created), released by acl.finalize()


STATE = _State()


def initialized(fn):
    """Raise ACL_ERROR_UNINITIALIZE when ``fn`` is called before ``acl.init()``."""

    @wraps(fn)
    def guarded(*args, **kwargs):
        if not STATE.initialized:
            raise AclError(ErrorCode.UNINITIALIZE, f"acl.{fn.__name__}: call acl.init() first")
        return fn(*args, **kwargs)

    return guarded


def device(device_id: int):
    if not isinstance(device_id, int) or isinstance(device_id, bool) or not 0 <= device_id < len(STATE.devices):
        raise AclError(ErrorCode.INVALID_DEVICE, f"device id {device_id!r} does not exist "
                       f"({len(STATE.devices)} device(s))")
    return STATE.devices[device_id]


def allocator(device_id: int) -> CachingAllocator:
    with STATE.lock:
        if device_id not in STATE.allocators:
            STATE.allocators[device_id] = CachingAllocator(device(device_id))
        return STATE.allocators[device_id]
