"""Normalization (seed layer 2, NN library): BatchNormalization, InstanceNormalization,
LayerNormalization, GroupNormalization, RMSNormalization, LpNormalization, MeanVarianceNormalization, LRN.

Statistics are computed in float32 for float16/bfloat16 inputs (or in ``stash_type`` where the operator
has one) and results are rounded back to the input's dtype once.
"""
import numpy as np

from opencann.compiler.dtypes import from_onnx
from opencann.errors import AclError, ErrorCode
from opencann.ops.common import widen
from opencann.ops.registry import op


def _stash(stash_type: int) -> np.dtype:
    """The dtype statistics are computed in for a ``stash_type`` code (at least float32)."""
    return np.promote_types(from_onnx(stash_type), np.float32)


def _per_channel(p: np.ndarray, rank: int) -> np.ndarray:
    """A (C,) parameter shaped to broadcast over (N, C, D1, ..., Dk); others broadcast after N as they are."""
    return p.reshape(-1, *(1,) * (rank - 2)) if p.ndim == 1 and rank > 2 else p


def _moments(x: np.ndarray, axes) -> tuple[np.ndarray, np.ndarray]:
    """Mean and (population) variance over ``axes``, kept as size-1 dimensions."""
    mean = np.mean(x, axis=axes, keepdims=True)
    return mean, np.mean(np.square(x - mean), axis=axes, keepdims=True)


# --- BatchNormalization -----------------------------------------------------------------------------

def _batch_norm(x, scale, b, mean, var, epsilon, momentum, training, axes):
    """Y, the updated running mean and variance, and the batch mean and variance (training only)."""
    if x.ndim < 2:
        raise AclError(ErrorCode.INVALID_PARAM, f"BatchNormalization needs rank >= 2 input, got {x.shape}")
    xf = widen(x)
    s, bias, m, v = (_per_channel(widen(p), x.ndim) for p in (scale, b, mean, var))
    stats = ()
    if training:
        bm, bv = _moments(xf, axes)
        bm, bv = bm.reshape(m.shape), bv.reshape(v.shape)
        running = (m * momentum + bm * (1 - momentum), v * momentum + bv * (1 - momentum))
        stats = tuple(r.reshape(mean.shape).astype(mean.dtype, copy=False) for r in (*running, bm, bv))
        m, v = bm, bv
    y = ((xf - m) / np.sqrt(v + epsilon) * s + bias).astype(x.dtype, copy=False)
    return y, *stats


@op("BatchNormalization", since=1)
def batch_norm_legacy(x, scale, b, mean, var, *, epsilon=1e-5, momentum=0.9, spatial=1, is_test=0,
                      consumed_inputs=None, n_outputs=1):
    """Opsets 1-13: training statistics when the node asks for more than Y (and ``is_test`` is unset);
    ``spatial=0`` normalizes each (C, D1, ..., Dk) position separately. ``consumed_inputs`` (opset 1)
    was a memory-reuse hint and is ignored."""
    training = n_outputs > 1 and not is_test
    axes = tuple(i for i in range(x.ndim) if i != 1) if spatial else (0,)
    return _batch_norm(x, scale, b, mean, var, epsilon, momentum, training, axes)[:n_outputs]


@op("BatchNormalization", since=14)
def batch_norm(x, scale, b, input_mean, input_var, *, epsilon, momentum, training_mode):
    """Y, and in training mode the running mean and variance updated with the batch statistics."""
    axes = tuple(i for i in range(x.ndim) if i != 1)
    return _batch_norm(x, scale, b, input_mean, input_var, epsilon, momentum, bool(training_mode), axes)[:3]


# --- per-sample normalizations ----------------------------------------------------------------------

@op("InstanceNormalization", since=1)
def instance_norm(x, scale, b, *, epsilon=1e-5, consumed_inputs=None):
    """Normalizes each (n, c) plane over its spatial dims (``consumed_inputs``, opset 1, is ignored)."""
    if x.ndim < 3:
        raise AclError(ErrorCode.INVALID_PARAM, f"InstanceNormalization needs rank >= 3 input, got {x.shape}")
    xf = widen(x)
    mean, var = _moments(xf, tuple(range(2, x.ndim)))
    y = (xf - mean) / np.sqrt(var + epsilon) * _per_channel(widen(scale), x.ndim) + _per_channel(widen(b), x.ndim)
    return y.astype(x.dtype, copy=False)


def _trailing(x: np.ndarray, axis: int) -> tuple[int, ...]:
    """The axes from ``axis`` (may be negative) to the last."""
    if not -x.ndim <= axis < x.ndim:
        raise AclError(ErrorCode.INVALID_PARAM, f"axis {axis} out of range for rank {x.ndim}")
    return tuple(range(axis % x.ndim, x.ndim))


