"""Scheduling shared by both code generators: which nodes live in buffers and which loop nest computes each.

Placeholders and reductions are materialized (the kernel's inputs, or a temporary / output buffer);
every other node is inlined into the loop nest that consumes it. Stages run in order: one per reduction
(topologically), then one elementwise "map" per distinct output shape writing all outputs of that shape.
"""
from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field

from opencann import __version__
from opencann.errors import AclError, ErrorCode
from opencann.tbe.dsl import REDUCE, Tensor, topo_order

CODEGEN_VERSION = "3"
PARALLEL_MIN = 1 << 15  # iteration spaces at least this large run their outermost loop in parallel


@dataclass
class Stage:
    kind: str  # "map" or "reduce"
    shape: tuple  # the iteration space: the outputs' shape (map) or the reduced tensor's shape (reduce)
    nodes: list  # the nodes this stage writes (one for a reduction)

    @property
    def parallel(self) -> bool:
        return math.prod(self.shape) >= PARALLEL_MIN


@dataclass
class Plan:
    inputs: list
    outputs: list
    stages: list = field(default_factory=list)
    buffers: dict = field(default_factory=dict)  # id(node) -> [buffer names]; the first is read by later stages
    temps: list = field(default_factory=list)  # reductions that are not outputs: (name, node)

    def home(self, node: Tensor) -> str | None:
        """The buffer a materialized node is read from, None for inlined nodes."""
        names = self.buffers.get(id(node))
        return names[0] if names and (node.op == "placeholder" or node.op in REDUCE) else None


def _fail(message: str):
    raise AclError(ErrorCode.INVALID_PARAM, f"tbe.build: {message}")


def make_plan(outputs: list, inputs: list) -> Plan:
    """Check the kernel signature and lay out buffers and stages."""
    if not outputs:
        _fail("no outputs given")
    for t in list(outputs) + list(inputs):
        if not isinstance(t, Tensor):
            _fail(f"outputs and inputs must be tbe Tensors, got {type(t).__name__}")
    if any(t.op != "placeholder" for t in inputs) or len({id(t) for t in inputs}) != len(inputs):
        _fail("inputs must be distinct placeholders")
    plan = Plan(list(inputs), list(outputs))
    for k, t in enumerate(inputs):
        plan.buffers[id(t)] = [f"in{k}"]
    for k, t in enumerate(outputs):
        plan.buffers.setdefault(id(t), []).append(f"out{k}")
    order, input_ids = topo_order(outputs), {id(t) for t in inputs}
    for node in order:
        if node.op == "placeholder" and id(node) not in input_ids:
            _fail(f"placeholder {node.name or '(unnamed)'} {node.shape} is used but not among inputs")
        if node.op in REDUCE:
            if id(node) not in plan.buffers:
                plan.buffers[id(node)] = [f"tmp{len(plan.temps)}"]
                plan.temps.append((plan.buffers[id(node)][0], node))
            plan.stages.append(Stage("reduce", node.inputs[0].shape, [node]))
    maps: dict = {}
    for t in outputs:
        if t.op not in REDUCE and all(t is not n for n in maps.get(t.shape, [])):
            maps.setdefault(t.shape, []).append(t)
    plan.stages += [Stage("map", shape, nodes) for shape, nodes in maps.items()]
    return plan


def is_flat(plan: Plan, stage: Stage) -> bool:
    """True when a map stage needs no index arithmetic: every node it touches has its shape or one element."""
    if stage.kind != "map":
        return False
    todo, seen = list(stage.nodes), set()
    while todo:
        node = todo.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        if node.shape != stage.shape and node.size != 1:
            return False
        if plan.home(node) is None:
            todo.extend(node.inputs)
    return True


def map_index(idx: list, from_shape: tuple, to_shape: tuple) -> list:
    """The index into ``to_shape`` of the element broadcast to ``idx`` of ``from_shape`` (NumPy alignment)."""
    off = len(from_shape) - len(to_shape)
    return [idx[k + off] if d != 1 else "0" for k, d in enumerate(to_shape)]


def signature_key(plan: Plan, device: str) -> str:
    """SHA-256 of the expression structure, shapes, dtypes, device kind and versions (names excluded)."""
    order = topo_order(plan.outputs)
    pos = {id(n): k for k, n in enumerate(order)}
    nodes = [(n.op, n.shape, n.dtype, sorted((k, v) for k, v in n.attrs.items() if k != "name"),
              [pos[id(i)] for i in n.inputs]) for n in order]
    ins = [(pos.get(id(t), -1), t.shape, t.dtype) for t in plan.inputs]
    text = repr((nodes, ins, [pos[id(t)] for t in plan.outputs], device, __version__, CODEGEN_VERSION))
    return hashlib.sha256(text.encode()).hexdigest()


def describe(node: Tensor, plan: Plan, depth: int = 0) -> str:
    """A one-line rendering of an expression for comments (op names and buffer names only)."""
    home = plan.home(node)
    if home is not None and depth > 0:
        return home
    if node.op == "const":
        return repr(node.attrs["value"])
    if depth > 6:
        return "..."
    args = ", ".join(describe(i, plan, depth + 1) for i in node.inputs)
    extra = {k: v for k, v in node.attrs.items() if k in ("mode", "axes")}
    suffix = "".join(f", {k}={v}" for k, v in extra.items())
    return f"{node.op}({args}{suffix})" if node.op != "cast_to" else f"cast_to({args}, {node.dtype})"


class BodyEmitter:
    """Emits the statements of one loop body of a stage, computing each (node, index) once. Each code generator
    subclasses it with its language's ``literal``, ``load``, ``_expr`` and ``_assign``."""

    def __init__(self, plan: Plan, flat: bool):
        self.plan, self.flat, self.lines, self.memo = plan, flat, [], {}

    def index(self, node: Tensor, idx: list, shape: tuple) -> list:
        """``node``'s index expressions inside a loop nest over ``shape`` (flat: one index, or 0 for a scalar)."""
        if self.flat:
            return ["0"] if node.size == 1 else idx
        return map_index(idx, shape, node.shape)

    def value(self, node: Tensor, idx: list) -> str:
        key = (id(node), tuple(idx))
        if key not in self.memo:
            self.memo[key] = self._emit(node, idx)
        return self.memo[key]

    def _emit(self, node: Tensor, idx: list) -> str:
        if node.op == "const":
            return self.literal(node.attrs["value"], node.dtype)
        home = self.plan.home(node)
        if home is not None:
            return self._assign(node, self.load(home, node, idx), "load " + home)
        args = [self.value(i, self.index(i, idx, node.shape)) for i in node.inputs]
        if node.op == "broadcast":
            return args[0]
        return self._assign(node, self._expr(node, args), node.op)
