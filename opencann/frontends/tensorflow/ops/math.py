"""Arithmetic, comparisons, reductions and casts."""
from __future__ import annotations

import numpy as np

from opencann.frontends.tensorflow.dtypes import np_dtype, onnx_code
from opencann.frontends.tensorflow.fold import fold
from opencann.frontends.tensorflow.importer import Context, tf_op
from opencann.frontends.tensorflow.ops.array import int64, opencann_node

BINARY = {"AddV2": "Add", "Add": "Add", "Sub": "Sub", "Mul": "Mul", "RealDiv": "Div", "Maximum": "Max",
          "Minimum": "Min", "Pow": "Pow", "Equal": "Equal", "Less": "Less", "LessEqual": "LessOrEqual",
          "Greater": "Greater", "GreaterEqual": "GreaterOrEqual", "LogicalAnd": "And", "LogicalOr": "Or",
          "BitwiseAnd": "BitwiseAnd", "BitwiseOr": "BitwiseOr"}
UNARY = {"Neg": "Neg", "Exp": "Exp", "Log": "Log", "Sqrt": "Sqrt", "Abs": "Abs", "Tanh": "Tanh",
         "Sigmoid": "Sigmoid", "Relu": "Relu", "Floor": "Floor", "Ceil": "Ceil", "Reciprocal": "Reciprocal",
         "Inv": "Reciprocal", "Sign": "Sign", "LogicalNot": "Not", "IsNan": "IsNaN", "Erf": "Erf",
         "Softplus": "Softplus", "Elu": "Elu", "Selu": "Selu", "Round": "Round", "Rint": "Round", "Sin": "Sin",
         "Cos": "Cos", "Tan": "Tan", "Asin": "Asin", "Acos": "Acos", "Atan": "Atan", "Sinh": "Sinh", "Cosh": "Cosh",
         "Asinh": "Asinh", "Acosh": "Acosh", "Atanh": "Atanh", "IsInf": "IsInf", "Softsign": "Softsign"}
# TensorFlow ops with an "opencann" kernel of the same name and operands (elementwise math and gradients)
OPENCANN = ("Log1p", "Expm1", "Xlogy", "Xdivy", "MulNoNan", "TanhGrad", "SigmoidGrad", "SqrtGrad", "RsqrtGrad",
            "ReciprocalGrad", "InvGrad", "Atan2")
REDUCE = {"Sum": "ReduceSum", "Mean": "ReduceMean", "Max": "ReduceMax", "Min": "ReduceMin", "Prod": "ReduceProd",
          "All": "ReduceMin", "Any": "ReduceMax", "EuclideanNorm": "ReduceL2"}


@tf_op(*BINARY)
def binary(ctx: Context, op):
    if op.type == "Mul":
        gradient = _softmax_gradient(ctx, op)
        if gradient is not None:
            return [gradient]
    return [fold(ctx, BINARY[op.type], ctx.inputs(op))]


def _softmax_gradient(ctx: Context, op):
    """TensorFlow's gradient of ``y = Softmax(x)``, ``(g - Sum(g * y, -1, keep_dims)) * y``, as one
    ``opencann::SoftmaxGrad(g, y)`` (None when ``op``, a Mul, does not end that pattern)."""
    for i in (0, 1):
        sub, y = op.inputs[i], op.inputs[1 - i]
        if sub.op.type != "Sub" or y.op.type != "Softmax":
            continue
        g, total = sub.op.inputs
        reduce_op = total.op
        if reduce_op.type != "Sum" or not ctx.attr(reduce_op, "keep_dims") or not y.shape.rank:
            continue
        axes, product = ctx.const_value(reduce_op, 1), reduce_op.inputs[0]
        if axes is None or np.size(axes) != 1 or int(np.ravel(axes)[0]) % y.shape.rank != y.shape.rank - 1:
            continue
        if product.op.type == "Mul" and {t.ref() for t in product.op.inputs} == {g.ref(), y.ref()}:
            return fold(ctx, "SoftmaxGrad", [ctx.input(sub.op, 0), ctx.input(op, 1 - i)], domain="opencann")
    return None


@tf_op(*UNARY)
def unary(ctx: Context, op):
    return [fold(ctx, UNARY[op.type], ctx.inputs(op))]


@tf_op(*OPENCANN)
def opencann_same(ctx: Context, op):
    name = "ReciprocalGrad" if op.type == "InvGrad" else op.type
    return [fold(ctx, name, ctx.inputs(op), domain="opencann")]


@tf_op("Erfc")
def erfc(ctx: Context, op):
    one = ctx.const(np.array(1, np_dtype(op.inputs[0].dtype)))
    return [fold(ctx, "Sub", [one, fold(ctx, "Erf", [ctx.input(op, 0)])])]


@tf_op("IsFinite")
def is_finite(ctx: Context, op):
    x = ctx.input(op, 0)
    return [fold(ctx, "Not", [fold(ctx, "Or", [fold(ctx, "IsNaN", [x]), fold(ctx, "IsInf", [x])])])]