@op("LayerNormalization", since=17)
def layer_norm(x, scale, b=None, *, axis, epsilon, stash_type):
    """Y, and the Mean and InvStdDev (in the ``stash_type`` dtype) over the axes from ``axis`` on."""
    stash = from_onnx(stash_type)
    xf = x.astype(_stash(stash_type), copy=False)
    mean, var = _moments(xf, _trailing(x, axis))
    inv_std = 1 / np.sqrt(var + epsilon)
    y = (xf - mean) * inv_std * scale.astype(xf.dtype, copy=False)
    if b is not None:
        y = y + b.astype(xf.dtype, copy=False)
    return y.astype(x.dtype, copy=False), mean.astype(stash, copy=False), inv_std.astype(stash, copy=False)


@op("RMSNormalization", since=23)
def rms_norm(x, scale, *, axis, epsilon, stash_type):
    """``x / sqrt(mean(x^2) + epsilon) * scale`` over the axes from ``axis`` on; Y has scale's dtype."""
    xf = x.astype(_stash(stash_type), copy=False)
    ms = np.mean(np.square(xf), axis=_trailing(x, axis), keepdims=True)
    return (xf / np.sqrt(ms + epsilon) * scale.astype(xf.dtype, copy=False)).astype(scale.dtype, copy=False)


def _group_norm(x, scale, bias, num_groups, epsilon, dtype):
    """Normalizes each of ``num_groups`` channel groups; ``scale``/``bias`` are per channel."""
    n, c = x.shape[:2]
    if not num_groups or num_groups < 0 or c % num_groups:
        raise AclError(ErrorCode.INVALID_PARAM, f"GroupNormalization: {c} channels in {num_groups} groups")
    xf = x.astype(dtype, copy=False).reshape(n, num_groups, -1)
    mean, var = _moments(xf, 2)
    y = ((xf - mean) / np.sqrt(var + epsilon)).reshape(x.shape)
    y = y * _per_channel(scale.astype(dtype), x.ndim) + _per_channel(bias.astype(dtype), x.ndim)
    return y.astype(x.dtype, copy=False)


@op("GroupNormalization", since=18)
def group_norm_18(x, scale, bias, *, num_groups=None, epsilon):
    """Opset 18: ``scale`` and ``bias`` have one value per group."""
    reps = x.shape[1] // num_groups if num_groups else 1
    return _group_norm(x, np.repeat(scale, reps), np.repeat(bias, reps), num_groups, epsilon,
                       np.promote_types(x.dtype, np.float32))


@op("GroupNormalization", since=21)
def group_norm(x, scale, bias, *, num_groups=None, epsilon, stash_type):
    """Opset 21: ``scale`` and ``bias`` have one value per channel."""
    return _group_norm(x, scale, bias, num_groups, epsilon, _stash(stash_type))


@op("MeanVarianceNormalization", since=9)
def mean_variance_norm(x, *, axes):
    """``(x - mean) / (std + 1e-9)`` over ``axes``."""
    xf = widen(x)
    mean, var = _moments(xf, tuple(axes))
    return ((xf - mean) / (np.sqrt(var) + 1e-9)).astype(x.dtype, copy=False)


@op("LpNormalization", since=1)
def lp_norm(x, *, axis, p):
    """``x`` divided by its L1 or L2 norm along ``axis`` (0 where the norm is 0)."""
    if p not in (1, 2):
        raise AclError(ErrorCode.INVALID_PARAM, f"LpNormalization supports p = 1 or 2, got {p}")
    xf = widen(x)
    norm = np.sum(np.abs(xf), axis=axis, keepdims=True) if p == 1 else \
        np.sqrt(np.sum(np.square(xf), axis=axis, keepdims=True))
    with np.errstate(divide="ignore", invalid="ignore"):
        y = np.where(norm == 0, 0, xf / norm)
    return y.astype(x.dtype, copy=False)


@op("LRN", since=1)
def lrn(x, *, size=None, alpha=1e-4, beta=0.75, bias=1.0):
    """Local response normalization across channels: ``x / (bias + alpha/size * sum x^2)^beta``."""
    if not size or size < 0 or x.ndim < 3:
        raise AclError(ErrorCode.INVALID_PARAM, f"LRN needs size > 0 and rank >= 3, got {size}, {x.shape}")
    xf = widen(x)
    pad = [(0, 0)] * x.ndim
    pad[1] = ((size - 1) // 2, size // 2)
    padded = np.pad(np.square(xf), pad)
    square_sum = np.lib.stride_tricks.sliding_window_view(padded, size, axis=1).sum(axis=-1)
    return (xf / (bias + alpha / size * square_sum) ** beta).astype(x.dtype, copy=False)
