"""Tests of the graph passes; :func:`check_pass` is their shared before/after check, with small model builders."""
from __future__ import annotations

from collections.abc import Callable

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from opencann.compiler.ir import Graph
from opencann.runtime import Executor

F32 = np.dtype(np.float32)


def run_ort(graph: Graph, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    """``graph`` exported to ONNX and run by onnxruntime as it is (its own optimizations off)."""
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(graph.to_onnx().SerializeToString(), opts, providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)


def check_pass(build: Callable[[], Graph], fn: Callable[[Graph], Graph], feeds: dict[str, np.ndarray],
               ops: list[str], rtol: float = 1e-6) -> Graph:
    """Run ``fn`` on ``build()``: assert the op list, outputs equal to the unoptimized graph's (by our
    executor and by onnxruntime on the exported result), and that a second run changes nothing."""
    want = Executor(build()).run(feeds)
    after = fn(build())
    after.validate()
    assert [n.op for n in after.nodes] == ops
    for got in (Executor(after).run(feeds), run_ort(after, feeds)):
        assert len(got) == len(want)
        for g, w in zip(got, want, strict=True):
            np.testing.assert_allclose(g, w, rtol=rtol, atol=rtol)
    text = str(after)
    assert str(fn(after)) == text
    return after


def const(name: str, array) -> onnx.TensorProto:
    """A float32 initializer."""
    return numpy_helper.from_array(np.asarray(array, np.float32), name)


def model(nodes, inputs, outputs, inits=(), opset: int = 17) -> bytes:
    """A float32 ONNX model's bytes: ``inputs`` as (name, shape) pairs, outputs by name (shapes left to inference)."""
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in inputs],
                              [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in outputs],
                              list(inits))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)]).SerializeToString()


def ops(graph: Graph) -> list[str]:
    """The graph's node types, ``domain::op`` outside the default domain."""
    return [f"{n.domain}::{n.op}" if n.domain else n.op for n in graph.nodes]
