"""Constant folding: evaluate at compile time what does not depend on the graph's inputs.

A node whose inputs are all constants (initializers, or values folded before it) is run once with our own
kernels (a one-node :class:`~opencann.runtime.executor.Plan`) and its outputs become initializers with the
same names, so graph outputs, subgraph captures and readers need no rewiring.

Shapes are folded as far as shape inference knows them: ``Size`` of a static value, and the
``Shape -> Gather/Slice -> Unsqueeze -> Concat`` arithmetic PyTorch exports is followed symbolically, so its
entries that are static dimensions become constants, and a ``Reshape`` target whose only unknown entries
are the Reshape input's own dimensions, in place, becomes a constant with 0 there ("copy this dimension":
a dynamic batch keeps working). Skipped: random operators, operators with subgraphs, non-ONNX domains (they may
keep state), ``Identity`` (simplification removes it without copying its constant) and results larger
than 64 MiB, or larger than 4x their inputs and 64 KiB (a folded Expand/Tile/ConstantOfShape must not
blow up the model).

It runs first (after the input shapes are fixed and inferred) so that the passes after it see constant
shape arguments and weights.
"""
from __future__ import annotations

import itertools
from collections import Counter

import numpy as np

from opencann.compiler.ir import Graph, Node, TensorType, Value
from opencann.compiler.passes.simplify import RANDOM_OPS
from opencann.errors import AclError

MAX_BYTES = 64 << 20
SMALL_BYTES = 64 << 10
GROWTH = 4
SKIP = RANDOM_OPS | {"Identity"}


def constant_fold(graph: Graph, drop_folded: bool = False) -> Graph:
    """Fold every foldable node of ``graph`` into initializers, in place; returns ``graph``.

    With ``drop_folded``, a constant that only folded nodes read is dropped as soon as its last reader is
    folded (instead of by dead-code elimination later), so that the weights a folded Transpose replaces are
    freed before the next one is made: the compiler's peak memory stays near one copy of the weights.
    """
    kept, known, uses, dead = [], {}, _uses(graph), set()
    for node in graph.nodes:
        results = _fold(node, graph, known)
        if results is None:
            kept.append(node)
            continue
        for v, arr in zip(node.outputs, results, strict=True):
            v.const, v.producer, v.type = arr, None, TensorType(arr.dtype, arr.shape)
            graph.initializers.append(v)
        if drop_folded:
            _drop_read(node, uses, dead)
    graph.nodes = kept
    graph.initializers = [v for v in graph.initializers if v.name not in dead]
    return graph


def _drop_read(node: Node, uses: Counter, dead: set[str]) -> None:
    """Count the reads of the folded ``node``; a constant read for the last time loses its data now."""
    for v in node.inputs:
        if v is not None and v.const is not None:
            uses[v.name] -= 1
            if uses[v.name] == 0:
                dead.add(v.name)
                v.const = None  # the folded node still holds the value until the pass ends


def _uses(graph: Graph) -> Counter:
    """How many times each value is read: as a node input, by a subgraph, as a graph output."""
    uses = Counter(v.name for n in graph.nodes for v in n.inputs if v is not None)
    uses.update(name for n in graph.nodes for g in n.subgraphs.values() for name in g.outer_names())
    uses.update(v.name for v in graph.outputs)
    return uses


def _fold(node: Node, graph: Graph, known: dict[str, Dims]) -> list[np.ndarray] | None:
    if node.domain or node.op in SKIP or node.subgraphs or not all(v.name for v in node.outputs):
        return None
    if node.op == "Size" and _size(node) is not None:
        return [_size(node)]
    if node.op in _SHAPE_OPS and len(node.outputs) == 1:
        dims = _symbolic(node, known)
        if dims is not None and all(isinstance(e, int) for e in dims[0]):
            return [np.array(dims[0][0] if dims[1] else dims[0], np.int64)]
        if dims is not None:
            known[node.outputs[0].name] = dims
    if node.op == "Reshape":
        _static_reshape_target(graph, node, known)
    if not all(v is None or v.const is not None for v in node.inputs):
        return None
    if node.op == "Constant":  # its data is in the model already
        return _evaluate(node, graph.opsets)
    in_bytes = sum(v.const.nbytes for v in node.inputs if v is not None)
    sizes = [_nbytes(v) for v in node.outputs]
    if any(b is not None and not _small_enough(b, in_bytes) for b in sizes):
        return None
    if any(b is None for b in sizes) and node.op in _GROWING:
        return None  # an unknown result size could be anything: do not even evaluate it
    results = _evaluate(node, graph.opsets)
    if results is None or not all(_small_enough(r.nbytes, in_bytes) for r in results):
        return None
    return results


_SHAPE_OPS = frozenset({"Shape", "Gather", "Slice", "Unsqueeze", "Squeeze", "Concat"})
# operators whose result can be much larger than their inputs
_GROWING = frozenset({"Expand", "Tile", "ConstantOfShape", "Range", "Resize", "Upsample", "Pad", "OneHot", "EyeLike"})


def _small_enough(nbytes: int, in_bytes: int) -> bool:
    return nbytes <= MAX_BYTES and (nbytes <= GROWTH * in_bytes or nbytes <= SMALL_BYTES)


def _nbytes(v: Value) -> int | None:
    t = v.type
    if not isinstance(t, TensorType) or not t.is_static:
        return None
    return int(np.prod(t.shape, dtype=np.int64)) * t.dtype.itemsize


