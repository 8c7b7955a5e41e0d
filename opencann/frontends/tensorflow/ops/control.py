"""Functional control flow: While/StatelessWhile → IR Loop, If/StatelessIf → IR If, Case → nested Ifs.

TF passes every value a branch or body uses as an explicit argument; the importer binds those
arguments to the enclosing graph's values (If: branches capture them) or to fresh subgraph inputs
(Loop: the carried values), and converts the function into an IR subgraph. Resource arguments are not
values: they stay bound to their variable, unchanged across iterations. A While becomes an ONNX Loop
with no trip count: its condition is computed once on the initial values, then by the body on each
new set of values.

Variables inside subgraphs: a subgraph sees the variables through a :class:`ScopeState`, which reads
the enclosing values and keeps its writes to itself. The variables a branch assigns leave the If as
extra outputs (the other branch outputs their value unchanged); those a loop body assigns become extra
carried values. Either way the enclosing state then holds the new values.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from opencann.compiler.ir import Graph, SequenceType, TensorType, Value
from opencann.errors import AclError, ErrorCode
from opencann.frontends.tensorflow.importer import OPSETS, Context, State, inline_function, tensor_type, tf_op
from opencann.frontends.tensorflow.ops.state import function_graph


class ScopeState(State):
    """The variable state inside a subgraph: reads see the enclosing values, writes stay local."""

    def __init__(self, parent: State):
        super().__init__(parent.variables, parent.initial, dict(parent.current), [])
        self.parent = parent

    def add(self, var) -> None:
        if var.key not in self.variables:
            self.parent.add(var)
        self.current.setdefault(var.key, self.initial[var.key])


def scope(ctx: Context) -> Context:
    """A Context for a subgraph of ``ctx``'s graph: own nodes, constants and TF value map, and the same
    name counter (value names stay unique across the graph and its subgraphs)."""
    return Context(ScopeState(ctx.state), ctx._names)


def subgraph(sub: Context, inputs: list[Value], outputs: list[Value], name: str) -> Graph:
    graph = Graph(inputs=inputs, outputs=outputs, nodes=sub.nodes, initializers=sub.initializers,
                  name=name, opsets=dict(OPSETS))
    graph.toposort()
    return graph


def call(ctx: Context, func_graph, args: Sequence[Any]) -> list:
    """Convert ``func_graph`` into ``ctx`` with its inputs bound to ``args`` (Values or resource keys)."""
    is_resource = [t.dtype.name == "resource" for t in func_graph.inputs]
    return inline_function(ctx, func_graph, [a for a, r in zip(args, is_resource) if not r],
                           [a for a, r in zip(args, is_resource) if r])


def operands(ctx: Context, op, start: int = 0) -> list:
    """The op's inputs from ``start``: a Value per tensor, the resource key per resource."""
    return [ctx.resources.get(t.ref()) if t.dtype.name == "resource" else ctx.input(op, i)
            for i, t in enumerate(op.inputs) if i >= start]


def _function(op, attr: str, shapes=None):
    return function_graph(op.graph, op.get_attr(attr).name, shapes)


def _node(ctx: Context, op_type: str, inputs: list, n: int, **attrs) -> list[Value]:
    """A node with ``n`` outputs, as a list; none at all when ``n`` is 0 (it would compute nothing)."""
    if n == 0:
        return []
    outs = ctx.node(op_type, inputs, n_outputs=n, **attrs)
    return list(outs) if n > 1 else [outs]


# --------------------------------------------------------------------------------------------- If


def _truth(ctx: Context, op) -> Value:
    """TF's If condition as a boolean scalar (a bool scalar is used as is)."""
    cond, t = ctx.input(op, 0), op.inputs[0]
    if t.shape.rank == 0 and t.dtype.is_bool:
        return cond
    return ctx.node("TruthValue", [cond], domain="opencann")


def conditional(ctx: Context, cond: Value, branches: tuple[Callable, Callable], name: str) -> list:
    """An IR If choosing between two branch builders ``build(sub_ctx) -> outputs``; returns the outputs
    (Values, or the resource key both branches return) and updates the variables either branch assigns."""
    built = []
    for build in branches:
        sub = scope(ctx)
        built.append((sub, build(sub)))
    assigned = list(dict.fromkeys(k for sub, _ in built for k in sub.state.assigned))
    then_outs, else_outs = (outs for _, outs in built)
    data = [i for i, v in enumerate(then_outs) if isinstance(v, Value)]
    for i, (a, b) in enumerate(zip(then_outs, else_outs)):
        if (i in data) != isinstance(b, Value) or (i not in data and a != b):
            raise AclError(ErrorCode.FEATURE_UNSUPPORTED, f"If '{name}': output {i} is a different resource "
                           "in each branch")
    graphs = [subgraph(sub, [], [outs[i] for i in data] + [sub.state.current[k] for k in assigned],
                       f"{name}/{label}")
              for (sub, outs), label in zip(built, ("then", "else"))]
    results = _node(ctx, "If", [cond], len(data) + len(assigned), then_branch=graphs[0], else_branch=graphs[1])
    for v, proto in zip(results, graphs[0].outputs):
        if isinstance(proto.type, SequenceType):
            v.type = proto.type
    for key, v in zip(assigned, results[len(data):]):
        v.type = v.type or ctx.state.initial[key].type
        ctx.assign(ctx.state.variables[key], v)
    outs = list(then_outs)
    for i, v in zip(data, results):
        outs[i] = v
    return outs


