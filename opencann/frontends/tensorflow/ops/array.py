"""Shapes, reshaping, slicing, gathering and tensor creation."""
from __future__ import annotations

import numpy as np

from opencann.errors import AclError, ErrorCode
from opencann.frontends.tensorflow.dtypes import np_dtype, onnx_code
from opencann.frontends.tensorflow.fold import fold
from opencann.frontends.tensorflow.importer import Context, tf_op

INT64 = 7


def opencann_node(ctx: Context, op_type: str, inputs: list, n_outputs: int = 1, **attrs) -> list:
    """A node of the ``opencann`` kernel ``op_type`` (folded when its inputs are constant), as a list."""
    out = fold(ctx, op_type, inputs, n_outputs, "opencann", **attrs)
    return list(out) if n_outputs > 1 else [out]


def int64(ctx: Context, v):
    return fold(ctx, "Cast", [v], to=INT64)


def _shape_of(ctx: Context, t, v, out_type) -> object:
    """A tensor's shape: a constant when TensorFlow knows it statically."""
    if t.shape.is_fully_defined():
        return ctx.const(np.array(t.shape.as_list(), np_dtype(out_type)))
    return fold(ctx, "Cast", [fold(ctx, "Shape", [v])], to=onnx_code(out_type))


@tf_op("Shape")
def shape(ctx: Context, op):
    return [_shape_of(ctx, op.inputs[0], ctx.input(op, 0), op.get_attr("out_type"))]


@tf_op("ShapeN")
def shape_n(ctx: Context, op):
    return [_shape_of(ctx, t, ctx.input(op, i), op.get_attr("out_type")) for i, t in enumerate(op.inputs)]


@tf_op("Size")
def size(ctx: Context, op):
    t, out_type = op.inputs[0], op.get_attr("out_type")
    if t.shape.is_fully_defined():
        return [ctx.const(np.array(t.shape.num_elements(), np_dtype(out_type)))]
    return [fold(ctx, "Cast", [fold(ctx, "Size", [ctx.input(op, 0)])], to=onnx_code(out_type))]


@tf_op("Rank")
def rank(ctx: Context, op):
    if op.inputs[0].shape.rank is not None:
        return [ctx.const(np.int32(op.inputs[0].shape.rank))]
    return [fold(ctx, "Cast", [fold(ctx, "Size", [fold(ctx, "Shape", [ctx.input(op, 0)])])], to=6)]


@tf_op("Reshape")
def reshape(ctx: Context, op):
    return [fold(ctx, "Reshape", [ctx.input(op, 0), int64(ctx, ctx.input(op, 1))])]


@tf_op("ExpandDims")
def expand_dims(ctx: Context, op):
    axis = ctx.const_value(op, 1)  # a constant axis keeps the output's shape known (conv filters need it)
    if axis is not None:
        axis = ctx.const(np.reshape(axis, [1]).astype(np.int64))
    else:
        axis = fold(ctx, "Reshape", [int64(ctx, ctx.input(op, 1)), ctx.const(np.array([1], np.int64))])
    return [fold(ctx, "Unsqueeze", [ctx.input(op, 0), axis])]


@tf_op("Squeeze")
def squeeze(ctx: Context, op):
    dims = list(ctx.attr(op, "squeeze_dims", []) or [])
    if dims:
        return [fold(ctx, "Squeeze", [ctx.input(op, 0), ctx.const(np.array(dims, np.int64))])]
    return [fold(ctx, "Squeeze", [ctx.input(op, 0)])]


@tf_op("Transpose")
def transpose(ctx: Context, op):
    perm = ctx.const_value(op, 1)
    if perm is not None:
        return [fold(ctx, "Transpose", [ctx.input(op, 0)], perm=[int(p) for p in perm])]
    return [fold(ctx, "TransposeDynamic", ctx.inputs(op), domain="opencann")]


