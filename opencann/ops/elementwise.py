"""Elementwise arithmetic (seed: NN library). Binary ops broadcast NumPy-style, as ONNX does."""
import numpy as np

from opencann.ops.registry import op


@op("Add", since=7)
def add(a, b):
    return a + b


@op("Relu", since=6)
def relu(x):
    return np.maximum(x, 0).astype(x.dtype, copy=False)
