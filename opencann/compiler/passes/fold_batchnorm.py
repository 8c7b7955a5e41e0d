"""Fold inference BatchNormalization into the Conv or ConvTranspose that feeds it.

``BN(conv(x, W, b))`` with constant weights and statistics equals ``conv(x, W', b')`` with
``W' = W * s`` per output channel and ``b' = (b - mean) * s + beta``, where ``s = gamma / sqrt(var + eps)``.
"""
from __future__ import annotations

import numpy as np

from opencann.compiler.ir import Graph, Node, Value


def fold_batchnorm(graph: Graph) -> Graph:
    """Fold every eligible Conv/ConvTranspose → BatchNormalization pair, in place; returns ``graph``."""
    readers: dict[str, int] = {}
    for n in graph.nodes:
        for v in n.inputs:
            if v is not None:
                readers[v.name] = readers.get(v.name, 0) + 1
    for v in graph.outputs:
        readers[v.name] = readers.get(v.name, 0) + 1
    folded = {id(bn) for bn in (_fold(graph, n, readers) for n in graph.nodes) if bn is not None}
    graph.nodes = [n for n in graph.nodes if id(n) not in folded]
    return graph


def _const(v: Value | None) -> np.ndarray | None:
    return None if v is None else v.const


def _fold(graph: Graph, bn: Node, readers: dict[str, int]) -> Node | None:
    """Fold ``bn`` into its producer when that is safe; returns ``bn`` when folded."""
    if bn.op != "BatchNormalization" or bn.domain or len([o for o in bn.outputs if o.name]) != 1 \
            or bn.attrs.get("training_mode", 0) or len(bn.inputs) < 5:
        return None
    conv = bn.inputs[0].producer
    stats = [_const(v) for v in bn.inputs[1:5]]
    if conv is None or conv.op not in ("Conv", "ConvTranspose") or conv.domain or readers.get(bn.inputs[0].name) != 1 \
            or any(s is None for s in stats) or len(conv.outputs) != 1:
        return None
    w = _const(conv.inputs[1])
    b = _const(conv.inputs[2]) if len(conv.inputs) > 2 else None
    if w is None or (len(conv.inputs) > 2 and conv.inputs[2] is not None and b is None) or w.dtype.kind != "f":
        return None
    gamma, beta, mean, var = (s.astype(np.float64) for s in stats)
    scale = gamma / np.sqrt(var + bn.attrs.get("epsilon", 1e-5))
    if conv.op == "Conv":
        w_new = w * scale.reshape(-1, *([1] * (w.ndim - 1)))
    else:  # ConvTranspose weights are (C_in, C_out / group, ...): scale the output-channel axis per group
        group = conv.attrs.get("group", 1)
        per = w.shape[1]
        w_new = w * scale.reshape(group, 1, per, *([1] * (w.ndim - 2))).repeat(w.shape[0] // group, 0).reshape(
            w.shape[0], per, *([1] * (w.ndim - 2)))
    b_old = np.zeros_like(mean) if b is None else b.astype(np.float64)
    b_new = (b_old - mean) * scale + beta
    w_value = Value(f"{conv.name}/W_bn", const=w_new.astype(w.dtype))
    b_value = Value(f"{conv.name}/B_bn", const=b_new.astype(w.dtype))
    graph.initializers.extend([w_value, b_value])
    conv.inputs = [conv.inputs[0], w_value, b_value]
    out = bn.outputs[0]
    conv.outputs = [out]
    out.producer = conv
    return bn
