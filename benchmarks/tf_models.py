"""Keras (TensorFlow) equivalents of the benchmark models of ``tests/models.py``: same layers, same shapes.

A speed peer only: the weights are Keras' random initialisation, and images are channels-last (NHWC, what
TensorFlow's CPU kernels want), so ``to_tf_input`` transposes the NCHW batch that ``tests.models.build``
makes. Convolutions use ``padding="same"``, which gives PyTorch's output shapes (stride-2 layers pad
asymmetrically, as TensorFlow users write them).

    tf = configure(threads=1)          # before anything else touches TensorFlow
    model, x_tf = build("resnet", x, "full")
    fn = tf.function(lambda t: model(t, training=False))
"""
from __future__ import annotations

import os

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def configure(threads: int):
    """Import TensorFlow with ``threads`` intra-op threads and one inter-op thread; returns the module."""
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(threads)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    return tf


def to_tf_input(x: np.ndarray) -> np.ndarray:
    """The batch in TensorFlow's layout: NCHW images become NHWC, anything else is unchanged."""
    return np.ascontiguousarray(x.transpose(0, 2, 3, 1)) if x.ndim == 4 else x


def _mlp(keras, x, full):
    return keras.Sequential([keras.Input(x.shape[1:]), keras.layers.Dense(512, activation="relu"),
                             keras.layers.Dense(10)])


def _conv_bn(keras, y, c, k, stride, groups_dw=False):
    if groups_dw:
        y = keras.layers.DepthwiseConv2D(k, stride, padding="same", use_bias=False)(y)
    else:
        y = keras.layers.Conv2D(c, k, stride, padding="same", use_bias=False)(y)
    return keras.layers.BatchNormalization(epsilon=1e-5)(y)


def _resnet(keras, x, full):
    widths = (64, 128, 256, 512) if full else (16, 32, 64, 128)
    inp = keras.Input(x.shape[1:])
    y = keras.layers.ReLU()(_conv_bn(keras, inp, widths[0], 7, 2))
    y = keras.layers.MaxPooling2D(3, 2, padding="same")(y)
    c = widths[0]
    for i, w in enumerate(widths):
        for j in range(2):
            stride = 2 if j == 0 and i > 0 else 1
            z = keras.layers.ReLU()(_conv_bn(keras, y, w, 3, stride))
            z = _conv_bn(keras, z, w, 3, 1)
            short = _conv_bn(keras, y, w, 1, stride) if stride != 1 or c != w else y
            y, c = keras.layers.ReLU()(keras.layers.Add()([z, short])), w
    y = keras.layers.GlobalAveragePooling2D()(y)
    return keras.Model(inp, keras.layers.Dense(1000 if full else 10)(y))


# tests.models.MobileNetV2.SETTINGS (expansion, channels, repeats, stride), copied to keep torch out of TF runs.
_MOBILENET_SETTINGS = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2),
                       (6, 320, 1, 1))


def _mobilenet(keras, x, full):
    width = 1.0 if full else 0.35
    inp = keras.Input(x.shape[1:])
    c = int(32 * width)
    y = keras.layers.ReLU(6.0)(_conv_bn(keras, inp, c, 3, 2))
    for t, ch, n, s in _MOBILENET_SETTINGS:
        out = max(8, int(ch * width))
        for i in range(n):
            stride, z = (s if i == 0 else 1), y
            if t != 1:
                z = keras.layers.ReLU(6.0)(_conv_bn(keras, z, c * t, 1, 1))
            z = keras.layers.ReLU(6.0)(_conv_bn(keras, z, None, 3, stride, groups_dw=True))
            z = _conv_bn(keras, z, out, 1, 1)
            y, c = (keras.layers.Add()([y, z]) if stride == 1 and c == out else z), out
    y = keras.layers.ReLU(6.0)(_conv_bn(keras, y, int(1280 * max(1.0, width)), 1, 1))
    y = keras.layers.GlobalAveragePooling2D()(y)
    return keras.Model(inp, keras.layers.Dense(1000 if full else 10)(keras.layers.Dropout(0.2)(y)))


def _encoder_layer(keras, x, heads):
    """BERT's post-norm layer as in tests/models.py: fused QKV projection, attention, Add+LayerNorm, GELU FFN."""
    ops = keras.ops
    t, d = x.shape[1], x.shape[2]
    qkv = ops.reshape(keras.layers.Dense(3 * d)(x), (-1, t, 3, heads, d // heads))
    q, k, v = (ops.transpose(qkv[:, :, i], (0, 2, 1, 3)) for i in range(3))
    att = ops.softmax(ops.matmul(q, ops.transpose(k, (0, 1, 3, 2))) / (d // heads) ** 0.5, axis=-1)
    y = ops.reshape(ops.transpose(ops.matmul(att, v), (0, 2, 1, 3)), (-1, t, d))
    x = keras.layers.LayerNormalization(epsilon=1e-5)(x + keras.layers.Dense(d)(y))
    ff = keras.layers.Dense(d)(keras.layers.Dense(4 * d, activation="gelu")(x))
    return keras.layers.LayerNormalization(epsilon=1e-5)(x + ff)


def _transformer(keras, x, full):
    vocab, d, heads, layers = (30522, 768, 12, 12) if full else (1000, 64, 4, 2)
    inp = keras.Input(x.shape[1:], dtype="int64")
    y = keras.layers.Embedding(vocab, d)(inp)
    for _ in range(layers):
        y = _encoder_layer(keras, y, heads)
    return keras.Model(inp, keras.layers.Dense(5)(keras.ops.mean(y, axis=1)))


def _lstm(keras, x, full):
    return keras.Sequential([keras.Input(x.shape[1:], dtype="int64"), keras.layers.Embedding(1000, 32),
                             keras.layers.LSTM(64), keras.layers.Dense(4)])


_BUILDERS = {"mlp": _mlp, "resnet": _resnet, "mobilenet": _mobilenet, "transformer": _transformer, "lstm": _lstm}


def build(name: str, x: np.ndarray, size: str = "small"):
    """(Keras model, its input batch) for ``name`` of tests.models.MODELS, given that module's input ``x``."""
    import keras

    if name not in _BUILDERS:
        raise ValueError(f"unknown model {name}")
    xt = to_tf_input(x)
    return _BUILDERS[name](keras, xt, size == "full"), xt
