"""Fuse connected groups of elementwise operators (and reductions with their epilogues) into one TBE kernel.

Nodes are visited in topological order; a node the TBE translation supports
(:func:`opencann.tbe.fusion.fusible`) joins the group of its producers — all of them when that keeps the
graph acyclic, else the largest one that does, else it starts a group. A merge is refused when some
path leaves the group through another node and comes back (the fused node would depend on itself).
Each group of at least two computing nodes becomes one ``opencann::FusedElementwise`` node whose ``body``
attribute holds the group as a subgraph: its inputs are the values the group reads (size-1 constants are
copied into the body, where they become ``tbe.const``), its outputs the group's values that are read
outside it or are graph outputs — with their names, types and ``Value`` objects kept. A rank-0 input of a
group whose outputs all have rank >= 1 (an optimizer's step size) is read through a ``Reshape`` to ``[1]`` (the
same broadcast), made once per value: the kernel then takes its compiled fast path, which skips ~20 us of checks.

Small tensors (fewer than :data:`MIN_ELEMENTS` elements) are left alone: NumPy runs them in a few
microseconds an op, while each distinct fused kernel costs a Numba compile (once per machine: the TBE
disk cache keeps it) — and scalar arithmetic (an optimizer's bias corrections) would otherwise bridge
every variable's update into one huge kernel. Loop and Scan bodies (and the subgraphs inside them) run once
per iteration, so there every launch saved counts many times over: only scalars stay unfused
(:data:`BODY_MIN_ELEMENTS`) — an RNN cell's gates become one kernel per time step.

It runs last in the pipeline, after ``convert_precision``: the bodies then hold the final dtypes and the
precision pass's casts, and mixed precision still sees every operator it keeps in float32.
"""
from __future__ import annotations

import heapq
import itertools
import math

import numpy as np

from opencann.compiler.ir import Graph, Node, TensorType, Value
from opencann.errors import AclError, ErrorCode
from opencann.tbe import fusion

MIN_OPS = 2  # computing nodes (Identity excluded) a group needs to be worth a kernel
MIN_ELEMENTS = 1 << 14  # smaller iteration spaces stay unfused: NumPy is quick there and a kernel costs a compile
BODY_MIN_ELEMENTS = 2  # in loop bodies: everything but scalars (a kernel's launch costs more than a NumPy scalar op)
LOOPS = frozenset({"Loop", "Scan"})  # ONNX operators whose bodies run once per iteration


def fuse_elementwise(graph: Graph, min_elements: int = MIN_ELEMENTS) -> Graph:
    """Replace every fusible group of ``graph``'s nodes, and of its subgraphs', by one FusedElementwise node, in
    place; returns it.

    Only nodes whose iteration space (output, or reduced input) has at least ``min_elements`` elements
    (:data:`BODY_MIN_ELEMENTS` inside loop bodies), or a dynamic dimension, take part.
    """
    return _fuse(graph, min_elements, _names(graph))


def _names(graph: Graph) -> set[str]:
    """Every value and node name of ``graph`` and its subgraphs (fused nodes get fresh ones)."""
    names = {v.name for v in graph.values()} | {n.name for n in graph.nodes}
    for n in graph.nodes:
        for body in n.subgraphs.values():
            names |= _names(body)
    return names


def _fuse(graph: Graph, min_elements: int, names: set[str]) -> Graph:
    for n in graph.nodes:
        if not n.domain:  # If, Loop, Scan (a fused node's body is not fused again)
            for body in n.subgraphs.values():
                _fuse(body, min(min_elements, BODY_MIN_ELEMENTS) if n.op in LOOPS else min_elements, names)
        fusion.refine(n)
    consumers: dict[str, list[Node]] = {}
    for n in graph.nodes:
        for name in _reads(n):
            consumers.setdefault(name, []).append(n)
    for v in graph.outputs:
        consumers.setdefault(v.name, []).append(None)  # read by the caller
    groups = _groups(graph, consumers, min_elements)
    counter = itertools.count()
    fused: dict[int, Node] = {}  # id(first member) -> fused node
    members: set[int] = set()
    widened: dict[str, Node] = {}  # rank-0 value -> its Reshape to [1]
    for group in groups:
        if sum(n.op != "Identity" for n in group) < MIN_OPS:
            continue
        node = _fused_node(graph, group, _fresh(names, "fused_elementwise", counter), consumers)
        if node.outputs:  # a group nothing reads is dead code: left for eliminate_dead_code
            _widen_scalars(graph, node, widened, names, counter)
            fused[id(group[0])] = node
            members.update(id(n) for n in group)
    if not fused:
        return graph
    nodes = [fused.get(id(n), n) for n in graph.nodes if id(n) not in members or id(n) in fused]
    graph.nodes = _toposort([*nodes, *widened.values()])
    return graph


def _groups(graph: Graph, consumers: dict[str, list[Node | None]], min_elements: int) -> list[list[Node]]:
    """Groups of fusible nodes (each in topological order), built greedily without creating cycles."""
    index = {id(n): i for i, n in enumerate(graph.nodes)}
    group_of: dict[int, list[Node]] = {}
    for n in graph.nodes:
        if not fusion.fusible(n) or not _large(n, min_elements):
            continue
        candidates = []
        for v in n.inputs:
            g = group_of.get(id(v.producer)) if v is not None and v.producer is not None else None
            if g is not None and all(g is not c for c in candidates):
                candidates.append(g)
        candidates.sort(key=len, reverse=True)
        options = ([candidates] if len(candidates) > 1 else []) + [[g] for g in candidates]
        chosen = next((o for o in options if not _cycle([*itertools.chain(*o), n], consumers, index)), [])
        group = [m for g in chosen for m in g]
        group.append(n)
        group.sort(key=lambda m: index[id(m)])
        for m in group:
            group_of[id(m)] = group
    unique = {id(g): g for g in group_of.values()}
    return sorted(unique.values(), key=lambda g: index[id(g[0])])