SHAPED = {"Fill": ("Expand", 1, 0), "BroadcastTo": ("Expand", 0, 1), "Tile": ("Tile", 0, 1)}


@tf_op(*SHAPED)
def shaped(ctx: Context, op):
    """Ops taking a tensor and a shape-like int vector (dims or multiples), in TF's argument order."""
    onnx_op, tensor, shape = SHAPED[op.type]
    return [fold(ctx, onnx_op, [ctx.input(op, tensor), int64(ctx, ctx.input(op, shape))])]


@tf_op("Range")
def range_(ctx: Context, op):
    return [fold(ctx, "Range", ctx.inputs(op))]


@tf_op("ZerosLike", "OnesLike")
def zeros_like(ctx: Context, op):
    if op.inputs[0].dtype.name == "variant":  # a TensorList
        from opencann.frontends.tensorflow.ops import tensorlist

        return tensorlist.zeros_like(ctx, op)
    x = ctx.input(op, 0)
    one = ctx.const(np.array(1 if op.type == "OnesLike" else 0, np_dtype(op.inputs[0].dtype)))
    return [fold(ctx, "Expand", [one, fold(ctx, "Shape", [x])])]


@tf_op("ConcatV2")
def concat(ctx: Context, op):
    *values, axis = ctx.inputs(op)
    return [fold(ctx, "Concat", values, axis=int(axis.const))]


@tf_op("Pack")
def pack(ctx: Context, op):
    axis = ctx.attr(op, "axis", 0)
    ax = ctx.const(np.array([axis], np.int64))
    return [fold(ctx, "Concat", [fold(ctx, "Unsqueeze", [v, ax]) for v in ctx.inputs(op)], axis=axis)]


@tf_op("Unpack")
def unpack(ctx: Context, op):
    axis, n = ctx.attr(op, "axis", 0), ctx.attr(op, "num")
    ax = ctx.const(np.array([axis], np.int64))
    parts = _split(ctx, ctx.input(op, 0), axis, n)
    return [fold(ctx, "Squeeze", [p, ax]) for p in parts]


def _split(ctx: Context, x, axis: int, n: int, sizes=None) -> list:
    inputs = [x] if sizes is None else [x, sizes]
    attrs = {"num_outputs": n} if sizes is None else {}
    if n == 1:
        return [fold(ctx, "Identity", [x])]
    return list(fold(ctx, "Split", inputs, n_outputs=n, axis=axis, **attrs))


@tf_op("Split")
def split(ctx: Context, op):
    return _split(ctx, ctx.input(op, 1), int(ctx.const_value(op, 0)), ctx.attr(op, "num_split"))


@tf_op("SplitV")
def split_v(ctx: Context, op):
    """Split sizes may hold one -1 (the rest of the axis): resolved from the static shape."""
    axis, sizes = int(ctx.const_value(op, 2)), ctx.const_value(op, 1)
    if sizes is None:
        return _split(ctx, ctx.input(op, 0), axis, ctx.attr(op, "num_split"), int64(ctx, ctx.input(op, 1)))
    sizes = sizes.astype(np.int64)
    if (sizes < 0).any():
        sizes[sizes < 0] = op.inputs[0].shape[axis] - sizes[sizes >= 0].sum()
    return _split(ctx, ctx.input(op, 0), axis, len(sizes), ctx.const(sizes))


@tf_op("ConcatOffset")
def concat_offset(ctx: Context, op):
    return opencann_node(ctx, "ConcatOffset", ctx.inputs(op), n_outputs=len(op.outputs))


