"""Convolutions, pooling and batch normalization, forward and backward.

Forward ops map onto ONNX ``Conv``, ``MaxPool``, ``AveragePool`` and ``BatchNormalization`` (inference),
with Transposes around them for channels-last data (``NHWC``/``NDHWC``) and for TF's ``(*k, in, out)``
filters; a depthwise filter ``(*k, C, M)`` becomes a grouped ``Conv`` with C groups. TF's ``SAME``
padding is ONNX's ``SAME_UPPER``. Gradient ops and training-mode fused batch norm are kernels of the
``opencann`` domain with TF's semantics and attributes (:mod:`opencann.ops.tf_nn`).
"""
from __future__ import annotations

import numpy as np

from opencann.errors import AclError, ErrorCode
from opencann.frontends.tensorflow.importer import Context, tf_op

GRADS = {"Conv2DBackpropInput": ("ConvBackpropInput", 0), "Conv3DBackpropInputV2": ("ConvBackpropInput", 0),
         "DepthwiseConv2dNativeBackpropInput": ("ConvBackpropInput", 1),
         "Conv2DBackpropFilter": ("ConvBackpropFilter", 0), "Conv3DBackpropFilterV2": ("ConvBackpropFilter", 0),
         "DepthwiseConv2dNativeBackpropFilter": ("ConvBackpropFilter", 1)}


# --- layout ------------------------------------------------------------------------------------------

def _format(ctx: Context, op) -> tuple[str, bool]:
    """The op's data format and whether its channels come last."""
    fmt = ctx.attr(op, "data_format", "NHWC")
    return fmt, not fmt.startswith("NC")


def _spatial(values, last: bool) -> list[int]:
    values = [int(v) for v in values]
    return values[1:-1] if last else values[2:]


def _to_first(ctx: Context, v, rank: int, last: bool):
    """Channels-last → channels-first (ONNX's layout)."""
    return ctx.node("Transpose", [v], perm=[0, rank - 1, *range(1, rank - 1)]) if last else v


def _from_first(ctx: Context, v, rank: int, last: bool):
    return ctx.node("Transpose", [v], perm=[0, *range(2, rank), 1]) if last else v


def _onnx_padding(ctx: Context, op, last: bool) -> dict:
    """ONNX ``auto_pad``/``pads`` for TF's padding attributes."""
    padding = ctx.attr(op, "padding")
    if padding == "SAME":
        return {"auto_pad": "SAME_UPPER"}
    if padding == "VALID":
        return {"auto_pad": "VALID"}
    if padding == "EXPLICIT":
        explicit = list(ctx.attr(op, "explicit_paddings"))  # (begin, end) per tensor axis
        return {"pads": _spatial(explicit[::2], last) + _spatial(explicit[1::2], last)}
    raise AclError(ErrorCode.INVALID_PARAM, f"{op.type} '{op.name}': unknown padding '{padding}'")


def _static_dim(ctx: Context, op, i: int, axis: int) -> int:
    """A size that must be known when converting: from the IR value's type, else from TF's shape."""
    t = ctx.input(op, i).type
    shape = getattr(t, "shape", None)
    if shape is None and op.inputs[i].shape.rank is not None:
        shape = op.inputs[i].shape.as_list()
    dim = shape[axis] if shape is not None else None
    if not isinstance(dim, int):
        raise AclError(ErrorCode.FEATURE_UNSUPPORTED, f"{op.type} '{op.name}': input {i} needs a known size "
                       f"on axis {axis}")
    return dim


# --- forward -----------------------------------------------------------------------------------------

@tf_op("Conv2D", "Conv3D", "DepthwiseConv2dNative")
def conv(ctx: Context, op):
    x, w = ctx.inputs(op)
    _, last = _format(ctx, op)
    rank = len(ctx.attr(op, "strides"))
    if op.type == "Conv2D" and w.const is None:  # a trained filter: TF's layouts, no transposes
        return [ctx.node("TFConv", [x, w], domain="opencann", **_tf_conv_attrs(ctx, op, rank))]
    channels = _static_dim(ctx, op, 0, -1 if last else 1)
    if op.type == "DepthwiseConv2dNative":
        kernel = [_static_dim(ctx, op, 1, a) for a in range(rank - 2)]
        w = ctx.node("Reshape", [w, ctx.const(np.array([*kernel, 1, -1], np.int64))])
        group = channels
    else:
        group = channels // _static_dim(ctx, op, 1, -2)
    w = ctx.node("Transpose", [w], perm=[rank - 1, rank - 2, *range(rank - 2)])
    y = ctx.node("Conv", [_to_first(ctx, x, rank, last), w], group=group,
                 strides=_spatial(ctx.attr(op, "strides"), last),
                 dilations=_spatial(ctx.attr(op, "dilations") or [1] * rank, last), **_onnx_padding(ctx, op, last))
    return [_from_first(ctx, y, rank, last)]


def _pool_attrs(ctx: Context, op, last: bool, ksize, strides) -> dict:
    ksize, strides = [int(k) for k in ksize], [int(s) for s in strides]
    if any(v != 1 for v in (*_outer(ksize, last), *_outer(strides, last))):
        raise AclError(ErrorCode.FEATURE_UNSUPPORTED, f"{op.type} '{op.name}': pooling over the batch or "
                       "channel axis is not supported")
    return {"kernel_shape": _spatial(ksize, last), "strides": _spatial(strides, last), **_onnx_padding(ctx, op, last)}


