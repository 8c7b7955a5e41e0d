"""Building blocks shared by the channels-last convolution kernels (:mod:`opencann.ops.cpu_conv`,
:mod:`opencann.ops.cpu_depthwise`, :mod:`opencann.ops.cpu_inverted_residual`): the activation codes of
``opencann::FusedConv``, the in-place epilogue ``act(y + bias + res)`` over an output tile, output-column ranges
and per-thread float32 scratch buffers.
"""
from __future__ import annotations

import threading

import numba
import numpy as np

F32 = np.dtype(np.float32)
ACTIVATIONS = {"": 0, "Relu": 1, "Clip": 2, "LeakyRelu": 3, "Sigmoid": 4, "HardSigmoid": 5, "HardSwish": 6}
_scratch = threading.local()


def scratch(size: int, name: str = "buf") -> np.ndarray:
    """This thread's reusable float32 scratch ``name`` of at least ``size`` elements (page faults cost more
    than GEMMs), starting on a 64-byte boundary (a 16-float vector load across two cache lines costs twice)."""
    buf = getattr(_scratch, name, None)
    if buf is None or buf.size < size:
        raw = np.empty(max(size, 1) + 16, dtype=F32)
        skip = (-raw.ctypes.data % 64) // 4
        buf = raw[skip:skip + max(size, 1)]
        setattr(_scratch, name, buf)
    return buf[:size]


@numba.njit(cache=True)
def activate(row, code, a, b):
    """Apply activation ``code`` to a 1-D float32 row in place (NaN stays NaN, as in the reference)."""
    n = row.shape[0]
    if code == 1:
        for i in range(n):
            v = row[i]
            row[i] = 0 if v < 0 else v
    elif code == 2:
        for i in range(n):
            v = row[i]
            v = a if v < a else v
            row[i] = b if v > b else v
    elif code == 3:
        for i in range(n):
            v = row[i]
            row[i] = v * a if v < 0 else v
    elif code == 4:
        for i in range(n):
            row[i] = 1 / (1 + np.exp(-row[i]))
    elif code == 5:
        for i in range(n):
            v = a * row[i] + b
            v = 0 if v < 0 else v
            row[i] = 1 if v > 1 else v
    elif code == 6:
        for i in range(n):
            v = row[i] / 6 + np.float32(0.5)
            v = 0 if v < 0 else v
            row[i] = row[i] * (1 if v > 1 else v)


@numba.njit(inline="always")
def act(v, code, a, b):
    """Activation ``code`` 1-3 (Relu, Clip, LeakyRelu) of one value, any other code: the value (NaN stays NaN)."""
    if code == 1:
        return np.float32(0) if v < 0 else v
    if code == 2:
        v = a if v < a else v
        return b if v > b else v
    if code == 3:
        return v * a if v < 0 else v
    return v


@numba.njit(cache=True, error_model="numpy", boundscheck=False)
def epilogue(y, bias, res, has_res, per_row, code, a, b):
    """``act(y + bias + res)`` over a C-contiguous 2-D output tile, in place: ``bias`` runs along rows (NCHW
    ``(M, P)``) when ``per_row``, along columns (NHWC ``(P, M)``) otherwise. Relu, Clip and LeakyRelu are
    applied in the same pass; the others in a second sweep over the tile as one flat row. Plain 2-D indexing:
    a view a row would cost a reference count each (twice the time of a 64-channel pixel's sums)."""
    inline = code <= 3
    c = code if inline else 0
    rows, n = y.shape
    for m in range(rows):
        if per_row:
            bm = bias[m]
            if has_res:
                for i in range(n):
                    y[m, i] = act(y[m, i] + bm + res[m, i], c, a, b)
            else:
                for i in range(n):
                    y[m, i] = act(y[m, i] + bm, c, a, b)
        elif has_res:
            for i in range(n):
                y[m, i] = act(y[m, i] + bias[i] + res[m, i], c, a, b)
        else:
            for i in range(n):
                y[m, i] = act(y[m, i] + bias[i], c, a, b)
    if not inline:
        activate(y.reshape(y.size), code, a, b)


@numba.njit(cache=True)
def col_range(out, start, step, size):
    """The output positions ``o`` whose input ``start + o * step`` lies in ``[0, size)``: ``[lo, hi)``."""
    lo = 0 if start >= 0 else (-start + step - 1) // step
    hi = 0 if size - 1 - start < 0 else (size - 1 - start) // step + 1
    return min(lo, out), max(min(hi, out), min(lo, out))
