"""IR → ONNX: export a Graph as a ModelProto that ``onnx.checker`` accepts."""
from __future__ import annotations

from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

from opencann.compiler import dtypes
from opencann.compiler.ir import Graph, Node, OptionalType, SequenceType, TensorType, Value, ValueType


def export_model(graph: Graph, ir_version: int | None = None) -> onnx.ModelProto:
    """The ModelProto of ``graph`` with its opset imports."""
    opsets = [helper.make_opsetid(d, v) for d, v in sorted(graph.opsets.items())]
    model = helper.make_model(export_graph(graph), opset_imports=opsets, producer_name="opencann")
    model.ir_version = ir_version or min(model.ir_version, onnx.IR_VERSION)
    return model


def export_graph(graph: Graph) -> onnx.GraphProto:
    nodes = [node_proto(n) for n in graph.nodes]
    inner = [v for n in graph.nodes for v in n.outputs if v.name and v.type is not None]
    return helper.make_graph(
        nodes, graph.name,
        inputs=[_value_info(v) for v in graph.inputs],
        outputs=[_value_info(v) for v in graph.outputs],
        initializer=[tensor_proto(v.const, v.name) for v in graph.initializers],
        value_info=[_value_info(v) for v in inner if v not in graph.outputs])


def node_proto(n: Node) -> onnx.NodeProto:
    proto = helper.make_node(n.op, [v.name if v is not None else "" for v in n.inputs],
                             [v.name for v in n.outputs], name=n.name, domain=n.domain,
                             **{k: _attr(v) for k, v in n.attrs.items() if not _is_empty_list(v)})
    proto.attribute.extend(_empty_list(n, k) for k, v in n.attrs.items() if _is_empty_list(v))
    return proto


def _is_empty_list(v: Any) -> bool:
    return isinstance(v, list) and not v


def _empty_list(n: Node, key: str) -> onnx.AttributeProto:
    """An empty list attribute, typed from the operator's schema (INTS when it has none)."""
    from opencann.ops.registry import onnx_schema

    schema = onnx_schema(n.op, 10**6, n.domain)
    kind = schema.attributes[key].type if schema is not None and key in schema.attributes else None
    return onnx.AttributeProto(name=key, type=kind or onnx.AttributeProto.INTS)


def tensor_proto(arr: np.ndarray, name: str = "") -> onnx.TensorProto:
    if arr.dtype == object:
        return helper.make_tensor(name, onnx.TensorProto.STRING, arr.shape,
                                  [str(x).encode() for x in arr.reshape(-1)])
    return numpy_helper.from_array(np.asarray(arr), name)


def _attr(v: Any) -> Any:
    if isinstance(v, Graph):
        return export_graph(v)
    if isinstance(v, np.ndarray):
        return tensor_proto(v)
    if isinstance(v, (TensorType, SequenceType, OptionalType)):
        return type_proto(v)
    if isinstance(v, list) and v and isinstance(v[0], (Graph, np.ndarray)):
        return [_attr(x) for x in v]
    return v


def type_proto(t: ValueType | None) -> onnx.TypeProto:
    if isinstance(t, SequenceType):
        return helper.make_sequence_type_proto(type_proto(t.elem))
    if isinstance(t, OptionalType):
        return helper.make_optional_type_proto(type_proto(t.elem))
    if t is None:
        return onnx.TypeProto()
    shape = None if t.shape is None else [d if d is not None else "" for d in t.shape]
    return helper.make_tensor_type_proto(dtypes.to_onnx(t.dtype), shape)


def _value_info(v: Value) -> onnx.ValueInfoProto:
    if v.type is None:
        return onnx.ValueInfoProto(name=v.name)
    return helper.make_value_info(v.name, type_proto(v.type))