@tf_op("NotEqual")
def not_equal(ctx: Context, op):
    return [fold(ctx, "Not", [fold(ctx, "Equal", ctx.inputs(op))])]


@tf_op("Select", "SelectV2")
def select(ctx: Context, op):
    """SelectV2 broadcasts; Select's rank-1 condition picks whole rows of higher-rank operands."""
    cond, x, y = ctx.inputs(op)
    rank, cond_rank = op.inputs[1].shape.rank, op.inputs[0].shape.rank
    if op.type == "Select" and cond_rank == 1 and rank is not None and rank > 1:
        cond = fold(ctx, "Reshape", [cond, ctx.const(np.array([-1] + [1] * (rank - 1), np.int64))])
    return [fold(ctx, "Where", [cond, x, y])]


@tf_op("ClipByValue")
def clip_by_value(ctx: Context, op):
    x, lo, hi = ctx.inputs(op)
    return [fold(ctx, "Max", [fold(ctx, "Min", [x, hi]), lo])]


@tf_op("ArgMax", "ArgMin")
def arg_max(ctx: Context, op):
    axis = int(ctx.const_value(op, 1))
    index = fold(ctx, op.type, [ctx.input(op, 0)], axis=axis, keepdims=0)
    return [fold(ctx, "Cast", [index], to=onnx_code(op.get_attr("output_type")))]


@tf_op("TopKV2")
def top_k(ctx: Context, op):
    """The k largest along the last axis, sorted, ties in index order (ONNX TopK's rule too)."""
    x, k = ctx.inputs(op)
    k64 = fold(ctx, "Reshape", [int64(ctx, k), ctx.const(np.array([1], np.int64))])
    values, indices = fold(ctx, "TopK", [x, k64], n_outputs=2, axis=-1, largest=1, sorted=1)
    return [values, fold(ctx, "Cast", [indices], to=onnx_code(ctx.attr(op, "index_type") or op.outputs[1].dtype))]


SEGMENT = {"SegmentSum": "sum", "SegmentMean": "mean", "SegmentMax": "max", "SegmentMin": "min",
           "SegmentProd": "prod", "UnsortedSegmentMax": "max", "UnsortedSegmentMin": "min",
           "UnsortedSegmentProd": "prod"}


@tf_op(*SEGMENT)
def segment_reduce(ctx: Context, op):
    return opencann_node(ctx, "SegmentReduce", ctx.inputs(op), reduction=SEGMENT[op.type])


@tf_op("LowerBound", "UpperBound")
def search_sorted(ctx: Context, op):
    return opencann_node(ctx, "SearchSorted", ctx.inputs(op), side="left" if op.type == "LowerBound" else "right",
                         out_type=onnx_code(op.get_attr("out_type")))


@tf_op("Cumsum", "Cumprod")
def cumsum(ctx: Context, op):
    flags = {"exclusive": int(ctx.attr(op, "exclusive", False)), "reverse": int(ctx.attr(op, "reverse", False))}
    if op.type == "Cumprod":
        return [fold(ctx, "Cumprod", ctx.inputs(op), domain="opencann", **flags)]
    return [fold(ctx, "CumSum", ctx.inputs(op), **flags)]


@tf_op("Einsum")
def einsum(ctx: Context, op):
    return [fold(ctx, "Einsum", ctx.inputs(op), equation=ctx.attr(op, "equation"))]


@tf_op("BroadcastGradientArgs")
def broadcast_gradient_args(ctx: Context, op):
    """Folded to constants when both shapes are known (the usual case)."""
    return opencann_node(ctx, op.type, ctx.inputs(op), n_outputs=2)


@tf_op("Bitcast")
def bitcast(ctx: Context, op):
    return [fold(ctx, "Bitcast", [ctx.input(op, 0)], domain="opencann", to=onnx_code(op.get_attr("type")))]


@tf_op("Square")
def square(ctx: Context, op):
    x = ctx.input(op, 0)
    return [fold(ctx, "Mul", [x, x])]


@tf_op("Rsqrt")
def rsqrt(ctx: Context, op):
    return [fold(ctx, "Reciprocal", [fold(ctx, "Sqrt", [ctx.input(op, 0)])])]


@tf_op("SquaredDifference")
def squared_difference(ctx: Context, op):
    d = fold(ctx, "Sub", ctx.inputs(op))
    return [fold(ctx, "Mul", [d, d])]


@tf_op("DivNoNan")
def div_no_nan(ctx: Context, op):
    return [fold(ctx, "DivNoNan", ctx.inputs(op), domain="opencann")]


@tf_op("FloorDiv", "FloorMod", "TruncateDiv")
def floor_div(ctx: Context, op):
    return [fold(ctx, op.type, ctx.inputs(op), domain="opencann")]


@tf_op("AddN")
def add_n(ctx: Context, op):
    if op.inputs[0].dtype.name == "variant":  # TensorLists
        from opencann.frontends.tensorflow.ops import tensorlist

        return tensorlist.add_n(ctx, op)
    return [fold(ctx, "Sum", ctx.inputs(op))]


