"""Stateless random ops (Keras' dropout, ``keras.random``, ``tf.random.stateless_*``) onto opencann's
Philox kernels, which reproduce TensorFlow's streams (see :mod:`opencann.ops.tf_stateless`)."""
from __future__ import annotations

import numpy as np

from opencann.frontends.tensorflow.dtypes import onnx_code
from opencann.frontends.tensorflow.importer import Context, tf_op
from opencann.frontends.tensorflow.ops.array import opencann_node
from opencann.ops.tf_stateless import PHILOX


@tf_op("StatelessRandomGetKeyCounter")
def get_key_counter(ctx: Context, op):
    return opencann_node(ctx, op.type, ctx.inputs(op), n_outputs=2)


@tf_op("StatelessRandomGetKeyCounterAlg")
def get_key_counter_alg(ctx: Context, op):
    return [*get_key_counter(ctx, op), ctx.const(np.array(PHILOX, np.int32))]


@tf_op("StatelessRandomGetAlg")
def get_alg(ctx: Context, op):
    return [ctx.const(np.array(PHILOX, np.int32))]


@tf_op("StatelessRandomUniformV2", "StatelessRandomNormalV2", "StatelessTruncatedNormalV2", "StatelessRandomUniform",
       "StatelessRandomNormal", "StatelessTruncatedNormal")
def stateless_float(ctx: Context, op):
    return [ctx.node(op.type, ctx.inputs(op), domain="opencann", dtype=onnx_code(op.get_attr("dtype")))]


@tf_op("StatelessRandomUniformIntV2", "StatelessRandomUniformInt")
def stateless_int(ctx: Context, op):
    return [ctx.node(op.type, ctx.inputs(op), domain="opencann")]