def _large(node: Node, min_elements: int) -> bool:
    """Whether ``node`` iterates over at least ``min_elements`` elements (or a dynamic number of them)."""
    shape = (node.inputs[0] if node.op in fusion.REDUCTIONS else node.outputs[0]).type.shape
    return not all(isinstance(d, int) for d in shape) or math.prod(shape) >= min_elements


def _cycle(nodes: list[Node], consumers: dict[str, list[Node | None]], index: dict[int, int]) -> bool:
    """Whether a path from ``nodes`` through some other node leads back into ``nodes``."""
    inside = {id(n) for n in nodes}
    last = max(index[id(n)] for n in nodes)
    stack = [c for n in nodes for v in n.outputs for c in consumers.get(v.name, ()) if id(c) not in inside]
    seen: set[int] = set()
    while stack:
        n = stack.pop()
        if n is None or id(n) in seen or index[id(n)] > last:
            continue
        seen.add(id(n))
        for v in n.outputs:
            for c in consumers.get(v.name, ()):
                if id(c) in inside:
                    return True
                stack.append(c)
    return False


def _fused_node(graph: Graph, group: list[Node], name: str, consumers: dict[str, list[Node | None]]) -> Node:
    """The FusedElementwise node standing for ``group`` (whose output Values it takes over)."""
    inside = {id(n) for n in group}
    produced = {id(v) for n in group for v in n.outputs}
    body_of: dict[int, Value] = {}
    inputs, body_inputs, consts = [], [], []
    for n in group:
        for i, v in enumerate(n.inputs):
            if v is None or id(v) in produced or id(v) in body_of:
                continue
            if v.const is not None and (v.const.size == 1 or i in fusion.const_inputs(n)):
                body_of[id(v)] = Value(f"{name}/c{len(consts)}", const=v.const.copy())
                consts.append(body_of[id(v)])
            else:
                body_of[id(v)] = Value(f"{name}/in{len(inputs)}", v.type)
                inputs.append(v)
                body_inputs.append(body_of[id(v)])
    body_nodes = []
    for n in group:
        outs = [Value(f"{name}/{v.name}", v.type) for v in n.outputs]
        body_of.update((id(v), b) for v, b in zip(n.outputs, outs, strict=True))
        ins = [body_of[id(v)] if v is not None else None for v in n.inputs]
        body_nodes.append(Node(n.op, ins, outs, dict(n.attrs), name=n.name, domain=n.domain))
    outputs = [v for n in group for v in n.outputs
               if any(c is None or id(c) not in inside for c in consumers.get(v.name, ()))]
    body = Graph(inputs=body_inputs, outputs=[body_of[id(v)] for v in outputs], nodes=body_nodes,
                 initializers=consts, name=name, opsets=dict(graph.opsets))
    graph.opsets.setdefault(fusion.DOMAIN, 1)
    return Node(fusion.OP, inputs, outputs, {"body": body}, name=name, domain=fusion.DOMAIN)


def _widen_scalars(graph: Graph, node: Node, widened: dict[str, Node], names: set[str], counter) -> None:
    """Read the rank-0 inputs of ``node`` through a Reshape to ``[1]`` when all its outputs have rank >= 1."""
    if not all(isinstance(v.type, TensorType) and v.type.rank for v in node.outputs):
        return
    for k, v in enumerate(node.inputs):
        if not isinstance(v.type, TensorType) or v.type.shape != ():
            continue
        if v.name not in widened:
            name = _fresh(names, f"{v.name}/as_1d", counter)
            shape = Value(f"{name}/shape", const=np.ones(1, np.int64))
            graph.initializers.append(shape)
            widened[v.name] = Node("Reshape", [v, shape], [Value(name, TensorType(v.type.dtype, (1,)))], name=name)
        node.inputs[k] = widened[v.name].outputs[0]
        node.attrs["body"].inputs[k].type = node.inputs[k].type


def _fresh(taken: set[str], base: str, counter) -> str:
    name = f"{base}_{next(counter)}"
    while name in taken:
        name = f"{base}_{next(counter)}"
    taken.add(name)
    return name


def _toposort(nodes: list[Node]) -> list[Node]:
    """``nodes`` in dependency order, otherwise keeping their order (a heap on the original position)."""
    producer = {v.name: i for i, n in enumerate(nodes) for v in n.outputs if v.name}
    waiting = [0] * len(nodes)
    users: dict[int, list[int]] = {}
    for i, n in enumerate(nodes):
        deps = {producer[name] for name in _reads(n) if name in producer and producer[name] != i}
        waiting[i] = len(deps)
        for d in deps:
            users.setdefault(d, []).append(i)
    ready = [i for i, w in enumerate(waiting) if w == 0]
    heapq.heapify(ready)
    order = []
    while ready:
        i = heapq.heappop(ready)
        order.append(nodes[i])
        for u in users.get(i, ()):
            waiting[u] -= 1
            if waiting[u] == 0:
                heapq.heappush(ready, u)
    if len(order) != len(nodes):  # _cycle rules this out
        raise AclError(ErrorCode.INTERNAL_ERROR, "fuse_elementwise: the fused graph has a cycle")
    return order


def _reads(n: Node) -> set[str]:
    """Names of the values ``n`` reads, its subgraphs' captures included."""
    names = {v.name for v in n.inputs if v is not None}
    for sub in n.subgraphs.values():
        names |= sub.outer_names()
    return names
