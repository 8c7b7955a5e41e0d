"""Model management: loading compiled models onto a device, describing them, executing them.

A :class:`LoadedModel` keeps its weights in device memory from the device's caching allocator and
compiles its launch list once. Every execution builds its own workspace (the values of that run) and
takes an output arena of its own from the plan's pool (see :mod:`opencann.runtime.executor`), so any
number of threads may execute one loaded model at the same time.
"""
from __future__ import annotations

import itertools
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from opencann.compiler.ir import TensorType
from opencann.compiler.om import CompiledModel
from opencann.errors import AclError, ErrorCode
from opencann.runtime import profiler
from opencann.runtime.allocator import CachingAllocator
from opencann.runtime.executor import Plan


@dataclass(frozen=True)
class TensorDesc:
    """A model input or output as applications see it. ``-1`` marks a dynamic dimension."""

    name: str
    dtype: np.dtype
    shape: tuple[int, ...]
    format: str = "ND"

    @property
    def is_static(self) -> bool:
        return all(d >= 0 for d in self.shape)

    @property
    def size(self) -> int:
        """Bytes of one tensor (0 while a dimension is dynamic)."""
        return int(np.prod(self.shape, dtype=np.int64)) * self.dtype.itemsize if self.is_static else 0


def _describe(values, fmt: str) -> list[TensorDesc]:
    descs = []
    for v in values:
        t = v.type if isinstance(v.type, TensorType) else None
        shape = tuple(d if isinstance(d, int) else -1 for d in (t.shape or ())) if t else ()
        dtype = t.dtype if t else np.dtype(np.float32)
        descs.append(TensorDesc(v.name, dtype, shape, fmt if len(shape) == 4 else "ND"))
    return descs


class LoadedModel:
    """A compiled model resident on a device."""

    def __init__(self, model_id: int, compiled: CompiledModel, device, allocator: CachingAllocator):
        self.id = model_id
        self.compiled = compiled
        self.device = device
        self.allocator = allocator
        fmt = compiled.build_options.get("input_format", "NCHW")
        self.inputs = _describe(compiled.graph.inputs, fmt)
        self.outputs = _describe(compiled.graph.outputs, fmt)
        self.dynamic_batch_sizes: list[int] = list(compiled.extra.get("dynamic_batch_size", []))
        self.plan = Plan(compiled.graph, device.kind)
        self._weights = []
        try:
            for name, arr in list(self.plan.consts.items()):
                self.plan.replace_const(name, self._to_device(arr))
        except BaseException:
            self.release()
            raise
        self.executions = 0
        self._count_lock = threading.Lock()

    def _to_device(self, arr: np.ndarray) -> np.ndarray:
        if arr.dtype == object or arr.nbytes == 0:
            return arr
        buf = self.allocator.malloc(arr.nbytes)
        self._weights.append(buf)
        self.device.copy(buf, arr, arr.nbytes)
        return self.device.view(buf, arr.dtype, arr.shape)

    @property
    def weight_bytes(self) -> int:
        return sum(b.nbytes for b in self._weights)

    def execute(self, inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Run once on host arrays (checked against the model's inputs); returns the outputs."""
        if len(inputs) != len(self.inputs):
            raise AclError(ErrorCode.MODEL_INPUT_NOT_MATCH,
                           f"model {self.id} takes {len(self.inputs)} inputs, got {len(inputs)}")
        feeds = []
        for desc, arr in zip(self.inputs, inputs, strict=True):
            if type(arr) is not np.ndarray:
                arr = np.asarray(arr)
            if arr.shape != desc.shape or arr.dtype != desc.dtype or self.dynamic_batch_sizes:  # else it matches
                self._check(desc, arr)
            feeds.append(arr)
        with self._count_lock:
            self.executions += 1
        session = profiler.SESSION  # set while acl.prof records executions
        return self.plan.run_list(feeds) if session is None else session.execute(self, feeds)

    def _check(self, desc: TensorDesc, arr: np.ndarray) -> None:
        """Accept ``arr`` for input ``desc`` (dynamic dimensions, dynamic batch sizes) or raise."""
        if arr.dtype != desc.dtype:
            raise AclError(ErrorCode.MODEL_INPUT_NOT_MATCH, f"input '{desc.name}' wants {desc.dtype}, got {arr.dtype}")
        if len(arr.shape) != len(desc.shape) or any(d >= 0 and d != a for d, a in zip(desc.shape, arr.shape)):
            raise AclError(ErrorCode.MODEL_INPUT_NOT_MATCH,
                           f"input '{desc.name}' wants shape {list(desc.shape)}, got {list(arr.shape)}")
        if self.dynamic_batch_sizes and arr.shape and arr.shape[0] not in self.dynamic_batch_sizes:
            raise AclError(ErrorCode.MODEL_INPUT_NOT_MATCH, f"batch {arr.shape[0]} is not one of the "
                           f"model's dynamic batch sizes {self.dynamic_batch_sizes}")

    def execute_async(self, inputs: Sequence[np.ndarray], stream,
                      done: Callable[[list[np.ndarray]], Any] | None = None) -> None:
        """Enqueue one execution on ``stream``; ``done(outputs)`` runs on the stream afterwards."""

        def work() -> None:
            outputs = self.execute(inputs)
            if done is not None:
                done(outputs)

        stream.enqueue(work)

    def release(self) -> None:
        for buf in self._weights:
            self.allocator.free(buf)
        self._weights = []
        self.plan = None


class ModelManager:
    """Model ids for loaded models, per process."""

    def __init__(self):
        self._models: dict[int, LoadedModel] = {}
        self._ids = itertools.count(1)
        self._lock = threading.Lock()

    def load(self, compiled: CompiledModel, device, allocator: CachingAllocator) -> LoadedModel:
        with self._lock:
            model_id = next(self._ids)
        model = LoadedModel(model_id, compiled, device, allocator)
        with self._lock:
            self._models[model_id] = model
        return model

    def get(self, model_id: Any) -> LoadedModel:
        model = self._models.get(model_id) if isinstance(model_id, int) else None
        if model is None:
            raise AclError(ErrorCode.INVALID_MODEL_ID, f"no loaded model has id {model_id!r}")
        return model

    def unload(self, model_id: Any) -> None:
        self.get(model_id)
        with self._lock:  # get and remove at once: of two threads unloading one model, one releases it
            model = self._models.pop(model_id, None)
        if model is None:
            raise AclError(ErrorCode.INVALID_MODEL_ID, f"no loaded model has id {model_id!r}")
        model.release()

    def loaded(self) -> list[int]:
        return sorted(self._models)