def _evaluate(node: Node, opsets: dict[str, int]) -> list[np.ndarray] | None:
    """Run ``node`` alone on its constant inputs; None when it fails or does not give plain tensors."""
    from opencann.runtime.executor import Plan

    inputs = [v for v in node.inputs if v is not None]
    outputs = [Value(v.name, v.type) for v in node.outputs]
    alone = Node(node.op, node.inputs, outputs, node.attrs, node.name, node.domain)
    uniq = list({v.name: v for v in inputs}.values())
    graph = Graph(inputs=[], outputs=outputs, nodes=[alone], initializers=uniq, opsets=opsets)
    try:
        results = Plan(graph).run({})
    except AclError:
        return None  # the runtime reports it, with the inputs it really gets
    if not all(isinstance(r, np.ndarray) and r.dtype.kind not in "OSU" and _fits(r, v.type)
               for r, v in zip(results, node.outputs, strict=True)):
        return None  # sequences, optionals, strings and surprises stay computed at run time
    return [_own(r, inputs) for r in results]


def _own(arr: np.ndarray, inputs: list[Value]) -> np.ndarray:
    """``arr`` C-ordered and sharing no memory with an input constant (a copy only where needed)."""
    arr = arr if arr.flags.c_contiguous else np.array(arr, order="C")  # (ascontiguousarray makes 0-d 1-d)
    return arr.copy() if any(np.may_share_memory(arr, v.const) for v in inputs) else arr


def _fits(arr: np.ndarray, t) -> bool:
    """``arr`` agrees with the type inference gave its value (where it gave one)."""
    if not isinstance(t, TensorType):
        return t is None
    return arr.dtype == t.dtype and (t.shape is None or (len(t.shape) == arr.ndim and all(
        not isinstance(d, int) or d == n for d, n in zip(t.shape, arr.shape, strict=True))))


def _size(node: Node) -> np.ndarray | None:
    t = node.inputs[0].type
    if not isinstance(t, TensorType) or not t.is_static:
        return None
    return np.array(int(np.prod(t.shape, dtype=np.int64)), np.int64)


# Shape arithmetic: an int64 scalar or vector whose entries are ints or (value name, axis) for a dimension of
# a value that is not static; ``(entries, is_scalar)``.
Dims = tuple[list, bool]


def _dims_of(v: Value | None, known: dict[str, Dims]) -> Dims | None:
    if v is None:
        return None
    c = v.const
    if c is not None:
        shape_like = c.dtype == np.int64 and c.ndim <= 1 and c.size <= 64
        return (c.reshape(-1).tolist(), c.ndim == 0) if shape_like else None
    return known.get(v.name)


def _symbolic(node: Node, known: dict[str, Dims]) -> Dims | None:
    """What ``node`` computes on shapes, where it is one of the operators PyTorch's shape code uses."""
    ins = [_dims_of(v, known) for v in node.inputs]
    first = ins[0] if ins else None
    if node.op == "Shape":
        shape = node.inputs[0].type.shape if isinstance(node.inputs[0].type, TensorType) else None
        if shape is None:
            return None
        entries = [d if isinstance(d, int) else (node.inputs[0].name, i) for i, d in enumerate(shape)]
        return entries[slice(node.attrs.get("start", 0), node.attrs.get("end", len(shape)))], False
    if first is None or first[1] and node.op != "Unsqueeze":
        return None
    if node.op == "Concat" and all(d is not None and not d[1] for d in ins):
        return [e for d in ins for e in d[0]], False
    if node.op == "Unsqueeze" and first[1] and _axes(node, ins) in ([0], [-1]):
        return first[0], False
    if node.op == "Squeeze" and len(first[0]) == 1 and _axes(node, ins) in (None, [0], [-1]):
        return first[0], True
    if node.op == "Gather" and node.attrs.get("axis", 0) == 0 and len(ins) == 2 and ins[1] is not None:
        idx, n = ins[1], len(first[0])
        if all(isinstance(i, int) and -n <= i < n for i in idx[0]):
            return [first[0][i] for i in idx[0]], idx[1]
    if node.op == "Slice":
        return _slice(first[0], node, ins)
    return None


def _axes(node: Node, ins: list) -> list | None:
    if "axes" in node.attrs:
        return list(node.attrs["axes"])
    return ins[1][0] if len(ins) > 1 and ins[1] is not None else None


def _slice(entries: list, node: Node, ins: list) -> Dims | None:
    args = []  # starts, ends, axes, steps
    for k, default in enumerate((None, None, 0, 1), start=1):
        v, d = (node.inputs[k], ins[k]) if k < len(node.inputs) else (None, None)
        if v is None and default is not None:
            args.append(default)
        elif d is None or len(d[0]) != 1 or not isinstance(d[0][0], int):
            return None
        else:
            args.append(d[0][0])
    starts, ends, axis, step = args
    return (entries[slice(starts, ends, step)], False) if axis in (0, -1) and step != 0 else None


def _static_reshape_target(graph: Graph, node: Node, known: dict[str, Dims]) -> None:
    """A Reshape target whose unknown entries are the input's own dimensions in place: those become 0."""
    target = _dims_of(node.inputs[1], known) if len(node.inputs) > 1 else None
    if node.inputs[1].const is not None or target is None or target[1] or node.attrs.get("allowzero", 0):
        return
    data = node.inputs[0].name
    entries = [0 if e == (data, j) else e for j, e in enumerate(target[0])]
    if all(isinstance(e, int) for e in entries):
        taken, base = {v.name for v in graph.values()}, f"{node.inputs[1].name}/static"
        name = next(f"{base}{k or ''}" for k in itertools.count() if f"{base}{k or ''}" not in taken)
        node.inputs[1] = Value(name, const=np.array(entries, np.int64))
        graph.initializers.append(node.inputs[1])
