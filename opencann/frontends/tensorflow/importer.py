"""TensorFlow graphs → IR.

The importer walks a ``tf.Graph`` (a FuncGraph of a concrete function, or a graph imported from a frozen
GraphDef) in an order that respects data and control edges, and turns each operation into IR nodes
through the converter registered for its type (:mod:`opencann.frontends.tensorflow.ops`). Function calls
(``StatefulPartitionedCall``, ``PartitionedCall``) are inlined. Resource variables become state: each
variable is a graph input holding its value before the call and, when the call assigns it, a graph
output holding its value after — so reads and writes follow TF's (control-dependency) order as plain
dataflow.
"""
from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from opencann.compiler.ir import Graph, Node, TensorType, Value
from opencann.compiler.passes.shape_inference import infer_node
from opencann.errors import AclError, ErrorCode

OPSET = 23
OPSETS = {"": OPSET, "opencann": 1}
CONVERTERS: dict[str, Callable] = {}
PASS_THROUGH = frozenset({"NoOp"})


def tf_op(*names: str):
    """Register a converter ``fn(ctx, op) -> list of Values (one per TF output)`` for TF op types."""

    def register(fn: Callable) -> Callable:
        for name in names:
            CONVERTERS[name] = fn
        return fn

    return register


@dataclass
class Variable:
    """A resource variable the graph reads or writes."""

    key: str  # stable name of the graph input/output holding its value
    dtype: np.dtype
    shape: tuple
    source: Any = None  # the tf.Variable (TF2) or the VarHandleOp's shared name (TF1)


@dataclass
class State:
    """Variables seen so far, the graph input holding each one's value, and its current SSA value."""

    variables: dict[str, Variable] = field(default_factory=dict)
    initial: dict[str, Value] = field(default_factory=dict)
    current: dict[str, Value] = field(default_factory=dict)
    assigned: list[str] = field(default_factory=list)

    def add(self, var: Variable) -> None:
        if var.key not in self.variables:
            self.variables[var.key] = var
            self.initial[var.key] = self.current[var.key] = Value(var.key, TensorType(var.dtype, var.shape))


class Context:
    """What converters use: the IR being built, the TF→IR value map and the variable state."""

    def __init__(self, state: State | None = None, names: Iterator[int] | None = None):
        self.nodes: list[Node] = []
        self.initializers: list[Value] = []
        self.values: dict[Any, Value] = {}  # tf tensor ref -> IR value
        self.resources: dict[Any, Any] = {}  # tf resource tensor ref -> variable key or other handle
        self.state = state or State()
        self._names = names or itertools.count()

    # ---- building IR
    def fresh(self, hint: str = "t") -> str:
        return f"{hint}/{next(self._names)}"

    def node(self, op: str, inputs: Sequence[Value | None], n_outputs: int = 1, domain: str = "",
             name: str = "", **attrs: Any) -> Value | tuple[Value, ...]:
        """Append an IR node; returns its output (a tuple when ``n_outputs > 1``)."""
        label = name or self.fresh(op)
        outs = [Value(f"{label}:{i}") for i in range(n_outputs)]
        node = Node(op, list(inputs), outs, attrs, name=label, domain=domain)
        self.nodes.append(node)
        for v, t in zip(outs, infer_node(node, OPSETS)):
            v.type = t
        return outs[0] if n_outputs == 1 else tuple(outs)

    def const(self, value: Any, dtype: Any = None, name: str | None = None) -> Value:
        arr = np.asarray(value, dtype=dtype)
        v = Value(name or self.fresh("const"), const=arr)
        self.initializers.append(v)
        return v

    # ---- reading TF
    def input(self, op, i: int) -> Value:
        t = op.inputs[i]
        try:
            return self.values[t.ref()]
        except KeyError:
            raise AclError(ErrorCode.PARSE_MODEL, f"{op.type} '{op.name}': input {i} ({t.name}) has no value "
                           "(its producer was not converted)") from None

    def inputs(self, op) -> list[Value]:
        return [self.input(op, i) for i in range(len(op.inputs))]

    def attr(self, op, name: str, default: Any = None) -> Any:
        try:
            value = op.get_attr(name)
        except (ValueError, AttributeError):
            return default
        return value.decode() if isinstance(value, bytes) else value

    def const_value(self, op, i: int) -> np.ndarray | None:
        """The value of input ``i`` when it is a constant (shapes, axes, permutations), else None."""
        v = self.input(op, i)
        return v.const if v.const is not None else None

    # ---- variables
    def variable(self, op, i: int) -> Variable:
        """The variable behind resource input ``i``, registered on first use with the op's dtype/shape."""
        key = self.resources.get(op.inputs[i].ref())
        if not isinstance(key, str):
            raise AclError(ErrorCode.PARSE_MODEL, f"{op.type} '{op.name}': input {i} is not a variable")
        if key not in self.state.variables:
            from opencann.frontends.tensorflow.dtypes import np_dtype

            typed = op.outputs[0] if op.outputs else op.inputs[1]
            shape = None if typed.shape.rank is None else tuple(typed.shape.as_list())
            self.state.add(Variable(key, np_dtype(op.get_attr("dtype")), shape))
        return self.state.variables[key]

    def read(self, var: Variable) -> Value:
        return self.state.current[var.key]

    def assign(self, var: Variable, value: Value) -> None:
        self.state.current[var.key] = value
        if var.key not in self.state.assigned:
            self.state.assigned.append(var.key)


