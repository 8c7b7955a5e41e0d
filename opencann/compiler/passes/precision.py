"""Precision modes (ATC's ``--precision_mode``): run float32 graphs in float16 or bfloat16.

* ``force_fp32`` / ``must_keep_origin_dtype``: the graph is left as it is (the CPU default).
* ``force_fp16`` / ``allow_fp32_to_fp16``: every float32 weight and activation becomes float16; casts at
  the graph's inputs and outputs keep its interface float32.
* ``allow_mix_precision`` (``_fp16``/``_bf16``): only the matrix engines' operators (MatMul, Gemm,
  convolutions, Einsum) compute in the low precision, between casts; everything else — softmax,
  normalisations, reductions, and in training graphs the variables and optimizer updates — stays float32.
  The fused operators with a matrix product and a float32 epilogue (``opencann::FusedMatMul``, ``FusedGemm``,
  ``FusedConv``) get their two matrix operands rounded to the low precision (weights once, here; activations
  by a Cast pair) and accumulate and apply the epilogue (bias, activation, softmax, residual) in float32, as
  a matrix engine with float32 accumulation does; ``opencann::Attention`` rounds its products' operands
  itself (its ``low`` attribute) and keeps its softmax float32.
* ``allow_fp32_to_bf16`` / ``allow_mix_precision_bf16``: the same with bfloat16.
"""
from __future__ import annotations

import itertools

import ml_dtypes
import numpy as np
from onnx import TensorProto

from opencann.compiler.ir import Graph, Node, TensorType, Value
from opencann.compiler.passes.shape_inference import infer_shapes
from opencann.errors import AclError, ErrorCode
from opencann.ops.registry import OPENCANN_DOMAIN

F32 = np.dtype(np.float32)
MODES = {
    "force_fp32": None, "cube_fp16in_fp32out": None, "must_keep_origin_dtype": None,
    "force_fp16": (np.float16, False), "allow_fp32_to_fp16": (np.float16, False),
    "allow_mix_precision": (np.float16, True), "allow_mix_precision_fp16": (np.float16, True),
    "allow_fp32_to_bf16": (ml_dtypes.bfloat16, False), "allow_mix_precision_bf16": (ml_dtypes.bfloat16, True),
}
MATRIX_OPS = frozenset({"MatMul", "Gemm", "Conv", "ConvTranspose", "Einsum"})
FUSED_MATRIX_OPS = frozenset({"FusedMatMul", "FusedGemm", "FusedConv"})  # opencann's: (A, B, ...) + epilogue


def convert_precision(graph: Graph, mode: str) -> Graph:
    """Apply a precision mode to ``graph`` in place; returns it."""
    if mode not in MODES:
        raise AclError(ErrorCode.INVALID_PARAM, f"unknown precision mode '{mode}' (one of {', '.join(MODES)})")
    if MODES[mode] is None:
        return graph
    low, mixed = MODES[mode]
    low = np.dtype(low)
    names = (f"precision_cast_{i}" for i in itertools.count())
    if mixed:
        nodes, rounded = [], {}
        for node in graph.nodes:
            if node.op in MATRIX_OPS and not node.domain:
                nodes.extend(_in_low_precision(node, low, names))
                continue
            if node.domain == OPENCANN_DOMAIN and node.op in FUSED_MATRIX_OPS:
                nodes.extend(_round_operands(graph, node, low, names, rounded))
            elif node.domain == OPENCANN_DOMAIN and node.op == "Attention":
                from opencann.compiler import dtypes

                node.attrs["low"] = dtypes.to_onnx(low)
            nodes.append(node)
        graph.nodes = nodes
        return graph
    for v in graph.initializers:
        if v.const.dtype == F32:
            v.const, v.type = v.const.astype(low), TensorType(low, v.const.shape)
    nodes: list[Node] = []
    for x in graph.inputs:
        if _is_f32(x):
            low_x = Value(next(names))
            nodes.append(_cast(x, low_x, low, next(names)))
            _rename_uses(graph, x, low_x)
    for node in graph.nodes:
        _lower_attrs(node, low)
        nodes.append(node)
    for i, y in enumerate(graph.outputs):
        if _is_f32(y):
            out = Value(y.name, y.type)
            y.name = next(names)
            nodes.append(_cast(y, out, F32, next(names)))
            graph.outputs[i] = out
    graph.nodes = nodes
    for node in graph.nodes:
        for v in node.outputs:
            v.type = None
    return infer_shapes(graph)


def _is_f32(v: Value) -> bool:
    return isinstance(v.type, TensorType) and v.type.dtype == F32


def _cast(src: Value, dst: Value, dtype: np.dtype, name: str) -> Node:
    from opencann.compiler import dtypes

    dst.type = TensorType(dtype, src.type.shape if isinstance(src.type, TensorType) else None)
    return Node("Cast", [src], [dst], {"to": dtypes.to_onnx(dtype)}, name=name)


def _rename_uses(graph: Graph, old: Value, new: Value) -> None:
    for node in graph.nodes:
        node.inputs = [new if v is old else v for v in node.inputs]
    graph.outputs = [new if v is old else v for v in graph.outputs]


def _lower_attrs(node: Node, low: np.dtype) -> None:
    from opencann.compiler import dtypes

    for key, value in node.attrs.items():
        if isinstance(value, np.ndarray) and value.dtype == F32:
            node.attrs[key] = value.astype(low)
        elif key in ("to", "dtype") and value == TensorProto.FLOAT and node.op != "Cast":
            node.attrs[key] = dtypes.to_onnx(low)
    if node.op == "Cast" and node.attrs.get("to") == TensorProto.FLOAT:
        node.attrs["to"] = dtypes.to_onnx(low)


def _in_low_precision(node: Node, low: np.dtype, names) -> list[Node]:
    """Casts that let a float32 matrix operator compute in ``low`` and hand float32 results on."""
    if not all(v is None or _is_f32(v) for v in node.inputs) or not all(_is_f32(v) for v in node.outputs):
        return [node]
    before = []
    for i, v in enumerate(node.inputs):
        if v is not None:
            narrow = Value(next(names))
            before.append(_cast(v, narrow, low, next(names)))
            node.inputs[i] = narrow
    after = []
    for i, v in enumerate(node.outputs):
        narrow = Value(next(names), TensorType(low, v.type.shape))
        cast = _cast(narrow, v, F32, next(names))
        node.outputs[i] = narrow
        narrow.producer = node
        after.append(cast)
    return [*before, node, *after]


def _round_operands(graph: Graph, node: Node, low: np.dtype, names, rounded: dict[str, Value]) -> list[Node]:
    """Round ``node``'s float32 matrix operands (inputs 0 and 1) to ``low`` and back: constants here, others by
    the Cast pair returned (each value once: ``rounded`` maps names to their rounded values)."""
    casts = []
    for i, v in enumerate(node.inputs[:2]):
        if v is None or not _is_f32(v):
            continue
        if v.name not in rounded:
            if v.const is not None:
                wide = Value(f"{v.name}/{low.name}", const=v.const.astype(low).astype(F32))
                graph.initializers.append(wide)
            else:
                narrow, wide = Value(next(names)), Value(next(names))
                casts += [_cast(v, narrow, low, next(names)), _cast(narrow, wide, F32, next(names))]
            rounded[v.name] = wide
        node.inputs[i] = rounded[v.name]
    return casts
