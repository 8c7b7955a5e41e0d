"""Direct depthwise (one channel a group) 2-D convolution of channels-last float32 images, in Numba.

The inner loops run over the channels (contiguous), vectorised; 3x3 windows inside the image are computed
2-4 outputs at a time (sharing their inputs), the border ones tap by tap; the residual and activation are
applied over each finished output row. :mod:`opencann.ops.cpu_conv` calls it for depthwise convs (NCHW ones
transposed around it) and :mod:`opencann.ops.cpu_inverted_residual` inside its MobileNet blocks.
"""
from __future__ import annotations

import numba

from opencann.ops.cpu_conv_base import activate, col_range


@numba.njit(cache=True, error_model="numpy", boundscheck=False)
def _depthwise_taps(x, w, bias, y, oh, ow, ih0, iw0, dh, dw):
    """``y[oh, ow] = bias +`` every in-bounds kernel tap of the window at ``(ih0, iw0)`` (plain indexing: no views,
    whose reference counts cost more than a pixel's sums)."""
    h, wd, c = x.shape
    for k in range(c):
        y[oh, ow, k] = bias[k]
    for i in range(w.shape[0]):
        ih = ih0 + i * dh
        if ih < 0 or ih >= h:
            continue
        for j in range(w.shape[1]):
            iw = iw0 + j * dw
            if iw < 0 or iw >= wd:
                continue
            for k in range(c):
                y[oh, ow, k] += w[i, j, k] * x[ih, iw, k]


@numba.njit(inline="always")
def _window3(x, ih, iw, k, v, s):
    """``s +`` the 3x3 window at ``(ih, iw)`` of channel ``k`` times the nine weights ``v``, as one chain of
    multiply-adds."""
    s = s + v[0] * x[ih, iw, k] + v[1] * x[ih, iw + 1, k] + v[2] * x[ih, iw + 2, k]
    s = s + v[3] * x[ih + 1, iw, k] + v[4] * x[ih + 1, iw + 1, k] + v[5] * x[ih + 1, iw + 2, k]
    return s + v[6] * x[ih + 2, iw, k] + v[7] * x[ih + 2, iw + 1, k] + v[8] * x[ih + 2, iw + 2, k]


@numba.njit(inline="always")
def _group(sw):
    """How many outputs of column stride ``sw`` :func:`_depthwise3_row` computes at once (the most that LLVM still
    vectorises over the channels)."""
    return 4 if sw == 1 else 3 if sw == 2 else 2


@numba.njit(cache=True, fastmath={"contract"}, error_model="numpy", boundscheck=False)
def _depthwise3_row(x, w, bias, y, oh, ih, ow0, ow1, sw, pw):
    """``y[oh, ow0:ow1] = bias +`` the 3x3 depthwise windows of input rows ``ih..ih+2`` (all inside the image),
    ``ow1 - ow0`` a multiple of :func:`_group`: each channel's nine weights are loaded once for that many outputs,
    which share their inputs at strides 1 and 2. Plain indexing (no views: their reference counts cost
    more than the sums) and few distinct arrays keep the channel loops vectorised."""
    for ow in range(ow0, ow1, _group(sw)):
        i0 = ow * sw - pw
        if sw == 1:
            for k in range(x.shape[2]):
                v = (w[0, 0, k], w[0, 1, k], w[0, 2, k], w[1, 0, k], w[1, 1, k], w[1, 2, k], w[2, 0, k], w[2, 1, k],
                     w[2, 2, k])
                bk = bias[k]
                s0, s1 = _window3(x, ih, i0, k, v, bk), _window3(x, ih, i0 + 1, k, v, bk)
                s2, s3 = _window3(x, ih, i0 + 2, k, v, bk), _window3(x, ih, i0 + 3, k, v, bk)
                y[oh, ow, k], y[oh, ow + 1, k], y[oh, ow + 2, k], y[oh, ow + 3, k] = s0, s1, s2, s3
        elif sw == 2:
            for k in range(x.shape[2]):
                v = (w[0, 0, k], w[0, 1, k], w[0, 2, k], w[1, 0, k], w[1, 1, k], w[1, 2, k], w[2, 0, k], w[2, 1, k],
                     w[2, 2, k])
                bk = bias[k]
                s0, s1 = _window3(x, ih, i0, k, v, bk), _window3(x, ih, i0 + 2, k, v, bk)
                s2 = _window3(x, ih, i0 + 4, k, v, bk)
                y[oh, ow, k], y[oh, ow + 1, k], y[oh, ow + 2, k] = s0, s1, s2
        else:
            i1 = i0 + sw
            for k in range(x.shape[2]):
                v = (w[0, 0, k], w[0, 1, k], w[0, 2, k], w[1, 0, k], w[1, 1, k], w[1, 2, k], w[2, 0, k], w[2, 1, k],
                     w[2, 2, k])
                bk = bias[k]
                y[oh, ow, k], y[oh, ow + 1, k] = _window3(x, ih, i0, k, v, bk), _window3(x, ih, i1, k, v, bk)


@numba.njit(cache=True)
def depthwise_nhwc(x, w, bias, y, res, has_res, sh, sw, dh, dw, ph, pw, code, a, b):
    """Direct depthwise conv of one channels-last image: ``x (H, W, C)``, ``w (kh, kw, C)`` -> ``y (ho, wo, C)``.

    The inner loops run over the channels (contiguous), whatever the stride; inside the image, undilated 3x3
    windows go through :func:`_depthwise3_row` in groups of outputs, the others tap by tap. The residual and
    the activation are added over each output row once it is done.
    """
    h, wd, c = x.shape
    ho, wo = y.shape[0], y.shape[1]
    three = w.shape[0] == 3 and w.shape[1] == 3 and dh == 1 and dw == 1
    lo, hi = col_range(wo, -pw, sw, wd - 2)  # outputs whose windows' columns lie inside the image
    group = _group(sw)
    for oh in range(ho):
        ih = oh * sh - ph
        inner = lo + (hi - lo) // group * group if three and ih >= 0 and ih + 2 < h else lo
        _depthwise3_row(x, w, bias, y, oh, ih, lo, inner, sw, pw)
        for ow in range(wo):
            if ow < lo or ow >= inner:
                _depthwise_taps(x, w, bias, y, oh, ow, ih, ow * sw - pw, dh, dw)
        row = y[oh].reshape(wo * c)
        if has_res:
            r = res[oh].reshape(wo * c)
            for k in range(wo * c):
                row[k] += r[k]
        activate(row, code, a, b)
