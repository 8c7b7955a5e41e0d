"""Graph management: build a graph operator by operator, compile it to a model in memory or an ``.om``.

    g = acl.GraphBuilder("tiny")
    x = g.input("x", np.float32, (1, 4))
    y = g.op("Relu", g.op("MatMul", x, g.constant(w)))
    g.output(y)
    model = g.load()            # or g.save("tiny.om")
"""
from __future__ import annotations

import copy
import dataclasses
import itertools
from typing import Any

import numpy as np

from opencann.compiler import om
from opencann.compiler.ir import Graph, Node, TensorType, Value
from opencann.compiler.pipeline import BuildOptions, compile_graph
from opencann.errors import AclError, ErrorCode


class GraphBuilder:
    def __init__(self, name: str = "graph", opset: int = 23):
        self.graph = Graph(name=name, opsets={"": opset})
        self._names = itertools.count()

    def _fresh(self, hint: str) -> str:
        return f"{hint}_{next(self._names)}"

    def input(self, name: str, dtype: Any, shape: tuple) -> Value:
        """A graph input; use -1 or a string for a dynamic dimension."""
        dims = tuple(d if isinstance(d, str) or d >= 0 else f"{name}_dim{i}" for i, d in enumerate(shape))
        v = Value(name, TensorType(np.dtype(dtype), dims))
        self.graph.inputs.append(v)
        return v

    def constant(self, array: Any, name: str | None = None) -> Value:
        v = Value(name or self._fresh("const"), const=np.asarray(array))
        self.graph.initializers.append(v)
        return v

    def op(self, op_type: str, *inputs: Value | None, outputs: int = 1, domain: str = "", name: str | None = None,
           **attrs: Any) -> Value | tuple[Value, ...]:
        """Append one operator; returns its output (or a tuple of outputs when ``outputs > 1``)."""
        for i, v in enumerate(inputs):
            if v is not None and not isinstance(v, Value):
                raise AclError(ErrorCode.INVALID_PARAM, f"{op_type} input {i} must come from this builder "
                               f"(input/constant/op), got {type(v).__name__}")
        name = name or self._fresh(op_type)
        outs = [Value(f"{name}:{i}") for i in range(outputs)]
        if domain and domain not in self.graph.opsets:
            self.graph.opsets[domain] = 1
        self.graph.nodes.append(Node(op_type, inputs, outs, attrs, name=name, domain=domain))
        return outs[0] if outputs == 1 else tuple(outs)

    def output(self, *values: Value) -> None:
        self.graph.outputs.extend(values)

    def compile(self, **options: Any) -> om.CompiledModel:
        """Compile with ATC's options (``precision_mode=...``, ``soc_version=...``)."""
        if not self.graph.outputs:
            raise AclError(ErrorCode.INVALID_PARAM, f"graph '{self.graph.name}' has no outputs: call output()")
        unknown = set(options) - {f.name for f in dataclasses.fields(BuildOptions)}
        if unknown:
            raise AclError(ErrorCode.INVALID_PARAM, f"unknown build option(s): {', '.join(sorted(unknown))}")
        self.graph.validate()
        # the pipeline rewrites the graph in place: compile a copy so the builder can compile again
        return compile_graph(copy.deepcopy(self.graph), BuildOptions(**options))

    def to_bytes(self, **options: Any) -> bytes:
        return om.dumps(self.compile(**options))

    def save(self, path: str, **options: Any) -> str:
        """Write the compiled graph as an ``.om`` file; returns its path."""
        return om.save(self.compile(**options), path)

    def load(self, **options: Any):
        """Compile in memory and load onto the current device: an :class:`acl.Model`."""
        from opencann.acl.model import load_from_mem

        return load_from_mem(self.to_bytes(**options))
