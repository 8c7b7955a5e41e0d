"""Activation functions (seed layer 2: NN library).

Float activations compute in float32 or wider (float16, bfloat16 and float8 inputs are widened) and
return their input's type; opset 1's ``consumed_inputs`` hint is accepted and ignored.
"""
import functools

import numpy as np

from opencann.errors import AclError, ErrorCode
from opencann.ops.common import widen
from opencann.ops.elementwise import erf
from opencann.ops.registry import op


def _floating(fn):
    """Run ``fn`` on the widened input and cast its result back to the input's type."""
    @functools.wraps(fn)
    def kernel(x, *args, **kwargs):
        with np.errstate(all="ignore"):
            return np.asarray(fn(widen(x), *args, **kwargs)).astype(x.dtype, copy=False)
    return kernel


def _sigmoid(x):
    """1 / (1 + exp(-x)), without overflow for large |x|."""
    e = np.exp(-np.abs(x))
    return np.where(x >= 0, 1.0, e) / (1.0 + e)


# --- piecewise linear -----------------------------------------------------------------------------

@op("Relu", since=(1, 6, 13, 14))
def relu(x, *, consumed_inputs=None):
    return np.maximum(x, x.dtype.type(0))


@op("LeakyRelu", since=(1, 6, 16))
@_floating
def leaky_relu(x, *, alpha=0.01, consumed_inputs=None):
    return np.where(x < 0, alpha * x, x)


@op("PRelu", since=(1, 6, 7, 9, 16))
def prelu(x, slope, *, consumed_inputs=None):
    """``slope`` broadcasts to X's shape."""
    y = widen(x)
    return np.where(y < 0, widen(slope) * y, y).astype(x.dtype, copy=False)


@op("ThresholdedRelu", since=(10, 22))
@_floating
def thresholded_relu(x, *, alpha=1.0):
    return np.where(x > alpha, x, 0)


@op("Shrink", since=(9,))
@_floating
def shrink(x, *, bias=0.0, lambd=0.5):
    return np.where(x < -lambd, x + bias, np.where(x > lambd, x - bias, 0))


@op("HardSigmoid", since=(1, 6, 22))
@_floating
def hard_sigmoid(x, *, alpha=0.2, beta=0.5, consumed_inputs=None):
    return np.clip(alpha * x + beta, 0, 1)


@op("HardSwish", since=(14, 22))
@_floating
def hard_swish(x):
    return x * np.clip(x / 6 + 0.5, 0, 1)


# --- smooth ---------------------------------------------------------------------------------------

@op("Sigmoid", since=(1, 6, 13))
@_floating
def sigmoid(x, *, consumed_inputs=None):
    return _sigmoid(x)


@op("Tanh", since=(1, 6, 13))
@_floating
def tanh(x, *, consumed_inputs=None):
    return np.tanh(x)


@op("Elu", since=(1, 6, 22))
@_floating
def elu(x, *, alpha=1.0, consumed_inputs=None):
    return np.where(x < 0, alpha * np.expm1(x), x)


@op("Selu", since=(1, 6, 22))
@_floating
def selu(x, *, alpha=1.67326319217681884765625, gamma=1.05070102214813232421875, consumed_inputs=None):
    return gamma * np.where(x <= 0, alpha * np.expm1(x), x)


@op("Celu", since=(12, 28))
@_floating
def celu(x, *, alpha=1.0):
    return np.maximum(x, 0) + np.minimum(0, alpha * np.expm1(x / alpha))


@op("Softplus", since=(1, 22))
@_floating
def softplus(x):
    return np.logaddexp(0, x)


@op("Softsign", since=(1, 22))
@_floating
def softsign(x):
    return x / (1 + np.abs(x))


@op("Mish", since=(18, 22))
@_floating
def mish(x):
    return x * np.tanh(np.logaddexp(0, x))


@op("Gelu", since=(20,))
@_floating
def gelu(x, *, approximate="none"):
    """Exact (erf) or ``approximate="tanh"`` Gaussian error linear unit."""
    if approximate == "tanh":
        return 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x ** 3)))
    if approximate != "none":
        raise AclError(ErrorCode.INVALID_PARAM, f"Gelu: approximate must be 'none' or 'tanh', got {approximate!r}")
    return 0.5 * x * (1 + erf(x / np.sqrt(2)))


@op("Swish", since=(24,))
@_floating
def swish(x, *, alpha=1.0):
    return x * _sigmoid(alpha * x)


@op("SwiGLU", since=(28,))
@_floating
def swiglu(a, b, *, alpha=1.0):
    """Swish(A) * B; A and B must have the same shape (no broadcasting)."""
    if a.shape != b.shape:
        raise AclError(ErrorCode.INVALID_PARAM, f"SwiGLU: A {a.shape} and B {b.shape} must have the same shape")
    return a * _sigmoid(alpha * a) * widen(b)
