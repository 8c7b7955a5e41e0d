"""Seed layer 1, AscendCL: the application API.

    import opencann.acl as acl
    acl.init(); acl.set_device(0)
    model = acl.load_from_file("resnet18.om")
    scores, = model.run(image)
    model.unload(); acl.reset_device(0); acl.finalize()

Areas: system (init/finalize), devices, contexts, streams and events, memory, models, single operators
(:mod:`opencann.acl.op`), graphs (:class:`GraphBuilder`). Every error is an :class:`AclError` carrying
AscendCL's numeric code (see docs/errors.md).
"""
from opencann.acl import op, prof
from opencann.acl.context import Context, create_context, current_context, destroy_context, set_context
from opencann.acl.device import DeviceProperties, device_count, device_properties, get_device, reset_device, set_device
from opencann.acl.graph import GraphBuilder
from opencann.acl.memory import (
                                 MallocPolicy,
                                 MemcpyKind,
                                 Memory,
                                 allocator_stats,
                                 free,
                                 free_host,
                                 get_mem_info,
                                 malloc,
                                 malloc_host,
                                 memcpy,
                                 memcpy_async,
                                 memset,
                                 memset_async,
)
from opencann.acl.model import DataBuffer, Dataset, Model, ModelDesc, load_from_file, load_from_mem, unload
from opencann.acl.stream import Event, Stream, create_event, create_stream, elapsed_time
from opencann.acl.system import finalize, init, is_initialized
from opencann.errors import AclError, ErrorCode

__all__ = [
    "AclError", "Context", "DataBuffer", "Dataset", "DeviceProperties", "ErrorCode", "Event", "GraphBuilder",
    "MallocPolicy", "MemcpyKind", "Memory", "Model", "ModelDesc", "Stream", "allocator_stats", "create_context",
    "create_event", "create_stream", "current_context", "destroy_context", "device_count", "device_properties",
    "elapsed_time", "finalize", "free", "free_host", "get_device", "get_mem_info", "init", "is_initialized",
    "load_from_file", "load_from_mem", "malloc", "malloc_host", "memcpy", "memcpy_async", "memset", "memset_async",
    "op", "prof", "reset_device", "set_context", "set_device", "unload",
]