def _outer(values, last: bool) -> list[int]:
    """The batch and channel entries of a per-axis attribute."""
    return [values[0], values[-1] if last else values[1]]


@tf_op("MaxPool", "MaxPool3D", "AvgPool", "AvgPool3D")
def pool(ctx: Context, op):
    _, last = _format(ctx, op)
    ksize, strides = ctx.attr(op, "ksize"), ctx.attr(op, "strides")
    rank = len(ksize)
    attrs = _pool_attrs(ctx, op, last, ksize, strides)
    if op.type == "MaxPool" and last:
        return [ctx.node("TFMaxPool", [ctx.input(op, 0)], domain="opencann", ksize=list(ksize),
                         strides=list(strides), padding=ctx.attr(op, "padding"), data_format=_format(ctx, op)[0],
                         explicit_paddings=list(ctx.attr(op, "explicit_paddings", [])))]
    if op.type.startswith("Avg"):
        attrs["count_include_pad"] = 0
    onnx_op = "MaxPool" if op.type.startswith("Max") else "AveragePool"
    y = ctx.node(onnx_op, [_to_first(ctx, ctx.input(op, 0), rank, last)], **attrs)
    return [_from_first(ctx, y, rank, last)]


@tf_op("FusedBatchNorm", "FusedBatchNormV2", "FusedBatchNormV3")
def fused_batch_norm(ctx: Context, op):
    x, scale, offset, mean, var = ctx.inputs(op)
    fmt, last = _format(ctx, op)
    epsilon = float(ctx.attr(op, "epsilon", 1e-4))
    if ctx.attr(op, "is_training", True):
        return list(ctx.node("FusedBatchNorm", [x, scale, offset, mean, var], n_outputs=len(op.outputs),
                             domain="opencann", epsilon=epsilon, data_format=fmt, is_training=1,
                             exponential_avg_factor=float(ctx.attr(op, "exponential_avg_factor", 1.0))))
    rank = op.inputs[0].shape.rank
    y = ctx.node("BatchNormalization", [_to_first(ctx, x, rank, last), scale, offset, mean, var], epsilon=epsilon)
    reserve = [ctx.const(np.zeros(0, np.float32))] if len(op.outputs) == 6 else []
    return [_from_first(ctx, y, rank, last), mean, var, mean, var, *reserve]


# --- gradients ---------------------------------------------------------------------------------------

@tf_op(*GRADS)
def conv_grad(ctx: Context, op):
    kernel, depthwise = GRADS[op.type]
    rank = len(ctx.attr(op, "strides"))
    inputs = ctx.inputs(op)
    at = 0 if kernel == "ConvBackpropInput" else 1
    inputs[at] = _static_sizes(ctx, op.inputs[at]) or inputs[at]
    return [ctx.node(kernel, inputs, domain="opencann", depthwise=depthwise, **_tf_conv_attrs(ctx, op, rank))]


def _static_sizes(ctx: Context, t):
    """A gradient's sizes input as a constant where TensorFlow takes it as the shape of a tensor whose converted
    value has a static type (the training step's batch is fixed): the gradient's output type is then static too,
    and the executor plans its buffer."""
    if t.op.type not in ("Shape", "ShapeN"):
        return None
    shape = getattr(ctx.input(t.op, t.value_index).type, "shape", None)
    if shape is None or not all(isinstance(d, int) for d in shape):
        return None
    return ctx.const(np.array(shape, t.dtype.as_numpy_dtype))


def _tf_conv_attrs(ctx: Context, op, rank: int) -> dict:
    """A TF convolution's attributes as the opencann TF-layout kernels take them."""
    return {"strides": list(ctx.attr(op, "strides")), "padding": ctx.attr(op, "padding"),
            "explicit_paddings": list(ctx.attr(op, "explicit_paddings", [])),
            "dilations": list(ctx.attr(op, "dilations") or [1] * rank), "data_format": _format(ctx, op)[0]}


@tf_op("MaxPoolGrad", "MaxPool3DGrad", "AvgPoolGrad", "AvgPool3DGrad")
def pool_grad(ctx: Context, op):
    attrs = {"ksize": list(ctx.attr(op, "ksize")), "strides": list(ctx.attr(op, "strides")),
             "padding": ctx.attr(op, "padding"), "data_format": _format(ctx, op)[0]}
    if op.type.startswith("Max"):
        attrs["explicit_paddings"] = list(ctx.attr(op, "explicit_paddings", []))
        return [ctx.node("MaxPoolGrad", ctx.inputs(op), domain="opencann", **attrs)]
    return [ctx.node("AvgPoolGrad", ctx.inputs(op), domain="opencann", **attrs)]


@tf_op("FusedBatchNormGrad", "FusedBatchNormGradV2", "FusedBatchNormGradV3")
def fused_batch_norm_grad(ctx: Context, op):
    return list(ctx.node("FusedBatchNormGrad", ctx.inputs(op), n_outputs=len(op.outputs), domain="opencann",
                         epsilon=float(ctx.attr(op, "epsilon", 1e-4)), data_format=_format(ctx, op)[0],
                         is_training=int(bool(ctx.attr(op, "is_training", True)))))


@tf_op("SpaceToBatchND", "BatchToSpaceND")
def space_to_batch(ctx: Context, op):
    """Emitted around depthwise convolutions with dilations (each is the other's gradient)."""
    return [ctx.node(op.type, ctx.inputs(op), domain="opencann")]