def topological_ops(graph) -> list:
    """The graph's operations ordered so that data and control inputs come first."""
    ops = graph.get_operations()
    index = {op.name: i for i, op in enumerate(ops)}
    done: set[str] = set()
    order = []
    for root in ops:
        stack = [(root, False)]
        while stack:
            op, expanded = stack.pop()
            if op.name in done:
                continue
            if expanded:
                done.add(op.name)
                order.append(op)
                continue
            stack.append((op, True))
            deps = [t.op for t in op.inputs] + list(op.control_inputs)
            stack.extend((d, False) for d in sorted(deps, key=lambda d: -index.get(d.name, 0)) if d.name not in done)
    return order


def convert_ops(ctx: Context, graph, stop: set | None = None, ops: Sequence | None = None) -> None:
    """Convert every operation of ``graph``, or only ``ops`` (in dependency order) when given
    (placeholders must already have values)."""
    unsupported: dict[str, list[str]] = {}
    for op in topological_ops(graph) if ops is None else ops:
        if op.type in PASS_THROUGH or (op.type == "Placeholder" and op.outputs[0].ref() in ctx.values) \
                or op.outputs and all(t.ref() in ctx.values or t.ref() in ctx.resources for t in op.outputs):
            continue
        fn = CONVERTERS.get(op.type)
        if fn is None:
            unsupported.setdefault(op.type, []).append(_site(op))
            continue
        if unsupported:
            continue  # keep scanning to report everything, but do not convert past a gap
        outs = fn(ctx, op)
        for t, v in zip(op.outputs, outs or []):
            if v is None:
                continue
            if isinstance(v, Value):
                if t.dtype.name != "resource" and (v.type is None or getattr(v.type, "shape", 0) is None):
                    v.type = tensor_type(t)
                ctx.values[t.ref()] = v
            else:
                ctx.resources[t.ref()] = v
    if unsupported:
        raise AclError(ErrorCode.OP_NOT_FOUND, unsupported_message(unsupported))


def _site(op) -> str:
    """The node name and the Python line that created it, as TF recorded it."""
    try:
        frames = op.traceback
        user = [f for f in frames if "site-packages" not in f.filename and "/opencann/" not in f.filename]
        frame = (user or frames)[-1]
        return f"{op.name} ({frame.filename}:{frame.lineno})"
    except (AttributeError, IndexError, TypeError):
        return op.name


def unsupported_message(unsupported: dict[str, list[str]]) -> str:
    listing = "; ".join(f"{t}: {', '.join(sites[:5])}{' ...' if len(sites) > 5 else ''}"
                        for t, sites in sorted(unsupported.items()))
    return (f"{len(unsupported)} TensorFlow op type(s) are not supported by opencann: {listing}. "
            "Run `opencann migrate` on the script for a full report.")


def tensor_type(t) -> TensorType:
    from opencann.frontends.tensorflow.dtypes import np_dtype

    shape = None if t.shape.rank is None else tuple(d if d is not None else None for d in t.shape.as_list())
    return TensorType(np_dtype(t.dtype), shape)


def inline_function(ctx: Context, func_graph, args: Sequence[Value | Any], resources: Sequence[Any]) -> list:
    """Convert a function body in place with ``args`` bound to its inputs; returns its outputs.

    ``args`` holds an IR Value per data input; ``resources`` a resource key per resource input (the
    two are matched to ``func_graph.inputs`` in order, by their dtype).
    """
    data, res = iter(args), iter(resources)
    for t in func_graph.inputs:
        if t.dtype.name == "resource":
            ctx.resources[t.ref()] = next(res)
        else:
            ctx.values[t.ref()] = next(data)
    convert_ops(ctx, func_graph)
    return [ctx.values.get(t.ref(), ctx.resources.get(t.ref())) for t in func_graph.outputs]


def build_graph(ctx: Context, inputs: list[Value], outputs: list[Value], name: str) -> Graph:
    """Package the converted nodes: variables become extra inputs (before) and outputs (after)."""
    var_outputs = []
    for key in ctx.state.assigned:
        out = Value(f"{key}/new", ctx.state.initial[key].type)
        ctx.nodes.append(Node("Identity", [ctx.state.current[key]], [out], name=f"{key}/new"))
        var_outputs.append(out)
    graph = Graph(inputs=[*inputs, *ctx.state.initial.values()], outputs=[*outputs, *var_outputs],
                  nodes=ctx.nodes, initializers=ctx.initializers, name=name, opsets=dict(OPSETS))
    graph.toposort()
    return graph
