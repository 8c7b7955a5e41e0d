"""Algebraic simplification: remove no-op nodes and cancel or compose shape-moving pairs.

* ``Identity`` goes (its readers read its input); ``Dropout`` in inference (no mask read, training
  off) is an Identity;
* ``Cast`` to the dtype it already has, ``Reshape``/``Flatten`` to the shape it already has, and a
  ``Transpose`` with the identity permutation are no-ops;
* ``Reshape(Reshape(x))`` reshapes ``x`` once; ``Transpose(Transpose(x))`` is one Transpose with the
  composed permutation (or nothing); ``Unsqueeze(Squeeze(x, a), a)`` and ``Squeeze(Unsqueeze(x, a), a)``
  are ``x``.

It runs after constant folding (so shape inputs such as Reshape targets are constants) and before
CSE and the folding passes (which then see producers without Identity/no-op nodes in between).
When a removed node's output is a graph output, the producer of its input is given that output
instead (the interface keeps its names); where that is impossible the node stays.
"""
from __future__ import annotations

import numpy as np

from opencann.compiler import dtypes
from opencann.compiler.ir import Graph, Node, TensorType, Value

RANDOM_OPS = frozenset({"RandomUniform", "RandomNormal", "RandomUniformLike", "RandomNormalLike", "Bernoulli",
                        "Multinomial"})


def simplify(graph: Graph) -> Graph:
    """Simplify ``graph`` in place until nothing changes; returns it."""
    while True:
        rw = Rewriter(graph)
        changed = False
        for node in graph.nodes:
            node.inputs = [rw.resolve(v) for v in node.inputs]
            rule = _RULES.get(node.op) if not node.domain and node.inputs and node.inputs[0] is not None else None
            changed |= bool(rule and node.outputs and rule(rw, node))
        rw.finish()
        if not changed:
            return graph


class Rewriter:
    """Batched graph edits: nodes removed and values renamed during a sweep, applied at once by :meth:`finish`."""

    def __init__(self, graph: Graph):
        self.graph = graph
        self.alias: dict[str, Value] = {}
        self.removed: set[int] = set()
        self.nodes = {id(n) for n in graph.nodes}
        self.outputs = {v.name for v in graph.outputs}

    def resolve(self, v: Value | None) -> Value | None:
        while v is not None and v.name in self.alias:
            v = self.alias[v.name]
        return v

    def live(self, node: Node | None) -> bool:
        """``node`` is one of the graph's nodes and still there."""
        return node is not None and id(node) in self.nodes and id(node) not in self.removed

    def remove(self, node: Node, aliases: dict[str, Value]) -> None:
        self.removed.add(id(node))
        self.alias.update(aliases)

    def finish(self) -> None:
        self.graph.nodes = [n for n in self.graph.nodes if id(n) not in self.removed]
        if self.alias:
            replace_many(self.graph, {k: self.resolve(v) for k, v in self.alias.items()})


def replace_many(graph: Graph, alias: dict[str, Value]) -> None:
    """Make every reader of a value named in ``alias`` (nodes, subgraphs capturing it, outputs) read its alias."""
    for node in graph.nodes:
        node.inputs = [alias.get(v.name, v) if v is not None else None for v in node.inputs]
        for sub in node.subgraphs.values():
            if not alias.keys().isdisjoint(sub.outer_names()):
                replace_many(sub, alias)
    graph.outputs = [alias.get(v.name, v) for v in graph.outputs]


def bypass(rw: Rewriter, node: Node, src: Value) -> bool:
    """Remove ``node`` (one output, equal to ``src``); False (nothing done) where the interface forbids it."""
    out = node.outputs[0]
    if out.name not in rw.outputs:
        rw.remove(node, {out.name: src})
        return True
    producer = src.producer
    if not rw.live(producer) or src.name in rw.outputs:
        return False
    producer.outputs = [out if v is src else v for v in producer.outputs]  # the graph output takes src's place
    out.producer = producer
    out.type = out.type or src.type
    rw.remove(node, {src.name: out})
    return True


def _const(v: Value | None) -> np.ndarray | None:
    return None if v is None else v.const


def _shape(v: Value) -> tuple | None:
    return v.type.shape if isinstance(v.type, TensorType) and v.type.is_static else None


