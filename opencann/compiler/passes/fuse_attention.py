"""Attention fusion: scaled dot-product attention subgraphs become one ``opencann::Attention``.

Matched (after :mod:`~opencann.compiler.passes.fuse_patterns`, whose FusedMatMul may already hold the scale,
a mask row and the softmax)::

    MatMul(softmax(scale * Q' @ K' [+ mask]), V') [-> Transpose ... -> Reshape ...]

(the probabilities possibly guarded by ``Where(IsNaN(p), 0, p)``, as PyTorch exports boolean masks)

as exported from PyTorch by BERT/HF-style layers, ``nn.MultiheadAttention`` and
``F.scaled_dot_product_attention``: the scale may be a Mul/Div after the product, the FusedMatMul's
``alpha``, or scalar Muls on Q' and K' (SDPA's ``sqrt(scale)`` on each). Q', K' and V' are traced back
through the head-splitting view operators (Transpose, Reshape, Squeeze, Unsqueeze, Flatten, Split, Gather of a
scalar index) to the tensors they view (the projections' outputs, often one packed QKV tensor); the fused node
reads those and records each head view as [offset, sizes, strides]. Forward, the head-merging
Transpose/Reshape chain after the last MatMul is absorbed: the node writes the merged layout directly.
Every shape involved must be static; intermediate values of the scores path must be read by the pattern
only (view nodes read elsewhere stay, and dead ones go).
"""
from __future__ import annotations

import numpy as np

from opencann.compiler.ir import Graph, Node, TensorType, Value
from opencann.compiler.passes import const_of, readers_of, scalar_of
from opencann.compiler.passes.dead_code import eliminate_dead_code
from opencann.ops.registry import OPENCANN_DOMAIN

_VIEWS = ("Transpose", "Reshape", "Squeeze", "Unsqueeze", "Flatten", "Split", "Gather", "Identity")
F32 = np.dtype(np.float32)


def fuse_attention(graph: Graph) -> Graph:
    """Fuse every attention subgraph of ``graph`` in place; returns it."""
    readers = readers_of(graph)
    outputs = {v.name for v in graph.outputs}
    replaced: dict[int, Node | None] = {}
    for node in graph.nodes:
        if node.op == "MatMul" and not node.domain and id(node) not in replaced:
            _fuse(graph, node, readers, outputs, replaced)
    if replaced:
        graph.nodes = [replaced.get(id(n), n) for n in graph.nodes if replaced.get(id(n), n) is not None]
        eliminate_dead_code(graph)
    return graph


def _shape(v: Value | None) -> tuple[int, ...] | None:
    t = v.type if v is not None else None
    return t.shape if isinstance(t, TensorType) and t.is_static else None


def _only_reader(v: Value, readers, outputs) -> Node | None:
    rs = readers.get(v.name, ())
    return rs[0] if len(rs) == 1 and v.name not in outputs else None


def _fuse(graph: Graph, anchor: Node, readers, outputs, replaced) -> None:
    probs, v_in = anchor.inputs
    scores = _scores(probs, anchor, readers, outputs, graph.opsets.get("", 1))
    if scores is None:
        return
    q_in, k_in, mask, scale, zero_nan_rows = scores
    traced = [_trace(x, scaled) for x, scaled in ((q_in, True), (k_in, True), (v_in, False))]
    if any(t is None for t in traced) or mask is not None and _shape(mask) is None:
        return
    (q_src, q_ops, q_scale), (k_src, k_ops, k_scale), (v_src, v_ops, _) = traced
    views = [_view(q_src, q_ops, _shape(q_in)), _view(k_src, k_ops, _shape(k_in)), _view(v_src, v_ops, _shape(v_in))]
    chain, y = _merge_chain(anchor, readers, outputs)
    views.append(_out_view(chain, y, _shape(anchor.outputs[0])))
    if any(x is None for x in views) or len({x.type.dtype for x in (q_src, k_src, v_src)}) > 1:
        return
    views[1] = (views[1][0].swapaxes(-1, -2), views[1][1])
    (q, _), (k, _), (v, _), (o, _) = views
    if q.shape[:2] != k.shape[:2] or k.shape[:3] != v.shape[:3] or q.shape[3] != k.shape[3] \
            or o.shape != (*q.shape[:3], v.shape[3]):
        return
    graph.opsets.setdefault(OPENCANN_DOMAIN, 1)
    specs = [_spec(a, base) for a, base in views]
    attrs = {"q_view": specs[0], "k_view": specs[1], "v_view": specs[2], "y_view": specs[3],
             "y_shape": list(_shape(y)), "scale": scale * q_scale * k_scale, "zero_nan_rows": zero_nan_rows}
    fused = Node("Attention", [q_src, k_src, v_src, mask], [y], attrs, name=anchor.name, domain=OPENCANN_DOMAIN)
    last = chain[-1] if chain else anchor
    replaced.update({id(n): None for n in (anchor, *chain)})
    replaced[id(last)] = fused


