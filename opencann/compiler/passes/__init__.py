"""Graph passes: plain functions Graph -> Graph, listed in order by the compile pipeline."""

from __future__ import annotations

import numpy as np

from opencann.compiler.ir import Graph, Node, Value


def const_of(v: Value | None) -> np.ndarray | None:
    """``v``'s constant value: an initializer, or the tensor of a ``Constant`` node; else None."""
    if v is None:
        return None
    if v.const is not None:
        return v.const
    p = v.producer
    if p is not None and p.op == "Constant" and not p.domain and isinstance(p.attrs.get("value"), np.ndarray):
        return p.attrs["value"]
    return None


def scalar_of(v: Value | None) -> float | None:
    """``v``'s value when it is a one-element floating-point constant; else None."""
    c = const_of(v)
    return float(c.reshape(())) if c is not None and c.size == 1 and c.dtype.kind == "f" else None


def readers_of(graph: Graph) -> dict[str, list[Node | None]]:
    """Each value name's readers among ``graph``'s nodes; ``None`` stands for a graph output and for a subgraph
    capturing it (a reader no pass rewrites)."""
    readers: dict[str, list[Node | None]] = {}
    for n in graph.nodes:
        for v in n.inputs:
            if v is not None:
                readers.setdefault(v.name, []).append(n)
        for sub in n.subgraphs.values():
            for name in sub.outer_names():
                readers.setdefault(name, []).append(None)
    for v in graph.outputs:
        readers.setdefault(v.name, []).append(None)
    return readers
