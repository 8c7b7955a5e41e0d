"""Random generators (seed layer 2, NN library): RandomUniform, RandomNormal, their ``*Like`` forms,
Bernoulli and Multinomial.

A ``seed`` attribute makes a node reproducible (the same seed gives the same tensor); without one each
run draws fresh numbers. Samples are drawn in float64 and cast to the requested type.
"""
import numpy as np

from opencann.compiler.dtypes import from_onnx
from opencann.errors import AclError, ErrorCode
from opencann.ops.registry import op


def _rng(seed):
    """A generator seeded from the bits of the float ``seed`` attribute, or from the OS when absent."""
    if seed is None:
        return np.random.default_rng()
    return np.random.default_rng(int(np.float32(seed).view(np.uint32)))


def _dtype(code, like=None):
    return from_onnx(code) if code is not None else like.dtype


@op("RandomUniform", since=1)
def random_uniform(*, dtype=1, high=1.0, low=0.0, seed=None, shape=None):
    if shape is None:
        raise AclError(ErrorCode.INVALID_PARAM, "RandomUniform: the shape attribute is required")
    return _rng(seed).uniform(low, high, tuple(shape)).astype(from_onnx(dtype))


@op("RandomNormal", since=1)
def random_normal(*, dtype=1, mean=0.0, scale=1.0, seed=None, shape=None):
    if shape is None:
        raise AclError(ErrorCode.INVALID_PARAM, "RandomNormal: the shape attribute is required")
    return _rng(seed).normal(mean, scale, tuple(shape)).astype(from_onnx(dtype))


@op("RandomUniformLike", since=1)
def random_uniform_like(x, *, dtype=None, high=1.0, low=0.0, seed=None):
    return _rng(seed).uniform(low, high, x.shape).astype(_dtype(dtype, x))


@op("RandomNormalLike", since=1)
def random_normal_like(x, *, dtype=None, mean=0.0, scale=1.0, seed=None):
    return _rng(seed).normal(mean, scale, x.shape).astype(_dtype(dtype, x))


@op("Bernoulli", since=15)
def bernoulli(x, *, dtype=None, seed=None):
    p = x.astype(np.float64)
    return (_rng(seed).random(x.shape) < p).astype(_dtype(dtype, x))


@op("Multinomial", since=7)
def multinomial(x, *, dtype=6, sample_size=1, seed=None):
    """Draws ``sample_size`` class indices per row of unnormalised log-probabilities ``x`` [batch, classes]."""
    if x.ndim != 2 or x.shape[1] == 0:
        raise AclError(ErrorCode.INVALID_PARAM, f"Multinomial: input must be [batch, classes], got {x.shape}")
    logits = x.astype(np.float64)
    p = np.exp(logits - logits.max(axis=1, keepdims=True))
    cdf = np.cumsum(p, axis=1)
    cdf /= cdf[:, -1:]
    u = _rng(seed).random((x.shape[0], sample_size))
    picks = np.minimum((u[:, :, None] >= cdf[:, None, :]).sum(axis=-1), x.shape[1] - 1)
    return picks.astype(from_onnx(dtype))
