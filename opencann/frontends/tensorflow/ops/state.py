"""Variables, identities, function calls and other structural ops."""
from __future__ import annotations

from opencann.errors import AclError, ErrorCode
from opencann.frontends.tensorflow.importer import Context, inline_function, tf_op


@tf_op("Const")
def const(ctx: Context, op):
    from tensorflow.python.framework import tensor_util

    value = tensor_util.MakeNdarray(op.get_attr("value"))
    return [ctx.const(value, name=ctx.fresh(op.name))]


@tf_op("Identity", "IdentityN", "StopGradient", "Snapshot", "PreventGradient", "EnsureShape",
       "PlaceholderWithDefault")
def identity(ctx: Context, op):
    outs = []
    for i, t in enumerate(op.inputs[:len(op.outputs)]):
        if t.ref() in ctx.resources:
            outs.append(ctx.resources[t.ref()])
        else:
            outs.append(ctx.input(op, i))
    return outs


@tf_op("ReadVariableOp")
def read_variable(ctx: Context, op):
    return [ctx.read(ctx.variable(op, 0))]


@tf_op("AssignVariableOp")
def assign_variable(ctx: Context, op):
    ctx.assign(ctx.variable(op, 0), ctx.input(op, 1))
    return []


@tf_op("AssignAddVariableOp", "AssignSubVariableOp")
def assign_add_variable(ctx: Context, op):
    var = ctx.variable(op, 0)
    combine = "Add" if op.type == "AssignAddVariableOp" else "Sub"
    ctx.assign(var, ctx.node(combine, [ctx.read(var), ctx.input(op, 1)]))
    return []


@tf_op("StatefulPartitionedCall", "PartitionedCall")
def call(ctx: Context, op):
    body = function_graph(op.graph, op.get_attr("f").name, [t.shape for t in op.inputs])
    args = [ctx.input(op, i) for i, t in enumerate(op.inputs) if t.dtype.name != "resource"]
    res = [ctx.resources.get(t.ref()) for t in op.inputs if t.dtype.name == "resource"]
    return inline_function(ctx, body, args, res)


def function_graph(graph, name: str, input_shapes=None):
    """The FuncGraph of a function in ``graph``'s library, an enclosing graph's, or the eager context's."""
    from tensorflow.python.eager import context
    from tensorflow.python.framework import function_def_to_graph

    g, fdef = graph, None
    while g is not None and fdef is None:
        fn = g._get_function(name) if hasattr(g, "_get_function") else None
        if fn is not None:
            fdef = fn.cached_definition if hasattr(fn, "cached_definition") else fn.definition
        g = getattr(g, "outer_graph", None)
    if fdef is None:
        try:
            fdef = context.context().get_function_def(name)
        except Exception:
            raise AclError(ErrorCode.PARSE_MODEL, f"function '{name}' is not in the graph's library") from None
    return function_def_to_graph.function_def_to_graph(fdef, input_shapes=input_shapes)


@tf_op("IteratorGetNext")
def iterator_get_next(ctx: Context, op):
    """The next batch becomes graph inputs that the adapter fills from the tf.data iterator each call."""
    from opencann.compiler.ir import Value
    from opencann.frontends.tensorflow.adapter import HostInput
    from opencann.frontends.tensorflow.importer import tensor_type

    resource = ctx.resources.get(op.inputs[0].ref())
    if not isinstance(resource, str):
        raise AclError(ErrorCode.FEATURE_UNSUPPORTED, f"IteratorGetNext '{op.name}': the iterator must be a "
                       "function argument")
    values = [Value(f"{resource}/next{len(ctx.host_inputs)}_{i}", tensor_type(t)) for i, t in enumerate(op.outputs)]
    ctx.host_inputs.append(HostInput(values, resource, list(op.get_attr("output_types")),
                                     list(op.get_attr("output_shapes"))))
    return values


@tf_op("OptionalFromValue")
def optional_from_value(ctx: Context, op):
    from opencann.frontends.tensorflow.adapter import HostOptional

    return [HostOptional(ctx.inputs(op))]