def _nan_guard(probs: Value, readers, outputs) -> Value | None:
    """``p`` where ``probs = Where(IsNaN(p), 0, p)`` (PyTorch's guard for fully masked rows) reads ``p`` alone."""
    w = probs.producer
    if w is None or w.op != "Where" or w.domain or len(w.inputs) != 3 or scalar_of(w.inputs[1]) != 0.0:
        return None
    cond, p = w.inputs[0], w.inputs[2]
    isnan = cond.producer
    if isnan is None or isnan.op != "IsNaN" or isnan.domain or isnan.inputs[0] is not p \
            or _only_reader(cond, readers, outputs) is not w or p.name in outputs \
            or {id(r) for r in readers.get(p.name, ())} != {id(isnan), id(w)} or _shape(p) != _shape(probs):
        return None
    return p


def _scores(probs: Value, anchor: Node, readers, outputs, opset: int):
    """(Q', K', mask or None, scale, zero_nan_rows) when ``probs`` is the softmax of scaled, masked scores read by
    ``anchor`` alone (possibly through a NaN guard)."""
    if _only_reader(probs, readers, outputs) is not anchor or anchor.inputs[0] is anchor.inputs[1]:
        return None
    guarded = _nan_guard(probs, readers, outputs)
    probs = guarded or probs
    p = probs.producer
    if p is None:
        return None
    if p.op == "FusedMatMul" and p.domain == OPENCANN_DOMAIN and p.attrs.get("activation") == "softmax":
        bias = p.inputs[2] if len(p.inputs) > 2 else None
        return p.inputs[0], p.inputs[1], bias, float(p.attrs.get("alpha", 1.0)), int(guarded is not None)
    rank = len(_shape(probs) or ())
    axis = p.attrs.get("axis", -1 if opset >= 13 else 1)
    if p.op != "Softmax" or p.domain or not rank or axis % rank != rank - 1:
        return None
    x, mask, scale = p.inputs[0], None, 1.0
    while True:
        n = x.producer
        if n is None or n.domain not in ("", OPENCANN_DOMAIN) or _only_reader(x, readers, outputs) is None:
            return None
        if n.op == "Add" and not n.domain and mask is None and scale == 1.0:
            scored = [i for i, u in enumerate(n.inputs) if _is_product(u)]
            if len(scored) != 1:
                return None
            x, mask = n.inputs[scored[0]], n.inputs[1 - scored[0]]
        elif n.op in ("Mul", "Div") and not n.domain:
            c = scalar_of(n.inputs[1])
            c = scalar_of(n.inputs[0]) if c is None and n.op == "Mul" else c
            x = n.inputs[0] if scalar_of(n.inputs[1]) is not None else n.inputs[1]
            if not c or _shape(x) != _shape(n.outputs[0]):
                return None
            scale *= c if n.op == "Mul" else 1 / c
        elif n.op == "MatMul" and not n.domain:
            return n.inputs[0], n.inputs[1], mask, scale, int(guarded is not None)
        elif n.op == "FusedMatMul" and n.domain == OPENCANN_DOMAIN and n.attrs.get("activation", "none") == "none":
            bias = n.inputs[2] if len(n.inputs) > 2 else None
            if bias is not None and mask is not None:
                return None
            alpha = scale * n.attrs.get("alpha", 1.0)
            return n.inputs[0], n.inputs[1], bias if bias is not None else mask, alpha, int(guarded is not None)
        else:
            return None


def _is_product(x: Value) -> bool:
    """Whether ``x`` is a MatMul/FusedMatMul product, possibly scaled by scalar Muls and Divs."""
    n = x.producer
    while n is not None and n.op in ("Mul", "Div") and not n.domain and scalar_of(n.inputs[1]) is not None:
        n = n.inputs[0].producer
    return n is not None and n.op in ("MatMul", "FusedMatMul") and n.domain in ("", OPENCANN_DOMAIN)


def _trace(x: Value, scaled: bool):
    """(source value, view ops from source to ``x``, scale) through view operators (and scalar Muls when
    ``scaled``), or None."""
    ops, scale = [], 1.0
    while True:
        n = x.producer
        if _shape(x) is None:
            return None
        if n is None or n.domain:
            return x, ops[::-1], scale
        if n.op in ("Mul", "Div") and scaled:
            c = scalar_of(n.inputs[1])
            if not c or _shape(n.inputs[0]) != _shape(x):
                return x, ops[::-1], scale
            scale *= c if n.op == "Mul" else 1 / c
            x = n.inputs[0]
            continue
        op = _view_op(n, x) if n.op in _VIEWS else None
        if op is None:
            return x, ops[::-1], scale
        ops.append(op)
        x = n.inputs[0]


