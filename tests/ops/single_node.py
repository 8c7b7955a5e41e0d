"""Build one-node (or small) ONNX models, run them through opencann's ONNX backend, compare with onnxruntime.

The operator test modules share these helpers and keep their own defaults with ``functools.partial``.
In the one-node helpers a ``None`` input is an omitted optional one: the node gets an empty input name
and the input no feed.
"""
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from opencann.compiler import dtypes
from opencann.frontends.onnx.backend import OpencannBackend


def value_info(name: str, x) -> onnx.ValueInfoProto:
    """A graph input for ``x``: a tensor, or a list taken as a sequence of float tensors."""
    if isinstance(x, list):
        return helper.make_tensor_sequence_value_info(name, TensorProto.FLOAT, None)
    return helper.make_tensor_value_info(name, dtypes.to_onnx(x.dtype), x.shape)


def graph_model(nodes, inputs: dict, outputs, opset: int, name: str = "g", extra_opsets=None) -> onnx.ModelProto:
    """A model of ``nodes`` fed by ``inputs`` (name -> value) with untyped ``outputs``, importing the default
    domain at ``opset`` and each of ``extra_opsets`` (domain -> version)."""
    graph = helper.make_graph(nodes, name, [value_info(n, x) for n, x in inputs.items()],
                              [helper.make_value_info(o, onnx.TypeProto()) for o in outputs])
    imports = [helper.make_opsetid("", opset)]
    imports += [helper.make_opsetid(d, v) for d, v in (extra_opsets or {}).items()]
    return helper.make_model(graph, opset_imports=imports)


def node_feeds(inputs) -> dict:
    """The feeds of a one-node model: ``in0``, ``in1``... for the inputs that are not ``None``."""
    return {f"in{i}": x for i, x in enumerate(inputs) if x is not None}


def node_model(op: str, inputs, n_outputs: int = 1, opset: int = 21, domain: str = "", attrs=None,
               domain_opset: int = 1) -> onnx.ModelProto:
    """A model of one ``op`` node with inputs ``in0``... and outputs ``out0``...; a ``domain`` other than
    the default one is imported at ``domain_opset``."""
    names = [f"in{i}" if x is not None else "" for i, x in enumerate(inputs)]
    outs = [f"out{i}" for i in range(n_outputs)]
    node = helper.make_node(op, names, outs, domain=domain, **(attrs or {}))
    return graph_model([node], node_feeds(inputs), outs, opset, name=op,
                       extra_opsets={domain: domain_opset} if domain else None)


def run_model(model: onnx.ModelProto, inputs: dict) -> list:
    """Our outputs of ``model`` fed ``inputs`` (in graph input order)."""
    return OpencannBackend.prepare(model).run(list(inputs.values()))


def ort_model(model: onnx.ModelProto, inputs: dict) -> list:
    """onnxruntime's outputs of ``model`` (shape-inferred first); skips the test without onnxruntime."""
    ort = pytest.importorskip("onnxruntime")
    model = onnx.shape_inference.infer_shapes(model)
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, {n: x if isinstance(x, list) else np.asarray(x) for n, x in inputs.items()})


def assert_outputs_match(got, want, *, exact=False, rtol=1e-5, atol=1e-6, f64=False) -> None:
    """Same dtype and shape per output; values equal (``exact``), strings equal, else close (compared in
    float64 with ``f64``)."""
    for g, w in zip(got, want, strict=True):
        assert g.dtype == w.dtype and g.shape == w.shape
        if exact:
            np.testing.assert_array_equal(g, w)
        elif g.dtype == object:
            assert g.tolist() == w.tolist()
        elif f64:
            np.testing.assert_allclose(g.astype(np.float64), w.astype(np.float64), rtol=rtol, atol=atol)
        else:
            np.testing.assert_allclose(g, w, rtol=rtol, atol=atol)


def check_model(model: onnx.ModelProto, inputs: dict, **compare) -> None:
    """Compare our outputs of ``model`` with onnxruntime's (see :func:`assert_outputs_match`)."""
    want = ort_model(model, inputs)
    assert_outputs_match(run_model(model, inputs), want, **compare)


def run_node(op: str, *inputs, n_outputs: int = 1, opset: int = 21, domain: str = "", domain_opset: int = 1,
             **attrs):
    """Our outputs of one ``op`` node (a single array when ``n_outputs`` is 1)."""
    model = node_model(op, inputs, n_outputs, opset, domain, attrs, domain_opset)
    outs = run_model(model, node_feeds(inputs))
    return outs[0] if n_outputs == 1 else outs


def ort_node(op: str, *inputs, n_outputs: int = 1, opset: int = 21, domain: str = "", domain_opset: int = 1,
             **attrs) -> list:
    """onnxruntime's outputs of one ``op`` node (always a list)."""
    return ort_model(node_model(op, inputs, n_outputs, opset, domain, attrs, domain_opset), node_feeds(inputs))


def check_node(op: str, *inputs, n_outputs: int = 1, opset: int = 21, domain: str = "", domain_opset: int = 1,
               exact=False, rtol=1e-5, atol=1e-6, f64=False, **attrs) -> None:
    """Compare our outputs of one ``op`` node with onnxruntime's: dtype, shape and values."""
    check_model(node_model(op, inputs, n_outputs, opset, domain, attrs, domain_opset), node_feeds(inputs),
                exact=exact, rtol=rtol, atol=atol, f64=f64)


def run_graph(nodes, inputs: dict, outputs, opset: int = 21) -> list:
    """Our outputs of a graph of ``nodes`` fed ``inputs`` (name -> value)."""
    return run_model(graph_model(nodes, inputs, outputs, opset), inputs)


def check_graph(nodes, inputs: dict, outputs, opset: int = 21, rtol=1e-5, atol=1e-6) -> None:
    """Compare our outputs of a graph of ``nodes`` with onnxruntime's: dtype, shape and values."""
    check_model(graph_model(nodes, inputs, outputs, opset), inputs, rtol=rtol, atol=atol)