def _identity(rw: Rewriter, node: Node) -> bool:
    return len(node.outputs) == 1 and bypass(rw, node, node.inputs[0])


def _dropout(rw: Rewriter, node: Node) -> bool:
    training = _const(node.inputs[2]) if len(node.inputs) > 2 and node.inputs[2] is not None else np.array(False)
    mask_read = len(node.outputs) > 1 and node.outputs[1].name and _is_read(rw.graph, node.outputs[1])
    if training is None or bool(training) or mask_read:  # (before opset 12 Dropout runs as in inference)
        return False
    node.outputs = node.outputs[:1]
    return bypass(rw, node, node.inputs[0])


def _is_read(graph: Graph, v: Value) -> bool:
    return any(o.name == v.name for o in graph.outputs) or any(i is v for n in graph.nodes for i in n.inputs) or any(
        v.name in sub.outer_names() for n in graph.nodes for sub in n.subgraphs.values())


def _cast(rw: Rewriter, node: Node) -> bool:
    x = node.inputs[0]
    same = isinstance(x.type, TensorType) and "to" in node.attrs and x.type.dtype == dtypes.from_onnx(node.attrs["to"])
    return same and bypass(rw, node, x)


def _reshape(rw: Rewriter, node: Node) -> bool:
    x, y = node.inputs[0], node.outputs[0]
    if _shape(x) is not None and _shape(x) == _shape(y):
        return bypass(rw, node, x)
    inner = x.producer
    target = _const(node.inputs[1]) if len(node.inputs) > 1 else None
    if not rw.live(inner) or inner.op != "Reshape" or inner.domain or target is None:
        return False
    if not node.attrs.get("allowzero", 0) and (target == 0).any():
        return False  # 0 copies a dimension of the intermediate shape
    node.inputs[0] = inner.inputs[0]
    return True


def _flatten(rw: Rewriter, node: Node) -> bool:
    x = node.inputs[0]
    return _shape(x) is not None and _shape(x) == _shape(node.outputs[0]) and bypass(rw, node, x)


def _perm(node: Node, rank: int | None) -> list[int] | None:
    if "perm" in node.attrs:
        return [int(p) for p in node.attrs["perm"]]
    return None if rank is None else list(range(rank))[::-1]


def _rank(v: Value) -> int | None:
    return v.type.rank if isinstance(v.type, TensorType) else None


def _transpose(rw: Rewriter, node: Node) -> bool:
    x = node.inputs[0]
    outer = _perm(node, _rank(x))
    if outer is None:
        return False
    if outer == sorted(outer):
        return bypass(rw, node, x)
    inner = x.producer
    if not rw.live(inner) or inner.op != "Transpose" or inner.domain:
        return False
    first = _perm(inner, len(outer))
    node.attrs["perm"] = [first[p] for p in outer]
    node.inputs[0] = inner.inputs[0]
    return True


def _axes(node: Node, rank: int | None) -> list[int] | None:
    axes = node.attrs.get("axes")
    if axes is None and len(node.inputs) > 1:
        axes = _const(node.inputs[1])
    if axes is None or rank is None:
        return None
    return sorted(int(a) % rank for a in np.asarray(axes).reshape(-1))


def _squeeze_pair(rw: Rewriter, node: Node) -> bool:
    """``Unsqueeze(Squeeze(x, a), a)`` or ``Squeeze(Unsqueeze(x, a), a)``: ``x``."""
    inner = node.inputs[0].producer
    pair = {"Squeeze": "Unsqueeze", "Unsqueeze": "Squeeze"}[node.op]
    if not rw.live(inner) or inner.op != pair or inner.domain:
        return False
    x = inner.inputs[0]
    wide = node.outputs[0] if node.op == "Unsqueeze" else inner.outputs[0]  # the higher-rank value
    axes_node, axes_inner = _axes(node, _rank(wide)), _axes(inner, _rank(wide))
    if axes_node is None or axes_node != axes_inner:
        return False
    return bypass(rw, node, x)


_RULES = {"Identity": _identity, "Dropout": _dropout, "Cast": _cast, "Reshape": _reshape, "Flatten": _flatten,
          "Transpose": _transpose, "Squeeze": _squeeze_pair, "Unsqueeze": _squeeze_pair}
