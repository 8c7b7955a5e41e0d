"""Optimizer updates (``ResourceApply*``, ``Apply*``), TF1 variables and the random ops of initializers.

Variables are importer state (:class:`~opencann.frontends.tensorflow.importer.Variable`) keyed by their
shared name: a resource variable (``VarHandleOp``) is a resource handle that ``ReadVariableOp`` /
``AssignVariableOp`` read and write; a reference variable (``VariableV2``) is a tensor holding its value
when the op runs (a read sees the value at the start of the run, or the output of an ``Assign``). An
``Apply*`` op becomes one ``opencann`` kernel of :mod:`opencann.ops.tf_training` returning the new
variable and slots, which are assigned back.

A converter context with ``session_flags`` (a dict) belongs to a TF1 session (:mod:`..tf1`), whose
state persists between runs: ``VarIsInitializedOp`` then reads a flag the session feeds, and each
stateful random op keeps its generator offset as state ``rng:<op name>``. Elsewhere (functions) every
variable handed in is initialized and generators restart at every call.
"""
from __future__ import annotations

import numpy as np

from opencann.compiler.ir import TensorType, Value
from opencann.errors import AclError, ErrorCode
from opencann.frontends.tensorflow.dtypes import np_dtype, onnx_code
from opencann.frontends.tensorflow.importer import Context, Variable, tf_op

SLOTS = {"GradientDescent": 1, "Momentum": 2, "KerasMomentum": 2, "Adam": 3, "RMSProp": 3, "CenteredRMSProp": 4,
         "Adagrad": 2, "AdagradV2": 2, "Adadelta": 3}  # variable + slot inputs leading each Apply op
FLAGS = ("use_nesterov", "update_slots")
RANDOM = {"RandomUniform": "uniform", "RandomStandardNormal": "normal", "TruncatedNormal": "truncated_normal",
          "RandomUniformInt": "uniform_int"}
REF_VARIABLES = ("VariableV2", "Variable")


def _shape(shape) -> tuple | None:
    """A TensorShape or TensorShapeProto as an IR shape."""
    from tensorflow.python.framework.tensor_shape import TensorShape

    shape = TensorShape(shape)
    return None if shape.rank is None else tuple(shape.as_list())


def _register(ctx: Context, key: str, dtype, shape) -> Variable:
    ctx.state.add(Variable(key, np_dtype(dtype), shape, source=key))
    return ctx.state.variables[key]


def ref_variable(ctx: Context, t) -> Variable:
    """The reference variable behind the ref tensor ``t`` (through ``RefIdentity``)."""
    op = t.op
    while op.type in ("RefIdentity", "Identity") and op.inputs:
        op = op.inputs[0].op
    if op.type not in REF_VARIABLES:
        raise AclError(ErrorCode.PARSE_MODEL, f"'{t.name}' does not lead to a variable (found {op.type} '{op.name}')")
    return _register(ctx, ctx.attr(op, "shared_name") or op.name, op.get_attr("dtype"), _shape(op.get_attr("shape")))


def resource_variable(ctx: Context, op, i: int) -> Variable:
    """The resource variable of input ``i`` of an update op, registered from the update's dtype if new."""
    key = ctx.resources.get(op.inputs[i].ref())
    if not isinstance(key, str):
        raise AclError(ErrorCode.PARSE_MODEL, f"{op.type} '{op.name}': input {i} is not a variable")
    if key in ctx.state.variables:
        return ctx.state.variables[key]
    return _register(ctx, key, op.get_attr("T"), _shape(op.inputs[-1].shape))


@tf_op("VarHandleOp")
def var_handle(ctx: Context, op):
    key = ctx.attr(op, "shared_name") or op.name
    _register(ctx, key, op.get_attr("dtype"), _shape(op.get_attr("shape")))
    return [key]


@tf_op(*REF_VARIABLES)
def variable_v2(ctx: Context, op):
    return [ctx.read(ref_variable(ctx, op.outputs[0]))]


@tf_op("Assign", "AssignAdd", "AssignSub")
def assign_ref(ctx: Context, op):
    var, value = ref_variable(ctx, op.inputs[0]), ctx.input(op, 1)
    if op.type != "Assign":
        value = ctx.node("Add" if op.type == "AssignAdd" else "Sub", [ctx.read(var), value])
    ctx.assign(var, value)
    return [value]


@tf_op("VarIsInitializedOp", "IsVariableInitialized")
def is_initialized(ctx: Context, op):
    flags = getattr(ctx, "session_flags", None)
    if flags is None:
        return [ctx.const(np.array(True))]
    t = op.inputs[0]
    key = ctx.resources.get(t.ref()) if t.dtype.name == "resource" else ref_variable(ctx, t).key
    if key not in flags:
        flags[key] = Value(f"{key}:initialized", TensorType(np.dtype(bool), ()))
    return [flags[key]]


def _apply(ctx: Context, op, kernel: str, state: list[Variable]) -> list[Value]:
    """Run the update kernel on the variables' current values and assign its results back."""
    n = len(state)
    values = [ctx.read(v) for v in state]
    attrs = {k: int(ctx.attr(op, k)) for k in FLAGS if ctx.attr(op, k) is not None}
    out = ctx.node(kernel, values + [ctx.input(op, i) for i in range(n, len(op.inputs))], n_outputs=n,
                   domain="opencann", **attrs)
    new = [out] if n == 1 else list(out)
    for var, old, value in zip(state, values, new):
        value.type = old.type
        ctx.assign(var, value)
    return new


@tf_op(*(f"ResourceApply{name}" for name in SLOTS))
def resource_apply(ctx: Context, op):
    kernel = op.type.removeprefix("Resource")
    _apply(ctx, op, kernel, [resource_variable(ctx, op, i) for i in range(SLOTS[kernel.removeprefix("Apply")])])
    return []


@tf_op(*(f"Apply{name}" for name in SLOTS))
def ref_apply(ctx: Context, op):
    state = [ref_variable(ctx, op.inputs[i]) for i in range(SLOTS[op.type.removeprefix("Apply")])]
    return _apply(ctx, op, op.type, state)[:1]


@tf_op(*RANDOM)
def random(ctx: Context, op):
    """A stateful random op: TensorFlow's Philox stream for its seeds, continuing where the last run ended."""
    seed, seed2 = ctx.attr(op, "seed", 0), ctx.attr(op, "seed2", 0)
    if seed == 0 and seed2 == 0:  # TensorFlow seeds such an op at random
        seed, seed2 = (int(s) for s in np.random.default_rng().integers(1, 2**63, size=2))
    shape = ctx.node("Cast", [ctx.input(op, 0)], to=7)
    bounds = ctx.inputs(op)[1:3]
    offset, generator = _generator(ctx, op)
    values, after = ctx.node("PhiloxRandom", [shape, offset, *bounds], n_outputs=2, domain="opencann",
                             distribution=RANDOM[op.type], dtype=onnx_code(op.outputs[0].dtype), seed=seed,
                             seed2=seed2)
    if generator is not None:
        after.type = TensorType(np.dtype(np.uint64), ())
        ctx.assign(generator, after)
    return [values]


def _generator(ctx: Context, op) -> tuple[Value, Variable | None]:
    """The counters the op used in earlier runs: session state in a TF1 session, else none."""
    if getattr(ctx, "session_flags", None) is None:
        return ctx.const(np.uint64(0)), None
    key = f"rng:{op.name}"
    ctx.state.add(Variable(key, np.dtype(np.uint64), (), source=op.name))
    return ctx.read(ctx.state.variables[key]), ctx.state.variables[key]
