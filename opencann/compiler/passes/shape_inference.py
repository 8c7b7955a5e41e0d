"""Type and shape inference: give every node output a type.

Each operator's own ``infer(node)`` is used when it has one; ONNX-domain operators otherwise use the
inference function of their ONNX schema (node by node, with constant inputs passed as data so that
e.g. Reshape's target shape is known). Types already present are kept unless inference refines them.
"""
from __future__ import annotations

import onnx
from onnx import helper, shape_inference

from opencann.compiler.ir import Graph, Node, TensorType, ValueType
from opencann.frontends.onnx.exporter import node_proto, tensor_proto, type_proto
from opencann.frontends.onnx.importer import convert_type
from opencann.ops import registry


def infer_shapes(graph: Graph) -> Graph:
    """Fill missing output types of ``graph``'s nodes (and their subgraphs'), in place; returns it."""
    for node in graph.nodes:
        for sub in node.subgraphs.values():
            infer_shapes(sub)
        if all(_known(v.type) for v in node.outputs if v.name):
            continue
        for value, inferred in zip(node.outputs, infer_node(node, graph.opsets), strict=False):
            if inferred is not None and (value.type is None or _refines(inferred, value.type)):
                value.type = inferred
    return graph


def infer_node(node: Node, opsets: dict[str, int]) -> list[ValueType | None]:
    """The output types of one node, or ``None`` where they cannot be inferred."""
    opset = opsets.get(node.domain, 1)
    d = registry.lookup(node.op, opset, node.domain)
    if d is not None and d.infer is not None:
        return list(d.infer(node))
    schema = registry.onnx_schema(node.op, opset, node.domain) or (d.schema if d is not None else None)
    if schema is None:
        return [None] * len(node.outputs)
    return _onnx_infer(node, schema, opsets)


def _onnx_infer(node: Node, schema, opsets: dict[str, int]) -> list[ValueType | None]:
    proto = node_proto(node)
    visible = [v for v in node.inputs if v is not None]
    for sub in node.subgraphs.values():
        visible += [_find(sub, name) for name in sub.outer_names()]
    types = {v.name: type_proto(v.type) for v in visible if v is not None and v.type is not None}
    data = {v.name: tensor_proto(v.const, v.name) for v in node.inputs
            if v is not None and v.const is not None and v.const.size <= 1 << 16}
    try:
        out = shape_inference.infer_node_outputs(
            schema, proto, types, data, opset_imports=[helper.make_opsetid(d, v) for d, v in opsets.items()])
    except (onnx.shape_inference.InferenceError, onnx.checker.ValidationError, RuntimeError, KeyError, TypeError,
            ValueError):
        return [None] * len(node.outputs)
    return [convert_type(out[v.name]) if v.name in out else None for v in node.outputs]


def _find(graph: Graph, name: str):
    """The Value named ``name`` read somewhere inside ``graph``."""
    for n in graph.nodes:
        for v in n.inputs:
            if v is not None and v.name == name:
                return v
        for sub in n.subgraphs.values():
            found = _find(sub, name)
            if found is not None:
                return found
    return next((v for v in graph.outputs if v.name == name), None)


def _known(t: ValueType | None) -> bool:
    return t is not None and (not isinstance(t, TensorType) or t.shape is not None)


def _refines(new: ValueType, old: ValueType) -> bool:
    return (isinstance(new, TensorType) and isinstance(old, TensorType) and old.shape is None
            and new.shape is not None)
