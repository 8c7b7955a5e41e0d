"""Shapes, reshaping, slicing, gathering and tensor creation."""
from __future__ import annotations

import numpy as np

from opencann.frontends.tensorflow.dtypes import onnx_code
from opencann.frontends.tensorflow.importer import Context, tf_op

INT64 = 7


def int64(ctx: Context, v):
    return ctx.node("Cast", [v], to=INT64)


@tf_op("Shape")
def shape(ctx: Context, op):
    return [ctx.node("Cast", [ctx.node("Shape", [ctx.input(op, 0)])], to=onnx_code(op.get_attr("out_type")))]


@tf_op("Size")
def size(ctx: Context, op):
    return [ctx.node("Cast", [ctx.node("Size", [ctx.input(op, 0)])], to=onnx_code(op.get_attr("out_type")))]


@tf_op("Rank")
def rank(ctx: Context, op):
    return [ctx.const(np.int32(op.inputs[0].shape.rank))]


@tf_op("Reshape")
def reshape(ctx: Context, op):
    return [ctx.node("Reshape", [ctx.input(op, 0), int64(ctx, ctx.input(op, 1))])]


@tf_op("ExpandDims")
def expand_dims(ctx: Context, op):
    axis = ctx.node("Reshape", [int64(ctx, ctx.input(op, 1)), ctx.const(np.array([1], np.int64))])
    return [ctx.node("Unsqueeze", [ctx.input(op, 0), axis])]


@tf_op("Squeeze")
def squeeze(ctx: Context, op):
    dims = list(ctx.attr(op, "squeeze_dims", []) or [])
    if dims:
        return [ctx.node("Squeeze", [ctx.input(op, 0), ctx.const(np.array(dims, np.int64))])]
    return [ctx.node("Squeeze", [ctx.input(op, 0)])]


@tf_op("Transpose")
def transpose(ctx: Context, op):
    perm = ctx.const_value(op, 1)
    if perm is not None:
        return [ctx.node("Transpose", [ctx.input(op, 0)], perm=[int(p) for p in perm])]
    return [ctx.node("TransposeDynamic", ctx.inputs(op), domain="opencann")]


@tf_op("Fill")
def fill(ctx: Context, op):
    dims, value = ctx.inputs(op)
    return [ctx.node("Expand", [value, int64(ctx, dims)])]


@tf_op("BroadcastTo")
def broadcast_to(ctx: Context, op):
    x, dims = ctx.inputs(op)
    return [ctx.node("Expand", [x, int64(ctx, dims)])]


@tf_op("Tile")
def tile(ctx: Context, op):
    x, reps = ctx.inputs(op)
    return [ctx.node("Tile", [x, int64(ctx, reps)])]


@tf_op("Range")
def range_(ctx: Context, op):
    return [ctx.node("Range", ctx.inputs(op))]


@tf_op("ZerosLike", "OnesLike")
def zeros_like(ctx: Context, op):
    x = ctx.input(op, 0)
    one = ctx.const(np.array(1 if op.type == "OnesLike" else 0, dtype=x.type.dtype if x.type else np.float32))
    return [ctx.node("Expand", [one, ctx.node("Shape", [x])])]


@tf_op("ConcatV2")
def concat(ctx: Context, op):
    *values, axis = ctx.inputs(op)
    return [ctx.node("Concat", values, axis=int(axis.const))]


@tf_op("Pack")
def pack(ctx: Context, op):
    axis = ctx.attr(op, "axis", 0)
    ax = ctx.const(np.array([axis], np.int64))
    return [ctx.node("Concat", [ctx.node("Unsqueeze", [v, ax]) for v in ctx.inputs(op)], axis=axis)]


@tf_op("GatherV2")
def gather(ctx: Context, op):
    params, indices, axis = ctx.inputs(op)
    return [ctx.node("Gather", [params, indices], axis=int(axis.const))]


@tf_op("StridedSlice")
def strided_slice(ctx: Context, op):
    masks = {k: ctx.attr(op, k, 0) for k in ("begin_mask", "end_mask", "ellipsis_mask", "new_axis_mask",
                                             "shrink_axis_mask")}
    return [ctx.node("StridedSlice", ctx.inputs(op), domain="opencann", **masks)]