def _view_op(n: Node, out: Value):
    """A function replaying node ``n`` (producing ``out``) on an array as a NumPy view, or None."""
    if n.op == "Transpose":
        perm = n.attrs.get("perm")
        return (lambda a: a.transpose(perm)) if perm is not None else (lambda a: a.transpose())
    if n.op in ("Reshape", "Squeeze", "Unsqueeze", "Flatten", "Identity"):
        return _Reshape(_shape(out))
    rank = len(_shape(n.inputs[0]) or ())
    axis = n.attrs.get("axis", 0) % rank if rank else 0
    if n.op == "Gather":
        idx = const_of(n.inputs[1])
        if idx is None or idx.ndim != 0 or idx.dtype.kind not in "iu":
            return None
        i = int(idx) % _shape(n.inputs[0])[axis]
        return lambda a: a[(slice(None),) * axis + (i,)]
    if any(_shape(v) is None for v in n.outputs):  # Split
        return None
    sizes = [_shape(v)[axis] for v in n.outputs]
    j = next(j for j, v in enumerate(n.outputs) if v is out)
    start = sum(sizes[:j])
    return lambda a: a[(slice(None),) * axis + (slice(start, start + sizes[j]),)]


class _Reshape:
    """A Reshape replayed as a view (raises ValueError where it would copy)."""

    def __init__(self, shape: tuple[int, ...]):
        self.shape = shape

    def __call__(self, a: np.ndarray) -> np.ndarray:
        return a.reshape(self.shape, copy=False)


def _dummy(shape: tuple[int, ...]) -> np.ndarray:
    """A C-contiguous float32 array of ``shape`` without memory: only its views' offsets and strides are read."""
    strides = np.cumprod((1, *shape[:0:-1]))[::-1] * 4
    return np.lib.stride_tricks.as_strided(np.zeros(1, F32), shape, tuple(int(s) for s in strides), writeable=False)


def _view(src: Value, ops, want) -> tuple[np.ndarray, np.ndarray] | None:
    """(the (N1, N2, S, D) head view ``ops`` make of ``src`` (rank 3 gets N1 = 1), its base), or None."""
    shape = _shape(src)
    if shape is None or want is None or len(want) not in (3, 4) or src.type.dtype.kind != "f":
        return None
    base = a = _dummy(shape)
    try:
        for fn in ops:
            a = fn(a)
    except ValueError:  # a Reshape that would copy: the composition may still be a view (nn.MultiheadAttention)
        a = _affine(shape, ops, base)
    if a is None or a.shape != want:
        return None
    return (a[None] if a.ndim == 3 else a), base


def _affine(shape: tuple[int, ...], ops, base: np.ndarray) -> np.ndarray | None:
    """The view of ``base`` that ``ops`` make of an array of ``shape`` when their result's elements are evenly
    spaced in it, found by replaying them on the element indices; else None."""
    if int(np.prod(shape)) > 1 << 24:
        return None
    index = np.arange(int(np.prod(shape)), dtype=np.int32).reshape(shape)
    for fn in ops:
        index = fn(index) if not isinstance(fn, _Reshape) else index.reshape(fn.shape)
    if index.size == 0:
        return None
    offset = int(index.reshape(-1)[0])
    strides = [int(np.take(index, 1, axis=i).reshape(-1)[0]) - offset if n > 1 else 0
               for i, n in enumerate(index.shape)]
    grid = offset + sum(np.arange(n).reshape((-1,) + (1,) * (index.ndim - 1 - i)) * s
                        for i, (n, s) in enumerate(zip(index.shape, strides, strict=True)))
    if min(strides, default=0) < 0 or not np.array_equal(index, grid):
        return None
    flat = base.reshape(-1)
    return np.lib.stride_tricks.as_strided(flat[offset:], index.shape, [s * 4 for s in strides], writeable=False)


def _spec(a: np.ndarray, base: np.ndarray) -> list[int]:
    """[offset, 4 sizes, 4 strides] of view ``a`` of ``base``, in elements."""
    offset = a.__array_interface__["data"][0] - base.__array_interface__["data"][0]
    return [offset // 4, *a.shape, *(s // 4 for s in a.strides)]


def _merge_chain(anchor: Node, readers, outputs) -> tuple[list[Node], Value]:
    """The Transposes, then Reshapes, read alone after ``anchor`` (merging the heads), and the last value."""
    chain, y = [], anchor.outputs[0]
    while True:
        n = _only_reader(y, readers, outputs)
        if n is None or n.domain or n.op not in ("Transpose", "Reshape") or _shape(n.outputs[0]) is None \
                or n.inputs[0] is not y or n.op == "Transpose" and any(c.op == "Reshape" for c in chain):
            return chain, y
        chain.append(n)
        y = n.outputs[0]


def _out_view(chain: list[Node], y: Value, want) -> tuple[np.ndarray, np.ndarray] | None:
    """The (N1, N2, Sq, Dv) view of the contiguous result ``y`` where the attention product lands, or None."""
    if _shape(y) is None or want is None or len(want) not in (3, 4):
        return None
    base = a = _dummy(_shape(y))
    for n in reversed(chain):
        if n.op == "Reshape":
            a = a.reshape(_shape(n.inputs[0]))  # of a contiguous array: a view
        else:
            perm = n.attrs.get("perm", list(range(a.ndim))[::-1])
            a = a.transpose(np.argsort(perm))
    if a.shape != want:
        return None
    return (a[None] if a.ndim == 3 else a), base
