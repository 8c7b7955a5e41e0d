"""TensorFlow's convolution and max pooling (channels-last, TF's filters), their gradients, the batch-norm
gradient and the fused batch norm (domain ``opencann``).

Semantics and attributes are TensorFlow's: ``strides``, ``dilations`` and ``ksize`` have one entry per
tensor axis in ``data_format`` order (``NHWC``/``NDHWC`` or ``NCHW``/``NCDHW``), ``padding`` is ``SAME``,
``VALID`` or ``EXPLICIT`` (with ``explicit_paddings``, begin/end pairs per tensor axis). Every kernel
works channels-last and handles any number of spatial axes, so the 2-D and 3-D ops share one kernel.

The forward convolution multiplies the input's windows by the filter; convolution gradients are
im2col/col2im with BLAS matmuls: the filter gradient multiplies the windows of
the input (:func:`opencann.ops.conv.windows`, copied once into a ``(pixels, C * K)`` matrix) by the output
gradient; the input gradient multiplies the output gradient by the filter and scatter-adds the columns
back, one strided add per kernel tap. A depthwise filter ``(*k, C, M)`` is a grouped one with C groups
of one input channel. Pooling gradients route each window's gradient to its maximum (the first in
row-major order, as TensorFlow's CPU kernel does) or spread it over the window's unpadded elements.
Low-precision floats compute in float32.
"""
from __future__ import annotations

import math

import numpy as np

from opencann.compiler.ir import Node, TensorType
from opencann.errors import AclError, ErrorCode
from opencann.ops.common import compute_dtype
from opencann.ops.conv import windows
from opencann.ops.registry import op

DOMAIN = "opencann"


# --- layout and geometry -----------------------------------------------------------------------------

def _last(data_format: str) -> bool:
    return not data_format.startswith("NC")


def _to_last(x: np.ndarray, data_format: str) -> np.ndarray:
    return x if _last(data_format) else np.moveaxis(x, 1, -1)


def _from_last(x: np.ndarray, data_format: str) -> np.ndarray:
    return np.ascontiguousarray(x if _last(data_format) else np.moveaxis(x, -1, 1))


def _spatial(values, data_format: str, nd: int) -> list[int]:
    """The spatial entries of a per-axis attribute (1 for each when it is empty)."""
    if not values:
        return [1] * nd
    values = [int(v) for v in values]
    return values[1:-1] if _last(data_format) else values[2:]


def _begin_pads(padding: str, explicit, in_shape, out_shape, kernel, strides, dilations, data_format) -> list[int]:
    """Padding before each spatial axis (what comes after follows from the output size)."""
    if padding == "VALID":
        return [0] * len(kernel)
    if padding == "EXPLICIT":
        return _spatial(list(explicit)[::2], data_format, len(kernel))
    if padding != "SAME":
        raise AclError(ErrorCode.INVALID_PARAM, f"unknown padding '{padding}'")
    return [max((o - 1) * s + (k - 1) * d + 1 - i, 0) // 2
            for i, o, k, s, d in zip(in_shape, out_shape, kernel, strides, dilations, strict=True)]


def _end_pads(begin, in_shape, out_shape, kernel, strides, dilations) -> list[int]:
    """Padding after each spatial axis that makes exactly ``out_shape`` windows (negative: crop)."""
    return [(o - 1) * s + (k - 1) * d + 1 - i - b
            for b, i, o, k, s, d in zip(begin, in_shape, out_shape, kernel, strides, dilations, strict=True)]


