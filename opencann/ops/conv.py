"""Convolutions (seed layer 2, NN library): Conv, ConvTranspose, DeformConv and CausalConvWithState.

Conv is an im2col: the padded channels-last input is viewed as sliding windows
(``numpy.lib.stride_tricks.sliding_window_view``), copied once into a ``(groups, pixels, K * Cg)``
matrix and multiplied with the weights in one batched BLAS matmul (depthwise convs instead sum one
multiply-add per kernel tap). ConvTranspose is the reverse, a col2im: one matmul, then a scatter-add
per kernel tap. Low-precision floats accumulate in float32. :func:`conv_pads` and :func:`windows` are
shared with :mod:`opencann.ops.pool`; those and :func:`gemm_windows` with :mod:`opencann.ops.quantize`.
"""
from __future__ import annotations

import math

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from opencann.errors import AclError, ErrorCode
from opencann.ops.common import compute_dtype
from opencann.ops.registry import op


def conv_pads(auto_pad: str, pads, in_shape, kernel, strides, dilations) -> tuple[list[int], list[int]]:
    """Begin and end padding per spatial axis, from explicit ``pads`` or ``auto_pad``."""
    nd = len(kernel)
    if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        begin, end = [], []
        for size, k, s, d in zip(in_shape, kernel, strides, dilations, strict=True):
            total = max(0, (-(-size // s) - 1) * s + (k - 1) * d + 1 - size)
            low = total // 2 if auto_pad == "SAME_UPPER" else total - total // 2
            begin.append(low)
            end.append(total - low)
        return begin, end
    if auto_pad == "VALID" or not pads:
        return [0] * nd, [0] * nd
    if auto_pad != "NOTSET":
        raise AclError(ErrorCode.INVALID_PARAM, f"unknown auto_pad '{auto_pad}'")
    return [int(p) for p in pads[:nd]], [int(p) for p in pads[nd:]]


def windows(x: np.ndarray, kernel, strides, dilations, begin, end, pad_value=0, first: int = 2) -> np.ndarray:
    """A strided view of the windows of ``x`` padded by ``begin``/``end`` (negative pads crop).

    The spatial axes start at ``first``; they become the output positions and the kernel axes are
    appended: ``(N, C, *out, *kernel)`` for NCHW input, ``(N, *out, C, *kernel)`` for channels-last.
    """
    nd = len(kernel)
    axes = range(first, first + nd)
    width = [(0, 0)] * x.ndim
    for ax, b, e in zip(axes, begin, end, strict=True):
        width[ax] = (max(b, 0), max(e, 0))
    if any(b or e for b, e in width):
        x = np.pad(x, width, constant_values=pad_value)
    index = [slice(None)] * x.ndim
    for ax, b, e in zip(axes, begin, end, strict=True):
        index[ax] = slice(max(-b, 0), x.shape[ax] - max(-e, 0))
    x = x[tuple(index)]
    span = [(k - 1) * d + 1 for k, d in zip(kernel, dilations, strict=True)]
    if any(x.shape[ax] < sp for ax, sp in zip(axes, span, strict=True)):
        shape = list(x.shape)
        for ax, sp, s in zip(axes, span, strides, strict=True):
            shape[ax] = max(0, (shape[ax] - sp) // s + 1)
        return np.zeros((*shape, *kernel), dtype=x.dtype)
    view = sliding_window_view(x, span, axis=tuple(axes))
    index = [slice(None)] * x.ndim + [slice(None, None, d) for d in dilations]
    for ax, s in zip(axes, strides, strict=True):
        index[ax] = slice(None, None, s)
    return view[tuple(index)]


def gemm_windows(cols: np.ndarray, w: np.ndarray, group: int) -> np.ndarray:
    """Multiply channels-last windows ``(N, *out, C, *k)`` by weights ``(M, C / group, *k)``: ``(N, M, *out)``.

    The im2col matrix is copied with channels innermost, which reads the windows view contiguously.
    """
    nk = w.ndim - 2
    n, c, m = cols.shape[0], cols.shape[-nk - 1], w.shape[0]
    out, kernel = cols.shape[1:-nk - 1], cols.shape[-nk:]
    if c != w.shape[1] * group or m % group:
        raise AclError(ErrorCode.INVALID_PARAM, f"conv: input channels {c}, weight {w.shape}, group {group}")
    cg, mg, no = c // group, m // group, len(out)
    if cg == 1:  # depthwise: a multiply-add per kernel tap beats a batch of tiny matmuls
        wt = w.reshape(group, mg, -1)
        y = np.zeros((n, *out, group, mg), dtype=np.result_type(cols, w))
        for k, tap in enumerate(np.ndindex(*kernel)):
            y += cols[(..., *tap)][..., None] * wt[:, :, k]
    else:
        split = cols.reshape(n, *out, group, cg, *kernel)
        a = split.transpose(1 + no, 0, *range(1, 1 + no), *range(3 + no, split.ndim), 2 + no)
        b = w.reshape(group, mg, cg, *kernel).transpose(0, *range(3, 3 + nk), 2, 1).reshape(group, -1, mg)
        y = np.matmul(a.reshape(group, n * math.prod(out), b.shape[1]), b).reshape(group, n, *out, mg)
        y = np.moveaxis(y, 0, -2)
    return np.ascontiguousarray(np.moveaxis(y.reshape(n, *out, m), -1, 1))


def _add_bias(y: np.ndarray, b) -> np.ndarray:
    if b is not None:
        y += b.astype(y.dtype).reshape(1, -1, *[1] * (y.ndim - 2))
    return y


def _spatial(x, w, strides, dilations):
    nd = x.ndim - 2
    if w.ndim != x.ndim:
        raise AclError(ErrorCode.INVALID_PARAM, f"conv: input rank {x.ndim} but weight rank {w.ndim}")
    return nd, list(strides or [1] * nd), list(dilations or [1] * nd)


@op("Conv", since=1)
def conv(x, w, b=None, *, auto_pad="NOTSET", dilations=None, group=1, kernel_shape=None, pads=None,
         strides=None):
    nd, strides, dilations = _spatial(x, w, strides, dilations)
    dt = compute_dtype(x.dtype)
    kernel = w.shape[2:]
    begin, end = conv_pads(auto_pad, pads, x.shape[2:], kernel, strides, dilations)
    last = np.ascontiguousarray(np.moveaxis(x.astype(dt, copy=False), 1, -1))
    y = gemm_windows(windows(last, kernel, strides, dilations, begin, end, first=1), w.astype(dt, copy=False), group)
    return _add_bias(y, b).astype(x.dtype, copy=False)


def _transpose_crops(auto_pad, pads, output_shape, full, in_shape, strides):
    """Begin/end crop of ConvTranspose's full output, from output_shape, SAME auto_pad or pads."""
    nd = len(full)
    if output_shape is not None:
        target = [int(v) for v in output_shape[-nd:]]
    elif auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        target = [i * s for i, s in zip(in_shape, strides, strict=True)]
    else:
        return conv_pads(auto_pad, pads, full, [1] * nd, [1] * nd, [1] * nd)
    begin, end = [], []
    for f, t in zip(full, target, strict=True):
        total = f - t
        low = total // 2 if auto_pad == "SAME_UPPER" else total - total // 2
        begin.append(low)
        end.append(total - low)
    return begin, end


def _crop(y: np.ndarray, begin, end) -> np.ndarray:
    """Crop ``y``'s spatial axes by ``begin``/``end`` (negative values pad with zeros)."""
    width = [(0, 0), (0, 0)] + [(max(-b, 0), max(-e, 0)) for b, e in zip(begin, end, strict=True)]
    if any(lo or hi for lo, hi in width):
        y = np.pad(y, width)
    idx = tuple(slice(max(b, 0), y.shape[2 + i] - max(e, 0)) for i, (b, e) in enumerate(zip(begin, end, strict=True)))
    return y[(slice(None), slice(None), *idx)]


@op("ConvTranspose", since=1)
def conv_transpose(x, w, b=None, *, auto_pad="NOTSET", dilations=None, group=1, kernel_shape=None,
                   output_padding=None, output_shape=None, pads=None, strides=None):
    nd, strides, dilations = _spatial(x, w, strides, dilations)
    dt = compute_dtype(x.dtype)
    n, c = x.shape[:2]
    kernel, in_shape = w.shape[2:], x.shape[2:]
    out_pad = list(output_padding or [0] * nd)
    full = [s * (i - 1) + o + (k - 1) * d + 1
            for i, k, s, d, o in zip(in_shape, kernel, strides, dilations, out_pad, strict=True)]
    crops = _transpose_crops(auto_pad, pads, output_shape, full, in_shape, strides)
    cg, mg, pixels = c // group, w.shape[1], math.prod(in_shape)
    xa = x.astype(dt, copy=False).reshape(n, group, cg, pixels).transpose(1, 2, 0, 3).reshape(group, cg, n * pixels)
    wt = np.ascontiguousarray(w.astype(dt, copy=False).reshape(group, cg, -1).transpose(0, 2, 1))
    cols = np.moveaxis(np.matmul(wt, xa).reshape(group, mg, *kernel, n, *in_shape), 2 + nd, 0)
    y = np.zeros((n, group, mg, *full), dtype=dt)
    for tap in np.ndindex(*kernel):
        dst = tuple(slice(t * d, t * d + (i - 1) * s + 1, s)
                    for t, d, i, s in zip(tap, dilations, in_shape, strides, strict=True))
        y[(slice(None), slice(None), slice(None), *dst)] += cols[(slice(None), slice(None), slice(None), *tap)]
    y = y.reshape(n, group * mg, *full)
    y = np.ascontiguousarray(_crop(y, *crops))
    return _add_bias(y, b).astype(x.dtype, copy=False)


def _deform_sample(x, coords):
    """Sample ``x`` ``(N, G, Cg, *in)`` bilinearly at ``coords`` (nd arrays ``(N, G, *rest)``), zeros outside."""
    n, g, cg = x.shape[:3]
    in_shape = x.shape[3:]
    flat = x.reshape(n, g, cg, math.prod(in_shape))
    rest = coords[0].shape[2:]
    floors = [np.floor(cd) for cd in coords]
    out = np.zeros((n, g, cg, math.prod(rest)), dtype=x.dtype)
    for corner in np.ndindex(*[2] * len(in_shape)):
        weight = np.ones(coords[0].shape, dtype=x.dtype)
        valid = np.ones(coords[0].shape, dtype=bool)
        index = np.zeros(coords[0].shape, dtype=np.int64)
        for cd, fl, off, size in zip(coords, floors, corner, in_shape, strict=True):
            pos = fl + off
            weight *= 1 - np.abs(cd - pos)
            valid &= (pos >= 0) & (pos < size)
            index = index * size + np.clip(pos, 0, size - 1).astype(np.int64)
        idx = index.reshape(n, g, 1, out.shape[3])
        out += np.take_along_axis(flat, idx, axis=3) * (weight * valid).reshape(idx.shape)
    return out.reshape(n, g, cg, *rest)


@op("DeformConv", since=19)
def deform_conv(x, w, offset, b=None, mask=None, *, dilations=None, group=1, kernel_shape=None,
                offset_group=1, pads=None, strides=None):
    nd, strides, dilations = _spatial(x, w, strides, dilations)
    dt = compute_dtype(x.dtype)
    n, c = x.shape[:2]
    kernel, out = w.shape[2:], offset.shape[2:]
    ktaps = math.prod(kernel)
    if offset.shape[1] != offset_group * ktaps * nd or c % offset_group:
        raise AclError(ErrorCode.INVALID_PARAM, f"DeformConv: offset {offset.shape} does not match "
                       f"offset_group {offset_group}, kernel {tuple(kernel)}, channels {c}")
    begin, _ = conv_pads("NOTSET", pads, x.shape[2:], kernel, strides, dilations)
    off = offset.astype(dt).reshape(n, offset_group, ktaps, nd, *out)
    taps = np.indices(kernel).reshape(nd, ktaps)
    coords = []
    for i in range(nd):
        grid = np.arange(out[i]) * strides[i] - begin[i]
        grid = grid.reshape([-1 if j == i else 1 for j in range(nd)])
        base = taps[i].reshape(ktaps, *[1] * nd) * dilations[i] + grid
        coords.append(base + off[:, :, :, i])
    sampled = _deform_sample(x.astype(dt).reshape(n, offset_group, c // offset_group, *x.shape[2:]), coords)
    if mask is not None:
        sampled *= mask.astype(dt).reshape(n, offset_group, 1, ktaps, *out)
    cols = np.moveaxis(sampled.reshape(n, c, ktaps, *out), (1, 2), (-2, -1))
    y = gemm_windows(cols, w.astype(dt).reshape(w.shape[0], w.shape[1], ktaps), group)
    return _add_bias(y, b).astype(x.dtype, copy=False)


@op("CausalConvWithState", since=27)
def causal_conv_with_state(x, w, b=None, past_state=None, *, activation="none"):
    """Depthwise causal 1-D conv over ``concat(past_state, x)``; also returns the last ``k - 1`` steps."""
    if activation not in ("none", "silu", "swish"):
        raise AclError(ErrorCode.INVALID_PARAM, f"CausalConvWithState: unknown activation '{activation}'")
    if x.ndim != 3 or w.ndim != 3:
        raise AclError(ErrorCode.INVALID_PARAM, f"CausalConvWithState: input {x.shape} and weight {w.shape} "
                       "must be rank 3")
    batch, channels, _ = x.shape
    k = w.shape[2]
    past = np.zeros((batch, channels, k - 1), x.dtype) if past_state is None else past_state.astype(x.dtype)
    padded = np.concatenate([past, x], axis=2)
    dt = compute_dtype(x.dtype)
    cols = windows(padded.astype(dt).transpose(0, 2, 1), [k], [1], [1], [0], [0], first=1)
    y = _add_bias(gemm_windows(cols, w.astype(dt), channels), b)
    if activation != "none":
        y = y / (1 + np.exp(-y))
    return y.astype(x.dtype, copy=False), padded[:, :, padded.shape[2] - (k - 1):]
