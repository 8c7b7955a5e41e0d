"""An ``onnx.backend`` for opencann, so ONNX's own conformance suite and tools can drive it.

    from opencann.frontends.onnx import backend
    outputs = backend.prepare("model.onnx").run([x])
"""
from __future__ import annotations

from typing import Any

import numpy as np
import onnx
from onnx.backend.base import Backend, BackendRep

from opencann.frontends.onnx.importer import import_onnx
from opencann.runtime.executor import Executor


class OpencannRep(BackendRep):
    def __init__(self, graph):
        self.executor = Executor(graph)

    def run(self, inputs: Any, **kwargs: Any) -> tuple[Any, ...]:
        if isinstance(inputs, np.ndarray):
            inputs = [inputs]
        return tuple(self.executor.run(inputs))


class OpencannBackend(Backend):
    @classmethod
    def prepare(cls, model: onnx.ModelProto | str, device: str = "CPU", **kwargs: Any) -> OpencannRep:
        return OpencannRep(import_onnx(model))

    @classmethod
    def supports_device(cls, device: str) -> bool:
        return device.upper() == "CPU"

    @classmethod
    def run_model(cls, model: onnx.ModelProto, inputs: Any, device: str = "CPU", **kwargs: Any):
        return cls.prepare(model, device).run(inputs)


prepare = OpencannBackend.prepare
run_model = OpencannBackend.run_model
supports_device = OpencannBackend.supports_device