def _col2im(cols: np.ndarray, in_shape, kernel, strides, dilations, begin) -> np.ndarray:
    """Scatter-add windows ``(N, *out, C, *k)`` back onto the ``(N, *in, C)`` positions they cover."""
    nd = len(kernel)
    n, out, c = cols.shape[0], cols.shape[1:1 + nd], cols.shape[1 + nd]
    length = [max(b + i, (o - 1) * s + (k - 1) * d + 1)
              for b, i, o, k, s, d in zip(begin, in_shape, out, kernel, strides, dilations, strict=True)]
    buf = np.zeros((n, *length, c), dtype=cols.dtype)
    for tap in np.ndindex(*kernel):
        dst = tuple(slice(t * d, t * d + (o - 1) * s + 1, s) for t, d, o, s in zip(tap, dilations, out, strides))
        buf[(slice(None), *dst)] += cols[(..., *tap)]
    return buf[(slice(None), *(slice(b, b + i) for b, i in zip(begin, in_shape)))]


# --- forward convolution and max pooling (channels-last data, TF's filters) ------------------------------

def _out_sizes(in_shape, kernel, strides, dilations, padding: str, explicit, data_format: str) -> list[int]:
    """TF's output sizes of a window op over the spatial sizes ``in_shape``."""
    if padding == "SAME":
        return [-(-i // s) for i, s in zip(in_shape, strides, strict=True)]
    begin, end = (_spatial(list(explicit)[j::2], data_format, len(kernel)) if padding == "EXPLICIT"
                  else [0] * len(kernel) for j in (0, 1))
    if padding not in ("VALID", "EXPLICIT"):
        raise AclError(ErrorCode.INVALID_PARAM, f"unknown padding '{padding}'")
    return [max((i + b + e - (k - 1) * d - 1) // s + 1, 0)
            for i, b, e, k, s, d in zip(in_shape, begin, end, kernel, strides, dilations, strict=True)]


def window_geometry(in_last, kernel, strides, dilations, padding, explicit_paddings, data_format):
    """(spatial kernel, strides, dilations, output sizes, begin pads) of a TF window op on channels-last
    ``in_last`` (``kernel``: the spatial sizes; the others per tensor axis in ``data_format`` order)."""
    nd = len(kernel)
    strides, dilations = _spatial(strides, data_format, nd), _spatial(dilations, data_format, nd)
    out = _out_sizes(in_last[1:-1], kernel, strides, dilations, padding, explicit_paddings, data_format)
    begin = _begin_pads(padding, explicit_paddings, in_last[1:-1], out, kernel, strides, dilations, data_format)
    return list(kernel), strides, dilations, out, begin


def _last_shape(shape, data_format: str) -> tuple:
    return tuple(shape) if _last(data_format) else (shape[0], *shape[2:], shape[1])


def _window_type(node: Node, channels) -> list:
    """The output type of a TF window op node (``channels``: the output's channel count, or None: the input's)."""
    t = node.inputs[0].type
    shape = getattr(t, "shape", None)
    fmt = node.attrs.get("data_format", "NHWC")
    if shape is None:
        return [t if channels is None or t is None else TensorType(t.dtype, None)]
    last = _last_shape(shape, fmt)
    nd = len(last) - 2
    kernel = _spatial(node.attrs.get("ksize", ()), fmt, nd) if channels is None else \
        list(node.inputs[1].type.shape[:nd])
    strides = _spatial(node.attrs.get("strides", ()), fmt, nd)
    dilations = _spatial(node.attrs.get("dilations", ()), fmt, nd)
    out = [None] * nd
    if all(isinstance(v, int) for v in (*last[1:-1], *kernel)):
        out = _out_sizes(last[1:-1], kernel, strides, dilations, node.attrs.get("padding", "VALID"),
                         node.attrs.get("explicit_paddings", ()), fmt)
    y = (last[0], *out, last[-1] if channels is None else channels)
    return [TensorType(t.dtype, y if _last(fmt) else (y[0], y[-1], *y[1:-1]))]


def _infer_conv(node: Node) -> list:
    w = node.inputs[1].type
    if getattr(w, "shape", None) is None:
        return [TensorType(node.inputs[0].type.dtype, None)] if node.inputs[0].type is not None else [None]
    return _window_type(node, w.shape[-1])


@op("TFConv", domain=DOMAIN, infer=_infer_conv)
def tf_conv(input, filter, bias=None, *, strides=(), padding="VALID", explicit_paddings=(), dilations=(),
            data_format="NHWC", relu=0):
    """Conv2D / Conv3D with TF's ``(*k, C / groups, M)`` filter (grouped when C is a multiple of its C); an
    optional ``(M,)`` ``bias`` is added to the result as BiasAdd would (then Relu where ``relu``)."""
    nd = filter.ndim - 2
    dt = compute_dtype(input.dtype)
    xl = _to_last(input.astype(dt, copy=False), data_format)
    groups = xl.shape[-1] // filter.shape[-2]
    if xl.shape[-1] != groups * filter.shape[-2] or filter.shape[-1] % groups:
        raise AclError(ErrorCode.INVALID_PARAM, f"TFConv: input {input.shape} ({data_format}) and filter "
                       f"{filter.shape} do not match")
    kernel, strides, dilations, out, begin = window_geometry(xl.shape, filter.shape[:nd], strides, dilations,
                                                             padding, explicit_paddings, data_format)
    end = _end_pads(begin, xl.shape[1:-1], out, kernel, strides, dilations)
    cols = windows(xl, kernel, strides, dilations, begin, end, first=1)  # (N, *out, C, *k)
    rows = xl.shape[0] * math.prod(out)
    a = cols.reshape(rows, groups, filter.shape[-2] * math.prod(kernel)).transpose(1, 0, 2)  # (g, rows, Cg * K)
    y = np.matmul(a, _group_filter(filter.astype(dt, copy=False), groups))  # (g, rows, Mg)
    y = y.transpose(1, 0, 2).reshape(xl.shape[0], *out, filter.shape[-1])
    if bias is not None:
        y = y + bias.astype(dt, copy=False)
    if relu:
        y = np.maximum(y, dt.type(0))
    return _from_last(y, data_format).astype(input.dtype, copy=False)


@op("TFMaxPool", domain=DOMAIN, infer=lambda node: _window_type(node, None))
def tf_max_pool(input, *, ksize=(), strides=(), padding="VALID", explicit_paddings=(), data_format="NHWC"):
    """MaxPool / MaxPool3D: the maximum of each window's unpadded elements."""
    dt = compute_dtype(input.dtype)
    x = _to_last(input.astype(dt, copy=False), data_format)
    nd = x.ndim - 2
    kernel, strides, ones, out, begin = window_geometry(x.shape, _spatial(ksize, data_format, nd), strides, (),
                                                        padding, explicit_paddings, data_format)
    end = _end_pads(begin, x.shape[1:-1], out, kernel, strides, ones)
    y = windows(x, kernel, strides, ones, begin, end, -np.inf, 1).max(axis=tuple(range(-nd, 0)))
    return _from_last(y, data_format).astype(input.dtype, copy=False)


# --- convolution gradients ---------------------------------------------------------------------------

def _conv_geometry(in_shape, filter_shape, dy, strides, padding, explicit_paddings, dilations, data_format,
                   depthwise):
    """(channels-last dy, kernel, strides, dilations, begin pads, groups, filter as (*k, C/groups, M))."""
    nd = len(filter_shape) - 2
    dy = _to_last(dy, data_format)
    x_last = (in_shape[0], *in_shape[1:-1], in_shape[-1]) if _last(data_format) else \
        (in_shape[0], *in_shape[2:], in_shape[1])
    kernel, c = list(filter_shape[:nd]), x_last[-1]
    strides, dilations = _spatial(strides, data_format, nd), _spatial(dilations, data_format, nd)
    if depthwise:
        groups, grouped = c, (*kernel, 1, filter_shape[-2] * filter_shape[-1])
    else:
        groups, grouped = c // filter_shape[-2], tuple(filter_shape)
    if c != grouped[-2] * groups or grouped[-1] % groups or grouped[-1] != dy.shape[-1]:
        raise AclError(ErrorCode.INVALID_PARAM, f"conv gradient: input {tuple(in_shape)}, filter "
                       f"{tuple(filter_shape)} and output gradient {dy.shape} do not match ({data_format})")
    begin = _begin_pads(padding, explicit_paddings, x_last[1:-1], dy.shape[1:-1], kernel, strides, dilations,
                        data_format)
    return dy, x_last, kernel, strides, dilations, begin, groups, grouped


def _group_filter(w: np.ndarray, groups: int) -> np.ndarray:
    """A ``(*k, Cg, M)`` filter as per-group matrices ``(groups, Cg * K, M / groups)``."""
    nd = w.ndim - 2
    cg, m = w.shape[-2:]
    split = w.reshape(*w.shape[:-1], groups, m // groups)
    return split.transpose(nd + 1, nd, *range(nd), nd + 2).reshape(groups, cg * math.prod(w.shape[:nd]), -1)


def _infer_sized(sizes: int, like: int):
    """The type of a gradient whose shape is its constant input ``sizes``, its dtype input ``like``'s (None when
    the sizes are not constant: the importer keeps TensorFlow's shape)."""
    def infer(node: Node) -> list:
        shape, t = node.inputs[sizes].const, node.inputs[like].type
        if shape is None or not isinstance(t, TensorType):
            return [None]
        return [TensorType(t.dtype, tuple(int(s) for s in np.asarray(shape).reshape(-1)))]
    return infer


@op("ConvBackpropInput", domain=DOMAIN, infer=_infer_sized(0, 2))
def conv_backprop_input(input_sizes, filter, out_backprop, *, strides=(), padding="VALID", explicit_paddings=(),
                        dilations=(), data_format="NHWC", depthwise=0):
    """Conv2DBackpropInput / Conv3DBackpropInputV2 / DepthwiseConv2dNativeBackpropInput (``depthwise=1``)."""
    sizes = [int(s) for s in input_sizes]
    dy, x_last, kernel, strides, dilations, begin, groups, grouped = _conv_geometry(
        sizes, filter.shape, out_backprop, strides, padding, explicit_paddings, dilations, data_format, depthwise)
    dt = compute_dtype(out_backprop.dtype)
    w = _group_filter(filter.astype(dt, copy=False).reshape(grouped), groups)  # (g, Cg * K, Mg)
    n, out, nd = dy.shape[0], dy.shape[1:-1], len(kernel)
    rows = n * math.prod(out)
    dy_g = dy.astype(dt, copy=False).reshape(rows, groups, -1).transpose(1, 0, 2)
    cols = np.matmul(dy_g, w.transpose(0, 2, 1)).reshape(groups, n, *out, grouped[-2], *kernel)
    cols = np.moveaxis(cols, 0, 1 + nd).reshape(n, *out, x_last[-1], *kernel)
    dx = _col2im(cols, x_last[1:-1], kernel, strides, dilations, begin)
    return _from_last(dx, data_format).astype(out_backprop.dtype, copy=False)


def _infer_filter_grad(node: Node) -> list:
    """The filter's type; with ``bias_grad`` the bias gradient's too (``dy``'s channels)."""
    types = _infer_sized(1, 0)(node)
    if not node.attrs.get("bias_grad"):
        return types
    t = node.inputs[2].type
    shape = getattr(t, "shape", None)
    if not isinstance(t, TensorType) or not shape:
        return [*types, None]
    return [*types, TensorType(t.dtype, (shape[-1 if _last(node.attrs.get("data_format", "NHWC")) else 1],))]


@op("ConvBackpropFilter", domain=DOMAIN, infer=_infer_filter_grad)
def conv_backprop_filter(input, filter_sizes, out_backprop, *, strides=(), padding="VALID", explicit_paddings=(),
                         dilations=(), data_format="NHWC", depthwise=0, bias_grad=0):
    """Conv2DBackpropFilter / Conv3DBackpropFilterV2 / DepthwiseConv2dNativeBackpropFilter (``depthwise=1``); with
    ``bias_grad=1`` (``fuse_tf_conv.fuse_bias_grads``: a BiasAddGrad of the same ``out_backprop``) that one too."""
    sizes = tuple(int(s) for s in filter_sizes)
    dy, x_last, kernel, strides, dilations, begin, groups, grouped = _conv_geometry(
        input.shape, sizes, out_backprop, strides, padding, explicit_paddings, dilations, data_format, depthwise)
    dt = compute_dtype(input.dtype)
    xl = _to_last(input.astype(dt, copy=False), data_format)
    out = dy.shape[1:-1]
    end = _end_pads(begin, x_last[1:-1], out, kernel, strides, dilations)
    cols = windows(xl, kernel, strides, dilations, begin, end, first=1)  # (N, *out, C, *k)
    rows = dy.shape[0] * math.prod(out)
    a = cols.reshape(rows, groups, -1).transpose(1, 2, 0)  # im2col: (g, Cg * K, rows)
    b = dy.astype(dt, copy=False).reshape(rows, groups, -1).transpose(1, 0, 2)  # (g, rows, Mg)
    dw = np.matmul(a, b).reshape(groups, grouped[-2], *kernel, -1)
    nd = len(kernel)
    dw = np.ascontiguousarray(dw.transpose(*range(2, 2 + nd), 1, 0, 2 + nd).reshape(sizes)).astype(input.dtype,
                                                                                                     copy=False)
    if not bias_grad:
        return dw
    db = dy.reshape(-1, dy.shape[-1]).sum(axis=0, dtype=compute_dtype(out_backprop.dtype))
    return dw, db.astype(out_backprop.dtype)


# --- pooling gradients -------------------------------------------------------------------------------

def _pool_geometry(in_last, grad_last, ksize, strides, padding, explicit_paddings, data_format):
    nd = len(in_last) - 2
    kernel, strides = _spatial(ksize, data_format, nd), _spatial(strides, data_format, nd)
    ones = [1] * nd
    begin = _begin_pads(padding, explicit_paddings, in_last[1:-1], grad_last.shape[1:-1], kernel, strides, ones,
                        data_format)
    return kernel, strides, begin


def _first_max_tap(win: np.ndarray, nd: int) -> np.ndarray:
    """The flat kernel tap of each window's maximum: the first in row-major order on ties."""
    taps = np.ndindex(*win.shape[-nd:])
    best = np.array(win[(..., *next(taps))])
    arg = np.zeros(best.shape, dtype=np.int64)
    for k, tap in enumerate(taps, start=1):
        v = win[(..., *tap)]
        better = v > best
        np.copyto(best, v, where=better)
        arg[better] = k
    return arg


@op("MaxPoolGrad", domain=DOMAIN, infer=lambda node: [node.inputs[0].type])
def max_pool_grad(orig_input, orig_output, grad, *, ksize=(), strides=(), padding="VALID", explicit_paddings=(),
                  data_format="NHWC", relu=0):
    """MaxPoolGrad / MaxPool3DGrad: each window's gradient goes to its maximum. ``relu=1``: followed by ReluGrad
    on ``orig_input`` (a pooled ReLU's output): zero where ``orig_input`` is not positive."""
    dt = compute_dtype(orig_input.dtype)
    x = _to_last(orig_input.astype(dt, copy=False), data_format)
    g = _to_last(grad.astype(dt, copy=False), data_format)
    kernel, strides, begin = _pool_geometry(x.shape, g, ksize, strides, padding, explicit_paddings, data_format)
    nd, out, in_shape = len(kernel), g.shape[1:-1], x.shape[1:-1]
    end = _end_pads(begin, in_shape, out, kernel, strides, [1] * nd)
    taps = np.unravel_index(_first_max_tap(windows(x, kernel, strides, [1] * nd, begin, end, -np.inf, 1), nd),
                            kernel)
    flat = np.arange(x.shape[0]).reshape(-1, *[1] * (nd + 1))
    for i in range(nd):
        start = (np.arange(out[i]) * strides[i] - begin[i]).reshape([-1 if j == i else 1 for j in range(nd)] + [1])
        flat = flat * in_shape[i] + start + taps[i]
    flat = flat * x.shape[-1] + np.arange(x.shape[-1])
    dx = np.bincount(flat.ravel(), weights=g.ravel(), minlength=x.size).reshape(x.shape)
    if relu:
        dx = np.where(x > 0, dx, 0)
    return _from_last(dx, data_format).astype(orig_input.dtype, copy=False)


def _window_counts(in_shape, out, kernel, strides, begin) -> np.ndarray:
    """How many unpadded elements each window ``(*out)`` covers."""
    counts = np.ones((), dtype=np.int64)
    for i, o, k, s, b in zip(in_shape, out, kernel, strides, begin, strict=True):
        start = np.arange(o) * s - b
        counts = np.multiply.outer(counts, np.minimum(start + k, i) - np.maximum(start, 0))
    return counts


@op("AvgPoolGrad", domain=DOMAIN)
def avg_pool_grad(orig_input_shape, grad, *, ksize=(), strides=(), padding="VALID", data_format="NHWC"):
    """AvgPoolGrad / AvgPool3DGrad: each window's gradient spread evenly over its unpadded elements."""
    dt = compute_dtype(grad.dtype)
    shape = [int(s) for s in orig_input_shape]
    in_last = shape if _last(data_format) else [shape[0], *shape[2:], shape[1]]
    g = _to_last(grad.astype(dt, copy=False), data_format)
    kernel, strides, begin = _pool_geometry(in_last, g, ksize, strides, padding, (), data_format)
    counts = _window_counts(in_last[1:-1], g.shape[1:-1], kernel, strides, begin)
    share = g / counts[..., None].astype(dt)
    cols = np.broadcast_to(share.reshape(*share.shape, *[1] * len(kernel)), (*share.shape, *kernel))
    dx = _col2im(cols, in_last[1:-1], kernel, strides, [1] * len(kernel), begin)
    return _from_last(dx, data_format).astype(grad.dtype, copy=False)


# --- space to batch (how TF dilates depthwise convolutions) ---------------------------------------------

@op("SpaceToBatchND", domain=DOMAIN)
def space_to_batch_nd(input, block_shape, paddings):
    """Pad the M spatial axes after the batch, then move each ``block_shape`` phase into the batch."""
    blocks = [int(b) for b in block_shape]
    m = len(blocks)
    widths = [(0, 0), *(tuple(int(p) for p in pair) for pair in np.reshape(paddings, (m, 2)))]
    x = np.pad(input, widths + [(0, 0)] * (input.ndim - 1 - m))
    n, spatial, rest = x.shape[0], x.shape[1:1 + m], x.shape[1 + m:]
    split = x.reshape(n, *(v for s, b in zip(spatial, blocks) for v in (s // b, b)), *rest)
    perm = [*range(2, 2 * m + 1, 2), 0, *range(1, 2 * m, 2), *range(2 * m + 1, split.ndim)]
    return np.ascontiguousarray(split.transpose(perm)).reshape(-1, *(s // b for s, b in zip(spatial, blocks)), *rest)


@op("BatchToSpaceND", domain=DOMAIN)
def batch_to_space_nd(input, block_shape, crops):
    """The inverse of :func:`space_to_batch_nd`: batch phases back into the spatial axes, then crop."""
    blocks = [int(b) for b in block_shape]
    m = len(blocks)
    n, spatial, rest = input.shape[0] // math.prod(blocks), input.shape[1:1 + m], input.shape[1 + m:]
    split = input.reshape(*blocks, n, *spatial, *rest)
    perm = [m, *(a for i in range(m) for a in (m + 1 + i, i)), *range(2 * m + 1, split.ndim)]
    y = split.transpose(perm).reshape(n, *(s * b for s, b in zip(spatial, blocks)), *rest)
    bounds = np.reshape(crops, (m, 2)).astype(np.int64)
    index = (slice(None), *(slice(int(lo), y.shape[1 + i] - int(hi)) for i, (lo, hi) in enumerate(bounds)))
    return np.ascontiguousarray(y[index])


# --- fused batch normalization -----------------------------------------------------------------------

def _channel_stats(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """Mean and biased variance per (last-axis) channel, and the number of elements per channel."""
    axes = tuple(range(x.ndim - 1))
    mean = x.mean(axis=axes)
    return mean, np.square(x - mean).mean(axis=axes), x.size // max(x.shape[-1], 1)


@op("FusedBatchNorm", domain=DOMAIN)
def fused_batch_norm(x, scale, offset, mean, variance, *, epsilon=1e-4, exponential_avg_factor=1.0,
                     data_format="NHWC", is_training=1, n_outputs=6):
    """FusedBatchNorm(V2, V3): y, the batch (or running-updated) mean and variance, and reserve spaces.

    Training normalizes with the batch's biased variance and reports the unbiased one, blended into the
    given running statistics when ``exponential_avg_factor`` is not 1; inference uses ``mean``/``variance``.
    The reserve spaces hold the mean and variance used, for :func:`fused_batch_norm_grad`.
    """
    u = np.promote_types(scale.dtype, np.float32)
    xl = _to_last(x.astype(u, copy=False), data_format)
    if is_training:
        used_mean, used_var, count = _channel_stats(xl)
        unbiased = used_var * (count / max(count - 1, 1))
        f = exponential_avg_factor
        out_mean = used_mean if f == 1 else (1 - f) * mean.astype(u) + f * used_mean
        out_var = unbiased if f == 1 else (1 - f) * variance.astype(u) + f * unbiased
    else:
        used_mean, used_var = mean.astype(u, copy=False), variance.astype(u, copy=False)
        out_mean, out_var = used_mean, used_var
    mul = scale.astype(u, copy=False) / np.sqrt(used_var + u.type(epsilon))
    y = (xl - used_mean) * mul + offset.astype(u, copy=False)
    stats = tuple(s.astype(u, copy=False) for s in (out_mean, out_var, used_mean, used_var))
    outs = (_from_last(y, data_format).astype(x.dtype, copy=False), *stats, np.zeros(0, u))
    return outs[:n_outputs]


@op("FusedBatchNormGrad", domain=DOMAIN)
def fused_batch_norm_grad(y_backprop, x, scale, reserve_space_1, reserve_space_2, reserve_space_3=None, *,
                          epsilon=1e-4, data_format="NHWC", is_training=1, n_outputs=5):
    """FusedBatchNormGrad(V2, V3): gradients w.r.t. x, scale and offset (and two empty reserve spaces).

    ``reserve_space_1``/``_2`` are the mean and variance the forward normalized with.
    """
    u = np.promote_types(scale.dtype, np.float32)
    dy = _to_last(y_backprop.astype(u, copy=False), data_format)
    xl = _to_last(x.astype(u, copy=False), data_format)
    axes = tuple(range(xl.ndim - 1))
    rstd = 1 / np.sqrt(reserve_space_2.astype(u, copy=False) + u.type(epsilon))
    xhat = (xl - reserve_space_1.astype(u, copy=False)) * rstd
    d_offset = dy.sum(axis=axes)
    d_scale = (dy * xhat).sum(axis=axes)
    mul = scale.astype(u, copy=False) * rstd
    if is_training:
        count = xl.size // max(xl.shape[-1], 1)
        dx = mul * (dy - d_offset / count - xhat * (d_scale / count))
    else:
        dx = dy * mul
    empty = np.zeros(0, u)
    outs = (_from_last(dx, data_format).astype(x.dtype, copy=False), d_scale, d_offset, empty, empty)
    return outs[:n_outputs]
