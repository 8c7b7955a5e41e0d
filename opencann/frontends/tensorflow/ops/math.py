"""Arithmetic, comparisons, reductions and casts."""
from __future__ import annotations

import numpy as np

from opencann.frontends.tensorflow.dtypes import onnx_code
from opencann.frontends.tensorflow.importer import Context, tf_op

BINARY = {"AddV2": "Add", "Add": "Add", "Sub": "Sub", "Mul": "Mul", "RealDiv": "Div", "Maximum": "Max",
          "Minimum": "Min", "Pow": "Pow", "Equal": "Equal", "Less": "Less", "LessEqual": "LessOrEqual",
          "Greater": "Greater", "GreaterEqual": "GreaterOrEqual", "LogicalAnd": "And", "LogicalOr": "Or",
          "BitwiseAnd": "BitwiseAnd", "BitwiseOr": "BitwiseOr"}
UNARY = {"Neg": "Neg", "Exp": "Exp", "Log": "Log", "Sqrt": "Sqrt", "Abs": "Abs", "Tanh": "Tanh",
         "Sigmoid": "Sigmoid", "Relu": "Relu", "Floor": "Floor", "Ceil": "Ceil", "Reciprocal": "Reciprocal",
         "Inv": "Reciprocal", "Sign": "Sign", "LogicalNot": "Not", "IsNan": "IsNaN", "Erf": "Erf",
         "Softplus": "Softplus", "Elu": "Elu", "Selu": "Selu", "Round": "Round", "Sin": "Sin", "Cos": "Cos"}
REDUCE = {"Sum": "ReduceSum", "Mean": "ReduceMean", "Max": "ReduceMax", "Min": "ReduceMin", "Prod": "ReduceProd",
          "All": "ReduceMin", "Any": "ReduceMax"}


@tf_op(*BINARY)
def binary(ctx: Context, op):
    return [ctx.node(BINARY[op.type], ctx.inputs(op))]


@tf_op(*UNARY)
def unary(ctx: Context, op):
    return [ctx.node(UNARY[op.type], ctx.inputs(op))]


@tf_op("Square")
def square(ctx: Context, op):
    x = ctx.input(op, 0)
    return [ctx.node("Mul", [x, x])]


@tf_op("Rsqrt")
def rsqrt(ctx: Context, op):
    return [ctx.node("Reciprocal", [ctx.node("Sqrt", [ctx.input(op, 0)])])]


@tf_op("SquaredDifference")
def squared_difference(ctx: Context, op):
    d = ctx.node("Sub", ctx.inputs(op))
    return [ctx.node("Mul", [d, d])]


@tf_op("DivNoNan")
def div_no_nan(ctx: Context, op):
    return [ctx.node("DivNoNan", ctx.inputs(op), domain="opencann")]


@tf_op("FloorDiv", "FloorMod", "TruncateDiv")
def floor_div(ctx: Context, op):
    return [ctx.node(op.type, ctx.inputs(op), domain="opencann")]


@tf_op("AddN")
def add_n(ctx: Context, op):
    return [ctx.node("Sum", ctx.inputs(op))]


@tf_op("Cast")
def cast(ctx: Context, op):
    return [ctx.node("Cast", [ctx.input(op, 0)], to=onnx_code(op.get_attr("DstT")))]


@tf_op(*REDUCE)
def reduce(ctx: Context, op):
    x, axes = ctx.input(op, 0), ctx.input(op, 1)
    keep = int(bool(ctx.attr(op, "keep_dims", False)))
    axes64 = ctx.node("Reshape", [ctx.node("Cast", [axes], to=7), ctx.const(np.array([-1], np.int64))])
    if op.type in ("All", "Any"):
        as_int = ctx.node("Cast", [x], to=6)
        return [ctx.node("Cast", [ctx.node(REDUCE[op.type], [as_int, axes64], keepdims=keep)], to=9)]
    return [ctx.node(REDUCE[op.type], [x, axes64], keepdims=keep)]


@tf_op("MatMul", "BatchMatMulV2", "BatchMatMulV3", "BatchMatMul")
def matmul(ctx: Context, op):
    a, b = ctx.inputs(op)
    if ctx.attr(op, "transpose_a") or ctx.attr(op, "adj_x"):
        a = _swap(ctx, a, op.inputs[0])
    if ctx.attr(op, "transpose_b") or ctx.attr(op, "adj_y"):
        b = _swap(ctx, b, op.inputs[1])
    return [ctx.node("MatMul", [a, b])]


def _swap(ctx: Context, v, t):
    rank = v.type.rank if v.type is not None and v.type.rank is not None else t.shape.rank
    perm = list(range(rank - 2)) + [rank - 1, rank - 2]
    return ctx.node("Transpose", [v], perm=perm)
