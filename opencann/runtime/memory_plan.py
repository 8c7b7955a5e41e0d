"""Static memory planning: every activation of a graph gets an offset in one arena.

For a graph whose activations (node outputs) have static shapes, :func:`plan_memory` computes each one's
size and lifetime (from the step that produces it to its last reader; graph outputs live to the end),
lets an elementwise node write into its first input's buffer when that input dies there (in place),
then places the buffers greedily, largest first, each in the best-fitting gap left by the buffers
already placed whose lifetimes overlap it (the "greedy by size" planner of TFLite and ORT's mem-pattern
planner). Offsets are aligned to 64 bytes. ``arena_bytes`` is the planned peak activation memory;
``naive_bytes`` what allocating every activation separately would take; ``live_bytes`` the largest
total of buffers alive at one step (a lower bound for the arena).
"""
from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, field

import numpy as np

from opencann.compiler.ir import Graph, TensorType

ALIGNMENT = 64
# operators whose output may overwrite their first input (same shape and dtype when the sizes agree)
INPLACE_OPS = frozenset({
    "Abs", "Add", "Clip", "Cos", "Div", "Elu", "Erf", "Exp", "Gelu", "HardSigmoid", "HardSwish", "Identity",
    "LeakyRelu", "Log", "Mul", "Neg", "Pow", "Reciprocal", "Relu", "Selu", "Sigmoid", "Sin", "Softplus",
    "Softsign", "Sqrt", "Sub", "Tanh", "ThresholdedRelu", "Celu", "Mish", "Sign", "Floor", "Ceil", "Round",
})


@dataclass
class Buffer:
    """One arena block: the activations sharing it (in-place chains), its size and lifetime in steps."""

    names: list[str]
    size: int
    start: int
    end: int
    offset: int = -1


@dataclass
class MemoryPlan:
    """Where each activation lives in the arena, and the totals that ``opencann atc --mode 6`` prints."""

    buffers: list[Buffer]
    arena_bytes: int
    naive_bytes: int
    live_bytes: int
    inplace: int  # activations written over their input
    unknown: list[str] = field(default_factory=list)  # activations without a static shape (not planned)

    def offsets(self) -> dict[str, tuple[int, int]]:
        """``name -> (offset, size)`` of every planned activation."""
        return {n: (b.offset, b.size) for b in self.buffers for n in b.names}


def tensor_bytes(t) -> int | None:
    """Bytes of a statically shaped tensor type; ``None`` when the type or a dimension is unknown."""
    if not isinstance(t, TensorType) or not t.is_static or t.dtype == object:
        return None
    return int(np.prod(t.shape, dtype=np.int64)) * t.dtype.itemsize


def _aligned(n: int) -> int:
    return -(-n // ALIGNMENT) * ALIGNMENT


def plan_memory(graph: Graph) -> MemoryPlan:
    """Plan the activations of ``graph`` (see the module docstring); subgraph bodies are not planned."""
    n_steps = len(graph.nodes)
    last = last_uses(graph)
    outputs = {v.name for v in graph.outputs}
    owner: dict[str, Buffer] = {}
    buffers, unknown, sizes, inplace = [], [], {}, 0
    for idx, node in enumerate(graph.nodes):
        for pos, v in enumerate(node.outputs):
            size = tensor_bytes(v.type) if v.name else None
            if size is None:
                if v.name:
                    unknown.append(v.name)
                continue
            sizes[v.name] = size
            end = n_steps if v.name in outputs else last.get(v.name, idx)
            src = node.inputs[0] if pos == 0 and node.inputs and node.op in INPLACE_OPS else None
            buf = owner.get(src.name) if src is not None else None
            if buf is not None and buf.end == idx and sizes[src.name] == size and src.name not in outputs:
                buf.names.append(v.name)
                buf.end = max(end, idx)
                inplace += 1
            else:
                buf = Buffer([v.name], size, idx, max(end, idx))
                buffers.append(buf)
            owner[v.name] = buf
    arena = _place(buffers)
    return MemoryPlan(buffers, arena, sum(sizes.values()), _live_peak(buffers, n_steps), inplace, unknown)


def last_uses(graph: Graph) -> dict[str, int]:
    """Each value's last reading node's index (subgraph reads count for their node; unread: its producer)."""
    last: dict[str, int] = {}
    for idx, node in enumerate(graph.nodes):
        for v in node.inputs:
            if v is not None:
                last[v.name] = idx
        for g in node.subgraphs.values():
            for name in g.outer_names():
                last[name] = idx
        for v in node.outputs:
            last.setdefault(v.name, idx)
    return last


def _place(buffers: list[Buffer]) -> int:
    """Assign offsets (largest first, best-fitting gap among overlapping placed buffers); the arena size."""
    placed: list[Buffer] = []
    top = 0
    for buf in sorted(buffers, key=lambda b: (-b.size, b.start)):
        need = _aligned(buf.size)
        busy = sorted((b.offset, b.offset + _aligned(b.size)) for b in placed
                      if b.start <= buf.end and buf.start <= b.end)
        best, best_gap, cursor = None, None, 0
        for lo, hi in busy:
            gap = lo - cursor
            if gap >= need and (best_gap is None or gap < best_gap):
                best, best_gap = cursor, gap
            cursor = max(cursor, hi)
        buf.offset = best if best is not None else cursor
        top = max(top, buf.offset + need)
        placed.append(buf)
    return top


def _live_peak(buffers: list[Buffer], n_steps: int) -> int:
    delta = [0] * (n_steps + 2)
    for b in buffers:
        delta[b.start] += b.size
        delta[b.end + 1] -= b.size
    peak = live = 0
    for d in delta:
        live += d
        peak = max(peak, live)
    return peak


def plan_arena(graph: Graph, planned: Collection[str], kernel_nodes: Collection[int]) -> MemoryPlan:
    """Offsets for the activations ``planned`` (static shapes; written by their node's kernel into the arena).

    No in-place sharing, and lifetimes are conservative about views: the output of a node not in
    ``kernel_nodes`` (whose outputs are fresh or planned buffers) may alias any of its inputs (Reshape,
    Transpose, Slice, Identity return views), so a planned buffer lives until the last use of every value
    that may alias it; one reaching a graph output lives to the end of the run.
    """
    n_steps = len(graph.nodes)
    last = last_uses(graph)
    for v in graph.outputs:
        last[v.name] = n_steps
    aliases: dict[str, frozenset[str]] = {}  # value -> planned values whose memory it may share
    buffers: dict[str, Buffer] = {}
    fresh = set(kernel_nodes)
    for idx, node in enumerate(graph.nodes):
        reads = [v.name for v in node.inputs if v is not None]
        reads += [name for g in node.subgraphs.values() for name in g.outer_names()]
        inherited = frozenset() if idx in fresh else frozenset().union(*(aliases.get(n, ()) for n in reads))
        for v in node.outputs:
            if not v.name:
                continue
            own = v.name in planned and tensor_bytes(v.type) is not None
            if own:
                buffers[v.name] = Buffer([v.name], tensor_bytes(v.type), idx, max(idx, last.get(v.name, idx)))
            aliases[v.name] = inherited | {v.name} if own else inherited
            for root in aliases[v.name]:
                buffers[root].end = max(buffers[root].end, last.get(v.name, idx))
    placed = list(buffers.values())
    arena = _place(placed)
    total = sum(b.size for b in placed)
    return MemoryPlan(placed, arena, total, _live_peak(placed, n_steps), 0)
