"""Neural-network layers and their gradients."""
from __future__ import annotations

import numpy as np

from opencann.frontends.tensorflow.dtypes import np_dtype
from opencann.frontends.tensorflow.importer import Context, tf_op


@tf_op("BiasAdd")
def bias_add(ctx: Context, op):
    x, b = ctx.inputs(op)
    if ctx.attr(op, "data_format", "NHWC") == "NCHW" and op.inputs[0].shape.rank > 2:
        shape = [-1] + [1] * (op.inputs[0].shape.rank - 2)
        b = ctx.node("Reshape", [b, ctx.const(np.array(shape, np.int64))])
    return [ctx.node("Add", [x, b])]


@tf_op("BiasAddGrad")
def bias_add_grad(ctx: Context, op):
    return [ctx.node("BiasAddGrad", ctx.inputs(op), domain="opencann",
                     data_format=ctx.attr(op, "data_format", "NHWC"))]


@tf_op("ReluGrad")
def relu_grad(ctx: Context, op):
    """A ReLU's gradient; after the gradient of max pooling the ReLU's output, one fused MaxPoolGrad (the unfused
    one is left to dead-code elimination)."""
    g, f = ctx.inputs(op)
    pool = next((n for n in reversed(ctx.nodes) if any(o is g for o in n.outputs)), None)
    if pool is not None and (pool.domain, pool.op) == ("opencann", "MaxPoolGrad") and pool.inputs[0] is f:
        return [ctx.node("MaxPoolGrad", pool.inputs, domain="opencann", **{**pool.attrs, "relu": 1})]
    return [ctx.node("ReluGrad", [g, f], domain="opencann")]


@tf_op("Softmax", "LogSoftmax")
def softmax(ctx: Context, op):
    return [ctx.node(op.type, ctx.inputs(op), axis=-1)]


@tf_op("SparseSoftmaxCrossEntropyWithLogits", "SoftmaxCrossEntropyWithLogits")
def softmax_cross_entropy(ctx: Context, op):
    return list(ctx.node(op.type, ctx.inputs(op), n_outputs=2, domain="opencann"))


@tf_op("LeakyRelu")
def leaky_relu(ctx: Context, op):
    return [ctx.node("LeakyRelu", ctx.inputs(op), alpha=float(ctx.attr(op, "alpha", 0.2)))]


@tf_op("Relu6")
def relu6(ctx: Context, op):
    dtype = np_dtype(op.inputs[0].dtype)
    return [ctx.node("Clip", [ctx.input(op, 0), ctx.const(np.array(0, dtype)), ctx.const(np.array(6, dtype))])]


@tf_op("SoftplusGrad", "SoftsignGrad", "EluGrad", "SeluGrad", "Relu6Grad")
def activation_grad(ctx: Context, op):
    return [ctx.node(op.type, ctx.inputs(op), domain="opencann")]


@tf_op("LeakyReluGrad")
def leaky_relu_grad(ctx: Context, op):
    return [ctx.node(op.type, ctx.inputs(op), domain="opencann", alpha=float(ctx.attr(op, "alpha", 0.2)))]


@tf_op("L2Loss")
def l2_loss(ctx: Context, op):
    x = ctx.input(op, 0)
    half = ctx.const(np.array(0.5, np_dtype(op.inputs[0].dtype)))
    return [ctx.node("Mul", [ctx.node("ReduceSumSquare", [x], keepdims=0), half])]


@tf_op("InTopKV2", "InTopK")
def in_top_k(ctx: Context, op):
    k = ctx.input(op, 2) if op.type == "InTopKV2" else ctx.const(np.array(ctx.attr(op, "k"), np.int64))
    return [ctx.node("InTopK", [ctx.input(op, 0), ctx.input(op, 1), k], domain="opencann")]
