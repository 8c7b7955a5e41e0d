"""Reductions and the softmax family (seed layer 2, NN library).

Reduce* take their axes as an attribute in old opsets and as an optional input in new ones (ReduceSum
from opset 13, the others from 18); one kernel serves both, since ``axes`` arrives either as a keyword
(attribute) or positionally (input). Reductions over an empty set give the operator's identity (0 for
sums, 1 for products, -inf/inf for max/min). Softmax, LogSoftmax and Hardmax coerce the input to 2-D
at ``axis`` before opset 13 and work along the single ``axis`` from opset 13 on.
"""
import numpy as np

from opencann.errors import AclError, ErrorCode
from opencann.ops.common import widen
from opencann.ops.registry import op


def _axes(data: np.ndarray, axes, noop_with_empty_axes: int) -> tuple[int, ...]:
    """Normalised reduction axes; empty axes reduce everything unless ``noop_with_empty_axes``."""
    rank = data.ndim
    if axes is None or len(axes) == 0:
        return () if noop_with_empty_axes else tuple(range(rank))
    out = set()
    for a in np.asarray(axes).reshape(-1).tolist():
        if not -rank <= a < rank:
            raise AclError(ErrorCode.INVALID_PARAM, f"reduction axis {a} out of range for rank {rank}")
        out.add(a % rank)
    return tuple(sorted(out))


def _reducer(name: str, compute):
    """Register ``compute(data, axes, keepdims) -> array`` as Reduce``name`` (attribute and input axes)."""
    input_axes_since = 13 if name == "Sum" else 18

    @op(f"Reduce{name}", since=input_axes_since)
    @op(f"Reduce{name}", since=1)
    def reduce(data, axes=None, *, keepdims=1, noop_with_empty_axes=0):
        ax = _axes(data, axes, noop_with_empty_axes)
        return np.asarray(compute(data, ax, bool(keepdims))).astype(data.dtype, copy=False)

    reduce.__name__ = reduce.__qualname__ = f"reduce_{name.lower()}"
    return reduce


def _extreme(ufunc, data, ax, keepdims, sign):
    """max (sign -1) or min (sign +1) with the identity -inf/inf (or the type's limit) for empty sets."""
    if data.dtype == np.bool_:
        initial = sign > 0
    elif data.dtype.kind in "iu":
        info = np.iinfo(data.dtype)
        initial = info.max if sign > 0 else info.min
    else:
        initial = sign * np.inf
    return ufunc.reduce(data, axis=ax, keepdims=keepdims, initial=initial)


def _log_sum_exp(data, ax, keepdims):
    x = data.astype(np.float64) if data.dtype.kind in "iu" else widen(data)
    m = np.max(x, axis=ax, keepdims=True, initial=-np.inf)
    m = np.where(np.isfinite(m), m, 0)
    with np.errstate(divide="ignore"):
        out = np.log(np.sum(np.exp(x - m), axis=ax, keepdims=True)) + m
    return out if keepdims else np.squeeze(out, axis=ax)


def _log_sum(data, ax, keepdims):
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.log(np.sum(widen(data), axis=ax, keepdims=keepdims))


def _mean(data, ax, keepdims):
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.mean(widen(data), axis=ax, keepdims=keepdims)


_reducer("Sum", lambda d, ax, k: np.sum(widen(d), axis=ax, keepdims=k))
_reducer("Mean", _mean)
_reducer("Prod", lambda d, ax, k: np.prod(widen(d), axis=ax, keepdims=k))
_reducer("Max", lambda d, ax, k: _extreme(np.maximum, d, ax, k, -1))
_reducer("Min", lambda d, ax, k: _extreme(np.minimum, d, ax, k, 1))
_reducer("L1", lambda d, ax, k: np.sum(np.abs(widen(d)), axis=ax, keepdims=k))
_reducer("L2", lambda d, ax, k: np.sqrt(np.sum(np.square(widen(d)), axis=ax, keepdims=k)))
_reducer("SumSquare", lambda d, ax, k: np.sum(np.square(widen(d)), axis=ax, keepdims=k))
_reducer("LogSum", _log_sum)
_reducer("LogSumExp", _log_sum_exp)


# --- softmax family ---------------------------------------------------------------------------------

def _axis(x: np.ndarray, axis: int) -> int:
    if not -max(x.ndim, 1) <= axis < max(x.ndim, 1):
        raise AclError(ErrorCode.INVALID_PARAM, f"axis {axis} out of range for rank {x.ndim}")
    return axis % max(x.ndim, 1)


def _coerced(fn):
    """The opset < 13 form of ``fn(x, axis)``: applied to ``x`` flattened to 2-D at ``axis``."""

    def kernel(x, *, axis):
        a = _axis(x, axis) if x.ndim else 0
        rows = int(np.prod(x.shape[:a], dtype=np.int64))
        return fn(x.reshape(rows, -1), 1).reshape(x.shape)

    return kernel


def _softmax(x: np.ndarray, axis: int) -> np.ndarray:
    """Computed natively in float16 (NumPy has the ops; ONNX's fp16 attention tests expect that rounding)."""
    xf = x if x.dtype == np.float16 else widen(x)
    e = np.exp(xf - np.max(xf, axis=axis, keepdims=True, initial=-np.inf))
    return (e / np.sum(e, axis=axis, keepdims=True)).astype(x.dtype, copy=False)


def _log_softmax(x: np.ndarray, axis: int) -> np.ndarray:
    xf = widen(x)
    shifted = xf - np.max(xf, axis=axis, keepdims=True, initial=-np.inf)
    return (shifted - np.log(np.sum(np.exp(shifted), axis=axis, keepdims=True))).astype(x.dtype, copy=False)


def _hardmax(x: np.ndarray, axis: int) -> np.ndarray:
    """1 at the first maximum along ``axis``, 0 elsewhere."""
    out = np.zeros_like(x)
    if x.size:
        idx = np.expand_dims(np.argmax(x, axis=axis), axis)
        np.put_along_axis(out, idx, 1, axis=axis)
    return out


@op("Softmax", since=13)
def softmax(x, *, axis):
    return _softmax(x, _axis(x, axis))


@op("LogSoftmax", since=13)
def log_softmax(x, *, axis):
    return _log_softmax(x, _axis(x, axis))


@op("Hardmax", since=13)
def hardmax(x, *, axis):
    return _hardmax(x, _axis(x, axis))


op("Softmax", since=1)(_coerced(_softmax))
op("LogSoftmax", since=1)(_coerced(_log_softmax))
op("Hardmax", since=1)(_coerced(_hardmax))
