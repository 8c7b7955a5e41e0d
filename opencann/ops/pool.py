"""Pooling (seed layer 2, NN library): AveragePool, MaxPool, LpPool, the global pools and MaxUnpool.

Windows come from :func:`opencann.ops.conv.windows` (a strided view, no copy) and are reduced one
kernel tap at a time (``np.maximum``/``np.add`` into an accumulator), which is much faster than a
reduction over the strided kernel axes. ``ceil_mode`` adds end padding that no window ever counts; a
last window that would start in the end padding is dropped, as in ONNX and PyTorch.
"""
from __future__ import annotations

import math

import numpy as np

from opencann.errors import AclError, ErrorCode
from opencann.ops.common import compute_dtype
from opencann.ops.conv import conv_pads, windows
from opencann.ops.registry import op


def _geometry(x, kernel_shape, strides, pads, dilations, auto_pad, ceil_mode):
    """Strides, dilations, begin and end pads, and the extra end pads that ``ceil_mode`` needs."""
    if not kernel_shape:
        raise AclError(ErrorCode.INVALID_PARAM, "pooling: kernel_shape is required")
    nd = len(kernel_shape)
    if x.ndim != nd + 2:
        raise AclError(ErrorCode.INVALID_PARAM, f"pooling: input {x.shape} does not match kernel {kernel_shape}")
    strides = list(strides or [1] * nd)
    dilations = list(dilations or [1] * nd)
    begin, end = conv_pads(auto_pad, pads, x.shape[2:], kernel_shape, strides, dilations)
    extra = []
    for size, k, s, d, b, e in zip(x.shape[2:], kernel_shape, strides, dilations, begin, end, strict=True):
        span, length = (k - 1) * d + 1, size + b + e
        count = (length - span) // s + 1
        if ceil_mode:
            count = -(-(length - span) // s) + 1
            if (count - 1) * s >= size + b:
                count -= 1
        extra.append(max(0, (count - 1) * s + span - length))
    return strides, dilations, begin, end, extra


def _lowest(dtype: np.dtype):
    return -np.inf if np.issubdtype(dtype, np.floating) else np.iinfo(dtype).min


def _tap_slices(win: np.ndarray, nd: int):
    """Each kernel tap's ``(N, C, *out)`` slice of a windows view (reducing tap by tap is fast)."""
    for tap in np.ndindex(*win.shape[-nd:]):
        yield win[(..., *tap)]


def _fold(win: np.ndarray, nd: int, ufunc) -> np.ndarray:
    taps = _tap_slices(win, nd)
    acc = np.array(next(taps))
    for v in taps:
        ufunc(acc, v, out=acc)
    return acc


def _max_fold(win: np.ndarray, nd: int) -> tuple[np.ndarray, np.ndarray]:
    """Window maxima and the flat kernel tap of each (the first one on ties)."""
    taps = _tap_slices(win, nd)
    best = np.array(next(taps))
    arg = np.zeros(best.shape, dtype=np.int64)
    for k, v in enumerate(taps, start=1):
        better = v > best
        np.copyto(best, v, where=better)
        arg[better] = k
    return best, arg


def _max_indices(arg, kernel, strides, dilations, begin, in_shape, storage_order):
    """Flat input index of each window's maximum (row-major, or spatially column-major)."""
    nd = len(kernel)
    n, c = arg.shape[:2]
    taps = np.unravel_index(arg, kernel)
    coords = []
    for i in range(nd):
        start = (np.arange(arg.shape[2 + i]) * strides[i] - begin[i]).reshape([-1 if j == i else 1 for j in range(nd)])
        coords.append(start + taps[i] * dilations[i])
    spatial = np.ravel_multi_index(coords, in_shape, order="F" if storage_order else "C", mode="clip")
    plane = np.arange(n * c).reshape(n, c, *[1] * nd) * math.prod(in_shape)
    return (plane + spatial).astype(np.int64)


@op("MaxPool", since=1)
def max_pool(x, *, auto_pad="NOTSET", ceil_mode=0, dilations=None, kernel_shape=None, pads=None,
             storage_order=0, strides=None, n_outputs=1):
    strides, dilations, begin, end, extra = _geometry(x, kernel_shape, strides, pads, dilations, auto_pad, ceil_mode)
    dt = np.dtype(np.float32) if x.dtype.kind == "V" else x.dtype
    ends = [e + more for e, more in zip(end, extra, strict=True)]
    win = windows(x.astype(dt, copy=False), kernel_shape, strides, dilations, begin, ends, _lowest(dt))
    if n_outputs < 2:
        return _fold(win, len(kernel_shape), np.maximum).astype(x.dtype, copy=False)
    y, arg = _max_fold(win, len(kernel_shape))
    return y.astype(x.dtype, copy=False), _max_indices(arg, kernel_shape, strides, dilations, begin, x.shape[2:],
                                                      storage_order)


def _window_sums(x, kernel_shape, strides, dilations, begin, end, extra):
    ends = [e + more for e, more in zip(end, extra, strict=True)]
    return _fold(windows(x, kernel_shape, strides, dilations, begin, ends), len(kernel_shape), np.add)


@op("AveragePool", since=1)
def average_pool(x, *, auto_pad="NOTSET", ceil_mode=0, count_include_pad=0, dilations=None, kernel_shape=None,
                 pads=None, strides=None):
    strides, dilations, begin, end, extra = _geometry(x, kernel_shape, strides, pads, dilations, auto_pad, ceil_mode)
    dt = compute_dtype(x.dtype)
    sums = _window_sums(x.astype(dt, copy=False), kernel_shape, strides, dilations, begin, end, extra)
    ones = np.ones((1, 1, *x.shape[2:]), dtype=dt)
    if count_include_pad:
        ones = np.pad(ones, [(0, 0), (0, 0), *zip(begin, end, strict=True)], constant_values=1)
        begin, end = [0] * len(begin), [0] * len(end)
    counts = _window_sums(ones, kernel_shape, strides, dilations, begin, end, extra)
    return (sums / counts).astype(x.dtype, copy=False)


@op("LpPool", since=1)
def lp_pool(x, *, auto_pad="NOTSET", ceil_mode=0, dilations=None, kernel_shape=None, p=2, pads=None, strides=None):
    strides, dilations, begin, end, extra = _geometry(x, kernel_shape, strides, pads, dilations, auto_pad, ceil_mode)
    dt = compute_dtype(x.dtype)
    sums = _window_sums(np.abs(x.astype(dt, copy=False)) ** p, kernel_shape, strides, dilations, begin, end, extra)
    return (sums ** (1.0 / p)).astype(x.dtype, copy=False)


@op("GlobalAveragePool", since=1)
def global_average_pool(x):
    axes = tuple(range(2, x.ndim))
    return x.astype(compute_dtype(x.dtype), copy=False).mean(axis=axes, keepdims=True).astype(x.dtype, copy=False)


@op("GlobalMaxPool", since=1)
def global_max_pool(x):
    return x.max(axis=tuple(range(2, x.ndim)), keepdims=True)


@op("GlobalLpPool", since=1)
@op("GlobalLpPool", since=2)
def global_lp_pool(x, *, p=2):
    dt = compute_dtype(x.dtype)
    sums = (np.abs(x.astype(dt, copy=False)) ** p).sum(axis=tuple(range(2, x.ndim)), keepdims=True)
    return (sums ** (1.0 / p)).astype(x.dtype, copy=False)


@op("MaxUnpool", since=9)
def max_unpool(x, indices, output_shape=None, *, kernel_shape=None, pads=None, strides=None):
    """Scatter ``x`` to ``indices`` (flat positions in the default unpooled shape) of a zero tensor."""
    nd = len(kernel_shape)
    strides = list(strides or [1] * nd)
    begin, end = conv_pads("NOTSET", pads, x.shape[2:], kernel_shape, strides, [1] * nd)
    default = (*x.shape[:2], *[(i - 1) * s + k - b - e
                               for i, s, k, b, e in zip(x.shape[2:], strides, kernel_shape, begin, end, strict=True)])
    shape = default if output_shape is None else tuple(int(v) for v in output_shape)
    coords = np.unravel_index(indices.astype(np.int64).ravel(), default)
    y = np.zeros(math.prod(shape), dtype=x.dtype)
    y[np.ravel_multi_index(coords, shape)] = x.ravel()
    return y.reshape(shape)
