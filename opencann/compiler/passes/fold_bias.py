"""Fold constant per-channel affine epilogues into the Conv or MatMul/Gemm before them.

* ``Conv``/``ConvTranspose`` then ``Add``/``Sub`` of a constant broadcasting per output channel
  (shape ``[C,1,1]``, ``[1,C,1,1]``, ``[1]``, ...): the constant joins the bias ``B``;
* ``Conv`` then ``Mul``/``Div`` by such a constant: the weights and bias of each output channel are scaled;
* ``MatMul(x, W)`` with 2-D ``x`` and ``W`` then ``Add`` of a constant broadcasting to ``[N]`` rows becomes
  ``Gemm(x, W, b)``; a ``Gemm`` without ``C`` takes such an Add as ``C``.

Exact up to float rounding (the folded constants are computed in float64). The operator must feed nothing
but the epilogue. 3-D MatMul + bias (BERT's Linear layers) is left to the Gemm-epilogue fusion. It runs
after fold_batchnorm (a Conv's BatchNorm is folded first, then a following Add/Mul) and before dead-code
elimination, which drops the replaced constants.
"""
from __future__ import annotations

import numpy as np

from opencann.compiler.ir import Graph, Node, TensorType, Value


def fold_bias(graph: Graph) -> Graph:
    """Fold every eligible epilogue in place, repeatedly (Conv + Mul + Add folds both); returns ``graph``."""
    while True:
        readers = _reader_counts(graph)
        folded = [n for n in list(graph.nodes) if _try_fold(graph, n, readers)]
        if not folded:
            return graph
        ids = {id(n) for n in folded}
        graph.nodes = [n for n in graph.nodes if id(n) not in ids]


def _reader_counts(graph: Graph) -> dict[str, int]:
    counts: dict[str, int] = {}
    for n in graph.nodes:
        names = [v.name for v in n.inputs if v is not None]
        for sub in n.subgraphs.values():
            names += sub.outer_names()
        for name in names:
            counts[name] = counts.get(name, 0) + 1
    for v in graph.outputs:
        counts[v.name] = counts.get(v.name, 0) + 1
    return counts


def _try_fold(graph: Graph, node: Node, readers: dict[str, int]) -> bool:
    """Fold ``node`` (the epilogue) into its producer, whose only reader it is (graph outputs count as readers);
    True when done (the caller drops ``node``)."""
    if node.domain or node.op not in ("Add", "Sub", "Mul", "Div") or len(node.inputs) != 2:
        return False
    for i in (0, 1):
        x, c = node.inputs[i], node.inputs[1 - i]
        p = x.producer if x is not None else None
        if c is None or c.const is None or p is None or p.domain or len(p.outputs) != 1 \
                or readers.get(x.name) != 1 or c.const.dtype.kind != "f" \
                or (i == 1 and node.op in ("Sub", "Div")):
            continue
        fold = _FOLDS.get((p.op, node.op))
        if fold is None or not fold(graph, p, c.const, node.op):
            continue
        out = node.outputs[0]
        p.outputs = [out]
        out.producer = p
        return True
    return False


def _per_channel(c: np.ndarray, rank: int, channels: int, axis: int) -> np.ndarray | None:
    """``c`` as a vector over ``axis`` of a rank-``rank`` result, or None when it varies along other axes."""
    if c.ndim > rank:
        return None
    full = c.reshape((1,) * (rank - c.ndim) + c.shape)
    if any(d != 1 for k, d in enumerate(full.shape) if k != axis) or full.shape[axis] not in (1, channels):
        return None
    return np.broadcast_to(full.reshape(-1).astype(np.float64), (channels,))


def _add_const(graph: Graph, p: Node, name: str, arr: np.ndarray) -> Value:
    v = Value(f"{p.name or p.op}/{name}_folded", const=arr)
    taken = {x.name for x in graph.values()}
    k = 0
    while v.name in taken:
        k += 1
        v.name = f"{p.name or p.op}/{name}_folded{k}"
    graph.initializers.append(v)
    return v


def _conv_epilogue(graph: Graph, conv: Node, c: np.ndarray, op: str) -> bool:
    w = conv.inputs[1].const if len(conv.inputs) > 1 else None
    b_in = conv.inputs[2] if len(conv.inputs) > 2 else None
    if w is None or w.dtype.kind != "f" or (b_in is not None and b_in.const is None):
        return False
    channels = w.shape[0] if conv.op == "Conv" else w.shape[1] * conv.attrs.get("group", 1)
    vec = _per_channel(c, w.ndim, channels, 1)
    if vec is None:
        return False
    b = np.zeros(channels) if b_in is None else b_in.const.astype(np.float64)
    if op in ("Add", "Sub"):
        b = b + vec if op == "Add" else b - vec
        conv.inputs = [conv.inputs[0], conv.inputs[1], _add_const(graph, conv, "B", b.astype(w.dtype))]
        return True
    scale = vec if op == "Mul" else 1.0 / vec
    w_new = w.astype(np.float64) * scale.reshape(-1, *([1] * (w.ndim - 1)))
    conv.inputs = [conv.inputs[0], _add_const(graph, conv, "W", w_new.astype(w.dtype)),
                   _add_const(graph, conv, "B", (b * scale).astype(w.dtype))]
    return True


def _matmul_bias(graph: Graph, p: Node, c: np.ndarray, op: str) -> bool:
    a, w = p.inputs[0], p.inputs[1]
    ranks = [v.type.rank if isinstance(v.type, TensorType) else None for v in (a, w)]
    if ranks != [2, 2] or (p.op == "Gemm" and len(p.inputs) > 2 and p.inputs[2] is not None):
        return False
    n = w.type.shape[0 if p.op == "Gemm" and p.attrs.get("transB", 0) else 1]
    if not isinstance(n, int) or c.ndim > 2 or (c.ndim == 2 and c.shape[0] != 1) or c.size not in (1, n):
        return False
    bias = _add_const(graph, p, "C", np.broadcast_to(c.reshape(-1), (n,)).astype(c.dtype))
    if p.op == "MatMul":
        p.op, p.attrs = "Gemm", {}
    p.inputs = [a, w, bias]
    p.attrs["beta"] = 1.0
    return True


_FOLDS = {**{("Conv", op): _conv_epilogue for op in ("Add", "Sub", "Mul", "Div")},
          ("ConvTranspose", "Add"): _conv_epilogue, ("ConvTranspose", "Sub"): _conv_epilogue,
          ("MatMul", "Add"): _matmul_bias, ("Gemm", "Add"): _matmul_bias}