@tf_op("Slice")
def slice_(ctx: Context, op):
    """Slice(x, begin, size): size -1 runs to the end of the axis."""
    x, begin, size = ctx.inputs(op)
    b, n = ctx.const_value(op, 1), ctx.const_value(op, 2)
    if b is not None and n is not None:
        ends = np.where(n == -1, np.iinfo(np.int64).max, b.astype(np.int64) + n)
        return [fold(ctx, "Slice", [x, ctx.const(b.astype(np.int64)), ctx.const(ends)])]
    b64, n64 = int64(ctx, begin), int64(ctx, size)
    to_end = fold(ctx, "Equal", [n64, ctx.const(np.array(-1, np.int64))])
    ends = fold(ctx, "Where", [to_end, ctx.const(np.array(np.iinfo(np.int64).max)), fold(ctx, "Add", [b64, n64])])
    return [fold(ctx, "Slice", [x, b64, ends])]


@tf_op("Pad", "PadV2")
def pad(ctx: Context, op):
    """TensorFlow's [rank, 2] paddings become ONNX's begins-then-ends list."""
    x, paddings = ctx.input(op, 0), ctx.input(op, 1)
    begins_then_ends = fold(ctx, "Transpose", [int64(ctx, paddings)], perm=[1, 0])
    flat = fold(ctx, "Reshape", [begins_then_ends, ctx.const(np.array([-1], np.int64))])
    value = [ctx.input(op, 2)] if op.type == "PadV2" else []
    return [fold(ctx, "Pad", [x, flat, *value])]


@tf_op("MirrorPad", "MirrorPadGrad")
def mirror_pad(ctx: Context, op):
    return [fold(ctx, op.type, ctx.inputs(op), domain="opencann", mode=ctx.attr(op, "mode"))]


@tf_op("ListDiff")
def list_diff(ctx: Context, op):
    return opencann_node(ctx, "ListDiff", ctx.inputs(op), n_outputs=2, out_idx=onnx_code(op.get_attr("out_idx")))


@tf_op("GatherNd")
def gather_nd(ctx: Context, op):
    params, indices = ctx.inputs(op)
    return [fold(ctx, "GatherND", [params, int64(ctx, indices)])]


@tf_op("OneHot")
def one_hot(ctx: Context, op):
    return [fold(ctx, "OneHot", ctx.inputs(op), domain="opencann", axis=ctx.attr(op, "axis", -1))]


@tf_op("GatherV2")
def gather(ctx: Context, op):
    params, indices, axis = ctx.inputs(op)
    if ctx.attr(op, "batch_dims", 0):
        raise AclError(ErrorCode.FEATURE_UNSUPPORTED, f"GatherV2 '{op.name}': batch_dims is not supported")
    return [fold(ctx, "Gather", [params, indices], axis=int(axis.const))]


@tf_op("StridedSlice", "StridedSliceGrad")
def strided_slice(ctx: Context, op):
    masks = {k: ctx.attr(op, k, 0) for k in ("begin_mask", "end_mask", "ellipsis_mask", "new_axis_mask",
                                             "shrink_axis_mask")}
    return [fold(ctx, op.type, ctx.inputs(op), domain="opencann", **masks)]


@tf_op("DynamicStitch", "ParallelDynamicStitch")
def dynamic_stitch(ctx: Context, op):
    return opencann_node(ctx, "DynamicStitch", ctx.inputs(op))


@tf_op("Roll", "MatrixBandPart", "MatrixDiagPartV3", "MatrixDiagV3", "MatrixSetDiagV3")
def opencann_array(ctx: Context, op):
    return opencann_node(ctx, op.type, ctx.inputs(op))


@tf_op("MatrixDiag", "MatrixDiagPart")
def matrix_diag_v1(ctx: Context, op):
    """The main diagonal: the V3 kernels with k = 0, inferred sizes and zero padding."""
    x = ctx.input(op, 0)
    zero, k = ctx.const(np.zeros((), np_dtype(op.inputs[0].dtype))), ctx.const(np.array(0, np.int32))
    if op.type == "MatrixDiagPart":
        return opencann_node(ctx, "MatrixDiagPartV3", [x, k, zero])
    auto = ctx.const(np.array(-1, np.int32))
    return opencann_node(ctx, "MatrixDiagV3", [x, k, auto, auto, zero])
