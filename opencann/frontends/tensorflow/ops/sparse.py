"""Embeddings and their sparse gradients: gathers from variables, segment sums, scatters into variables
and tensors (the IndexedSlices path of an Embedding layer's update), plus the index utilities the same
graphs use (Where, InvertPermutation, ReverseV2, VariableShape)."""
from __future__ import annotations

import numpy as np

from opencann.errors import AclError, ErrorCode
from opencann.frontends.tensorflow.dtypes import np_dtype, onnx_code
from opencann.frontends.tensorflow.importer import Context, tf_op

INT64 = 7  # ONNX element type code
SCATTER = {"ResourceScatterAdd": "add", "ResourceScatterSub": "add", "ResourceScatterMul": "mul",
           "ResourceScatterMax": "max", "ResourceScatterMin": "min", "ResourceScatterUpdate": "none"}


def _last_axis(ctx: Context, indices):
    """Integer indices as ONNX ScatterND/GatherND wants them: int64 with a trailing axis of 1."""
    return ctx.node("Unsqueeze", [ctx.node("Cast", [indices], to=INT64), ctx.const(np.array([-1], np.int64))])


@tf_op("ResourceGather")
def resource_gather(ctx: Context, op):
    if ctx.attr(op, "batch_dims", 0):
        raise AclError(ErrorCode.FEATURE_UNSUPPORTED, f"ResourceGather '{op.name}': batch_dims is not supported")
    return [ctx.node("Gather", [ctx.read(ctx.variable(op, 0)), ctx.input(op, 1)], axis=0)]


@tf_op(*SCATTER)
def resource_scatter(ctx: Context, op):
    """``var[indices] (op)= updates`` (duplicates accumulate), a scalar update applying to every row."""
    var = ctx.variable(op, 0)
    value, indices, updates = ctx.read(var), ctx.input(op, 1), ctx.input(op, 2)
    if op.inputs[2].shape.rank == 0:
        rows = ctx.node("Slice", [ctx.node("Shape", [value]), ctx.const(np.array([1], np.int64)),
                                  ctx.const(np.array([np.iinfo(np.int64).max], np.int64))])
        updates = ctx.node("Expand", [updates, ctx.node("Concat", [ctx.node("Shape", [indices]), rows], axis=0)])
    if op.type == "ResourceScatterSub":
        updates = ctx.node("Neg", [updates])
    ctx.assign(var, ctx.node("ScatterND", [value, _last_axis(ctx, indices), updates], reduction=SCATTER[op.type]))
    return []


@tf_op("ScatterNd")
def scatter_nd(ctx: Context, op):
    """Updates summed into zeros of the given shape."""
    indices, updates, shape = ctx.inputs(op)
    zero = np.zeros(1, dtype=np_dtype(op.inputs[1].dtype))
    zeros = ctx.node("ConstantOfShape", [ctx.node("Cast", [shape], to=INT64)], value=zero)
    return [ctx.node("ScatterND", [zeros, ctx.node("Cast", [indices], to=INT64), updates], reduction="add")]


@tf_op("UnsortedSegmentSum")
def unsorted_segment_sum(ctx: Context, op):
    return [ctx.node("UnsortedSegmentSum", ctx.inputs(op), domain="opencann")]


@tf_op("VariableShape")
def variable_shape(ctx: Context, op):
    shape = ctx.node("Shape", [ctx.read(ctx.variable(op, 0))])
    return [ctx.node("Cast", [shape], to=onnx_code(op.get_attr("out_type")))]


@tf_op("Where")
def where(ctx: Context, op):
    """The coordinates of the true (non-zero) elements, one row each."""
    return [ctx.node("Transpose", [ctx.node("NonZero", [ctx.input(op, 0)])], perm=[1, 0])]


@tf_op("InvertPermutation")
def invert_permutation(ctx: Context, op):
    """``y[x[i]] = i``."""
    x = ctx.input(op, 0)
    dtype = np_dtype(op.inputs[0].dtype)
    n = ctx.node("Cast", [ctx.node("Size", [x])], to=onnx_code(op.inputs[0].dtype))
    positions = ctx.node("Range", [ctx.const(np.zeros((), dtype)), n, ctx.const(np.ones((), dtype))])
    return [ctx.node("ScatterElements", [x, x, positions], axis=0)]


@tf_op("ReverseV2")
def reverse(ctx: Context, op):
    axes = ctx.const_value(op, 1)
    if axes is None:
        raise AclError(ErrorCode.FEATURE_UNSUPPORTED, f"ReverseV2 '{op.name}': the axes must be constant")
    k = axes.size
    bounds = [ctx.const(np.full(k, b, np.int64)) for b in (-1, np.iinfo(np.int64).min)]
    return [ctx.node("Slice", [ctx.input(op, 0), *bounds, ctx.const(axes.reshape(-1).astype(np.int64)),
                               ctx.const(np.full(k, -1, np.int64))])]