@tf_op("If", "StatelessIf")
def if_(ctx: Context, op):
    args = operands(ctx, op, 1)
    shapes = [t.shape for t in op.inputs[1:]]
    funcs = [_function(op, attr, shapes) for attr in ("then_branch", "else_branch")]
    return conditional(ctx, _truth(ctx, op), tuple(lambda sub, f=f: call(sub, f, args) for f in funcs), op.name)


@tf_op("Case", "StatelessCase")
def case(ctx: Context, op):
    """Branch ``i`` for index ``i``; an index out of range runs the last branch, as in TensorFlow."""
    index, args = ctx.input(op, 0), operands(ctx, op, 1)
    shapes = [t.shape for t in op.inputs[1:]]
    funcs = [function_graph(op.graph, f.name, shapes) for f in op.get_attr("branches")]

    def select(sub: Context, first: int) -> list:
        if first == len(funcs) - 1:
            return call(sub, funcs[first], args)
        hit = sub.node("Equal", [index, sub.const(np.int32(first))])
        return conditional(sub, hit, (lambda s: call(s, funcs[first], args), lambda s: select(s, first + 1)),
                           f"{op.name}/{first}")

    return select(ctx, 0)


# ------------------------------------------------------------------------------------------ While


@tf_op("While", "StatelessWhile")
def while_(ctx: Context, op):
    initial = operands(ctx, op)
    shapes = [None if t.dtype.name == "resource" else s for t, s in zip(op.inputs, op.get_attr("output_shapes"))]
    cond_fn, body_fn = _function(op, "cond", shapes), _function(op, "body", shapes)
    keep = call(ctx, cond_fn, initial)[0]
    written: list[str] = []
    while True:
        graph, assigned = _loop_body(ctx, op, initial, cond_fn, body_fn, written)
        if assigned == written:
            break
        written = assigned
    carried = [i for i, v in enumerate(initial) if isinstance(v, Value)]
    start = [initial[i] for i in carried] + [ctx.state.current[k] for k in written]
    results = _node(ctx, "Loop", [None, keep, *start], len(start), body=graph)
    for v, param in zip(results, graph.inputs[2:]):
        v.type = param.type
    for key, v in zip(written, results[len(carried):]):
        ctx.assign(ctx.state.variables[key], v)
    outs = list(initial)
    for i, v in zip(carried, results):
        outs[i] = v
    return outs


def _loop_body(ctx: Context, op, initial: list, cond_fn, body_fn, written: list[str]) -> tuple[Graph, list[str]]:
    """The Loop body: (iteration, condition, *carried values, *variables in ``written``) → (condition,
    *new values). Returns it with the variables the body assigns: when those are not all in ``written``,
    the caller builds it again carrying them."""
    sub = scope(ctx)
    params = [Value(sub.fresh("iteration"), TensorType(np.int64, ())), Value(sub.fresh("condition"),
                                                                             TensorType(np.bool_, ()))]
    carried = [i for i, v in enumerate(initial) if isinstance(v, Value)]
    args = list(initial)
    for i in carried:
        t = body_fn.inputs[i]
        args[i] = Value(sub.fresh("carried"), initial[i].type if t.dtype.name == "variant" else tensor_type(t))
        params.append(args[i])
    for key in written:
        sub.state.current[key] = Value(sub.fresh("variable"), ctx.state.current[key].type)
        params.append(sub.state.current[key])
    outs = call(sub, body_fn, args)
    for i, (a, b) in enumerate(zip(initial, outs)):
        if not isinstance(a, Value) and a != b:
            raise AclError(ErrorCode.FEATURE_UNSUPPORTED, f"While '{op.name}': loop variable {i} (a resource) "
                           "changes in the body")
    keep = call(sub, cond_fn, outs)[0]
    results = [keep] + [outs[i] for i in carried] + [sub.state.current[k] for k in written]
    graph = subgraph(sub, params, results, f"{op.name}/body")
    return graph, list(dict.fromkeys([*written, *sub.state.assigned]))