@tf_op("Cast")
def cast(ctx: Context, op):
    return [fold(ctx, "Cast", [ctx.input(op, 0)], to=onnx_code(op.get_attr("DstT")))]


@tf_op(*REDUCE)
def reduce(ctx: Context, op):
    x, axes = ctx.input(op, 0), ctx.input(op, 1)
    keep = int(bool(ctx.attr(op, "keep_dims", False)))
    if op.type == "Sum":
        total = None if keep else _summed_weight_gradient(ctx, op)
        total = _sum_of_no_axes(ctx, op, x) if total is None else total
        if total is not None:
            return [total]
    axes64 = fold(ctx, "Reshape", [fold(ctx, "Cast", [axes], to=7), ctx.const(np.array([-1], np.int64))])
    if op.type in ("All", "Any"):
        as_int = fold(ctx, "Cast", [x], to=6)
        reduced = fold(ctx, REDUCE[op.type], [as_int, axes64], keepdims=keep, noop_with_empty_axes=1)
        return [fold(ctx, "Cast", [reduced], to=9)]
    return [fold(ctx, REDUCE[op.type], [x, axes64], keepdims=keep, noop_with_empty_axes=1)]


@tf_op("MatMul", "BatchMatMulV2", "BatchMatMulV3", "BatchMatMul")
def matmul(ctx: Context, op):
    a, b = ctx.inputs(op)
    if ctx.attr(op, "transpose_a") or ctx.attr(op, "adj_x"):
        a = _swap(ctx, a, op, 0)
    if ctx.attr(op, "transpose_b") or ctx.attr(op, "adj_y"):
        b = _swap(ctx, b, op, 1)
    return [fold(ctx, "MatMul", [a, b])]


def _swap(ctx: Context, v, op, i: int):
    """``v`` with its last two axes swapped (any rank when TensorFlow does not know it)."""
    rank = 2 if op.type == "MatMul" else op.inputs[i].shape.rank
    if rank is None and v.type is not None:
        rank = v.type.rank
    if rank is None:
        return fold(ctx, "Einsum", [v], equation="...ij->...ji")
    return fold(ctx, "Transpose", [v], perm=list(range(rank - 2)) + [rank - 1, rank - 2])


def _summed_weight_gradient(ctx: Context, op):
    """``Sum(BatchMatMul(x, g, adj_x=True), batch axes)``, TensorFlow's gradient of a weight shared across a batch
    (``x @ w`` with a 2-D ``w``: Dense/EinsumDense on a sequence), as one ``Gemm(x2, g2, transA=1)`` over the rows of
    ``x`` and ``g`` flattened to 2-D: one large product instead of a stack of small ones and a reduction. None when
    the Sum is not that. The batch dimensions must be compatible as far as TensorFlow knows them; in the gradient
    they are equal (``w`` broadcasts along all of them), and a ``x`` broadcasting at run time fails the Gemm's
    shape check rather than computing something else."""
    mm = op.inputs[0].op
    if mm.type not in ("BatchMatMulV2", "BatchMatMulV3", "BatchMatMul") or not ctx.attr(mm, "adj_x") \
            or ctx.attr(mm, "adj_y") or len({mm.inputs[0].dtype, mm.inputs[1].dtype, mm.outputs[0].dtype}) != 1:
        return None
    xs, gs = mm.inputs[0].shape, mm.inputs[1].shape
    if xs.rank is None or xs.rank < 3 or gs.rank != xs.rank or None in (xs[-1], gs[-1]) \
            or not xs[:-1].is_compatible_with(gs[:-1]) or not _all_batch_axes(ctx, op, xs.rank - 2):
        return None
    x2, g2 = (fold(ctx, "Reshape", [ctx.input(mm, i), ctx.const(np.array([-1, n], np.int64))])
              for i, n in ((0, xs[-1]), (1, gs[-1])))
    return fold(ctx, "Gemm", [x2, g2], transA=1)


def _all_batch_axes(ctx: Context, op, n: int) -> bool:
    """Whether the axes input of Sum ``op`` is ``0 .. n-1``: a constant, or (batch dimensions TensorFlow does not
    know) the reduction axes ``BroadcastGradientArgs`` gives an operand with no batch dimensions against ``n``."""
    axes = ctx.const_value(op, 1)
    if axes is not None:
        return sorted(int(a) % (n + 2) for a in np.ravel(axes)) == list(range(n))
    t = op.inputs[1]
    if t.op.type != "BroadcastGradientArgs":
        return False
    mine, other = t.op.inputs[t.value_index].shape, t.op.inputs[1 - t.value_index].shape
    return mine.rank == other.rank == 1 and mine[0] == 0 and other[0] == n


def _sum_of_no_axes(ctx: Context, op, x):
    """A Sum over no axes (TensorFlow's gradients emit them) as ``x`` itself, not a copy; None for other Sums."""
    axes = ctx.const_value(op, 1)
    return fold(ctx, "Identity", [x]) if axes is not None and np.size(axes) == 0 else None
