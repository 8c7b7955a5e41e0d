"""Common-subexpression elimination: compute each distinct value once.

Identical constant initializers (same dtype, shape and bytes, up to 16 MiB) are merged first; then, in
topological order, a node with the same operator, domain, attributes and inputs as an earlier one is
dropped and its readers read the earlier node's outputs (merging upstream makes downstream nodes
identical in the same sweep). Never merged: nodes with subgraphs, random operators, non-ONNX domains
(they may keep state), and nodes or initializers whose outputs are graph outputs.

It runs after constant folding and simplification, which make equal subexpressions look equal (same
constant inputs, no Identity in between), and before the folding passes.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from opencann.compiler.ir import Graph, Node, Value
from opencann.compiler.passes.simplify import RANDOM_OPS, Rewriter

MAX_MERGE_BYTES = 16 << 20


def cse(graph: Graph) -> Graph:
    """Merge duplicate initializers and nodes of ``graph`` in place; returns it."""
    rw = Rewriter(graph)
    _merge_initializers(rw)
    seen: dict[tuple, Node] = {}
    for node in graph.nodes:
        node.inputs = [rw.resolve(v) for v in node.inputs]
        key = _key(node)
        first = seen.setdefault(key, node) if key is not None else node
        if first is not node and not any(v.name in rw.outputs for v in node.outputs):
            rw.remove(node, {old.name: new for old, new in zip(node.outputs, first.outputs, strict=True) if old.name})
    rw.finish()
    return graph


def _merge_initializers(rw: Rewriter) -> None:
    seen: dict[tuple, list[Value]] = {}
    kept = []
    for v in rw.graph.initializers:
        if v.const.nbytes > MAX_MERGE_BYTES or v.const.dtype.kind == "O" or v.name in rw.outputs:
            kept.append(v)
            continue
        twins = seen.setdefault(_tensor_key(v.const), [])
        first = next((t for t in twins if _same_bytes(t.const, v.const)), None)
        if first is None:
            twins.append(v)
            kept.append(v)
        else:
            rw.alias[v.name] = first
    rw.graph.initializers = kept


def _tensor_key(a: np.ndarray) -> tuple:
    """dtype, shape and 64 sampled elements' bytes: equal tensors have equal keys (cheap to compute)."""
    sample = a.flat[np.linspace(0, a.size - 1, min(a.size, 64)).astype(np.int64)] if a.size else a
    return a.dtype.str, a.shape, sample.tobytes()


def _same_bytes(a: np.ndarray, b: np.ndarray) -> bool:
    return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


def _key(node: Node) -> tuple | None:
    if node.domain or node.op in RANDOM_OPS or node.subgraphs or not node.outputs:
        return None
    try:
        attrs = tuple(sorted((k, _attr_key(v)) for k, v in node.attrs.items()))
    except TypeError:
        return None
    inputs = tuple(v.name if v is not None else None for v in node.inputs)
    return node.op, attrs, inputs, tuple(bool(v.name) for v in node.outputs)


def _attr_key(v: Any) -> Any:
    if isinstance(v, np.ndarray):
        return v.dtype.str, v.shape, tuple(v.reshape(-1).tolist()) if v.dtype.kind == "O" else v.tobytes()
    if isinstance(v, (list, tuple)):
        return tuple(_attr_key(x) for x in v)
    if isinstance(v, (bool, int, float, str, bytes, np.generic)) or v is None:
        return type(v).__name__, repr(v)  # repr: 0.0 and -0.0 differ
    raise TypeError(f"unhashable attribute {type(v).__name__}")
