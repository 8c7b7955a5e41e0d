"""Fast CPU kernels for 2-D convolutions and pooling, and the fused ``opencann::FusedConv``.

float32 2-D convolutions are GEMMs through BLAS, in either layout. NCHW (the ``Conv`` kernel): a 1x1
stride-1 unpadded conv is ``W[M, C] @ X[C, H*W]`` on the input itself; other kernels first gather the
windows of a tile of output rows into a reused per-thread im2col buffer that stays in the L2 cache (a Numba
loop, rows ordered ``(c, kh, kw)`` like the weights, so each group is a row block) and multiply ``W[M,
C*kh*kw] @ cols`` straight into those output columns. Channels-last (``FusedConv`` with ``channels_last``,
weights ``(kh, kw, C, M)``): ``cols[P, kh*kw*C] @ W[kh*kw*C, M]``, the im2col copying whole channel vectors
per tap, in tiles of output rows, or of several whole images when small ones fit a tile (fewer, taller
GEMMs); 1x1 convs multiply the batch's pixels directly, in output tiles. Depthwise convs (one channel a
group) are a direct channels-last Numba loop, vectorised over channels (NCHW ones are transposed around
it). Bias, a residual input and the activation are applied in one pass over each output tile while it is
in cache. MaxPool (without indices) and AveragePool are direct Numba loops too. Other dtypes, ranks and
attributes fall back to the reference kernels of :mod:`opencann.ops.conv` and :mod:`opencann.ops.pool`,
which stay the oracle. The Numba kernels are serial (one thread; BLAS threads are the BLAS setting).

``FusedConv`` is ``activation(conv(X, W, B) + Z)`` with an optional residual ``Z`` (the fuse_conv pass
builds it from Conv, Add and activation nodes). ``activation`` is "" (none), Relu, Clip (``alpha``/``beta``
are min/max), LeakyRelu (``alpha``), Sigmoid, HardSigmoid (``alpha``, ``beta``) or HardSwish.
"""
from __future__ import annotations

import threading

import numba
import numpy as np

from opencann.compiler.ir import Node, TensorType, Value
from opencann.errors import AclError, ErrorCode
from opencann.ops import activation as act_ops
from opencann.ops import conv as ref_conv
from opencann.ops import pool as ref_pool
from opencann.ops.blas import sgemm
from opencann.ops.cpu_elementwise import output_buffer
from opencann.ops.elementwise import clip as ref_clip
from opencann.ops.registry import kernel, op

F32 = np.dtype(np.float32)
ACTIVATIONS = {"": 0, "Relu": 1, "Clip": 2, "LeakyRelu": 3, "Sigmoid": 4, "HardSigmoid": 5, "HardSwish": 6}
TILE_ELEMENTS = 1 << 19  # largest im2col tile (2 MiB of float32): bigger ones are split to stay in the L2 cache
OUT_TILE_ELEMENTS = 1 << 18  # a 1x1 conv's output tile (1 MiB), finished by the epilogue while in the L2 cache
_scratch = threading.local()


def _buffer(size: int) -> np.ndarray:
    """This thread's reusable float32 scratch of at least ``size`` elements (page faults cost more than GEMMs)."""
    buf = getattr(_scratch, "buf", None)
    if buf is None or buf.size < size:
        buf = _scratch.buf = np.empty(max(size, 1), dtype=F32)
    return buf[:size]


# --- Numba kernels --------------------------------------------------------------------------------

@numba.njit(cache=True)
def _activate(row, code, a, b):
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


@numba.njit(cache=True)
def _epilogue(y, bias, res, has_res, per_row, code, a, b):
    """``act(y + bias + res)`` over a C-contiguous 2-D output tile, in place: ``bias`` runs along rows (NCHW
    ``(M, P)``) when ``per_row``, along columns (NHWC ``(P, M)``) otherwise. The activation sweeps the tile
    as one flat row (short NHWC rows would cost a call each)."""
    for m in range(y.shape[0]):
        row = y[m]
        n = row.shape[0]
        if per_row:
            bm = bias[m]
            if has_res:
                r = res[m]
                for i in range(n):
                    row[i] += bm + r[i]
            else:
                for i in range(n):
                    row[i] += bm
        elif has_res:
            r = res[m]
            for i in range(n):
                row[i] += bias[i] + r[i]
        else:
            for i in range(n):
                row[i] += bias[i]
    _activate(y.reshape(y.size), code, a, b)


@numba.njit(cache=True)
def _col_range(out, start, step, size):
    """The output positions ``o`` whose input ``start + o * step`` lies in ``[0, size)``: ``[lo, hi)``."""
    lo = 0 if start >= 0 else (-start + step - 1) // step
    hi = 0 if size - 1 - start < 0 else (size - 1 - start) // step + 1
    return min(lo, out), max(min(hi, out), min(lo, out))


@numba.njit(cache=True)
def _im2col_nchw(x, cols, kh, kw, sh, sw, dh, dw, ph, pw, oh0, oh1, wo):
    """Windows of output rows ``[oh0, oh1)`` of one image ``x (C, H, W)`` into ``cols (C*kh*kw, (oh1 - oh0)*wo)``,
    zeros for padding.

    Loops index views from 0 (no slice assignment, no negative-index checks), so LLVM vectorises them.
    """
    c_in, h, w = x.shape
    for c in range(c_in):
        for i in range(kh):
            for j in range(kw):
                dst = cols[(c * kh + i) * kw + j]
                off = j * dw - pw
                lo, hi = _col_range(wo, off, sw, w)
                for oh in range(oh0, oh1):
                    ih = oh * sh - ph + i * dh
                    d = dst[(oh - oh0) * wo:(oh - oh0 + 1) * wo]
                    if ih < 0 or ih >= h or hi == lo:
                        for k in range(wo):
                            d[k] = 0
                        continue
                    for k in range(lo):
                        d[k] = 0
                    for k in range(hi, wo):
                        d[k] = 0
                    inside = d[lo:hi]
                    src = x[c, ih, lo * sw + off:]
                    if sw == 1:
                        for k in range(hi - lo):
                            inside[k] = src[k]
                    else:
                        for k in range(hi - lo):
                            inside[k] = src[k * sw]


@numba.njit(cache=True)
def _im2col_nhwc(x, cols, kh, kw, sh, sw, dh, dw, ph, pw, oh0, oh1, wo):
    """Windows of output rows ``[oh0, oh1)`` of one channels-last image ``x (H, W, C)`` into
    ``cols ((oh1 - oh0) * wo, kh*kw*C)``, zeros for padding."""
    h, w, c = x.shape
    for oh in range(oh0, oh1):
        for ow in range(wo):
            row = cols[(oh - oh0) * wo + ow]
            for i in range(kh):
                ih = oh * sh - ph + i * dh
                for j in range(kw):
                    iw = ow * sw - pw + j * dw
                    d = row[(i * kw + j) * c:(i * kw + j + 1) * c]
                    if ih < 0 or ih >= h or iw < 0 or iw >= w:
                        for k in range(c):
                            d[k] = 0
                    else:
                        src = x[ih, iw]
                        for k in range(c):
                            d[k] = src[k]


@numba.njit(cache=True)
def _depthwise_taps(x, w, acc, ih0, iw0, dh, dw):
    """Add every in-bounds kernel tap of the window at ``(ih0, iw0)`` into ``acc`` (a pixel's channels)."""
    h, wd, c = x.shape
    for i in range(w.shape[0]):
        ih = ih0 + i * dh
        if ih < 0 or ih >= h:
            continue
        for j in range(w.shape[1]):
            iw = iw0 + j * dw
            if iw < 0 or iw >= wd:
                continue
            src, wv = x[ih, iw], w[i, j]
            for k in range(c):
                acc[k] += wv[k] * src[k]


@numba.njit(cache=True)
def _depthwise_nhwc(x, w, bias, y, res, has_res, sh, sw, dh, dw, ph, pw, code, a, b):
    """Direct depthwise conv of one channels-last image: ``x (H, W, C)``, ``w (kh, kw, C)`` -> ``y (ho, wo, C)``.

    The inner loops run over the channels (contiguous), whatever the stride; inside the image a 3x3
    window is one sum of nine products per channel (kept in a register); the epilogue is fused.
    """
    h, wd, c = x.shape
    kh, kw = w.shape[0], w.shape[1]
    ho, wo = y.shape[0], y.shape[1]
    three = kh == 3 and kw == 3 and dh == 1 and dw == 1
    for oh in range(ho):
        ih = oh * sh - ph
        for ow in range(wo):
            iw = ow * sw - pw
            acc = y[oh, ow]
            if three and ih >= 0 and ih + 2 < h and iw >= 0 and iw + 2 < wd:
                r0, r1, r2 = x[ih], x[ih + 1], x[ih + 2]
                x0, x1, x2, x3, x4, x5 = r0[iw], r0[iw + 1], r0[iw + 2], r1[iw], r1[iw + 1], r1[iw + 2]
                x6, x7, x8 = r2[iw], r2[iw + 1], r2[iw + 2]
                w0, w1, w2, w3, w4, w5 = w[0, 0], w[0, 1], w[0, 2], w[1, 0], w[1, 1], w[1, 2]
                w6, w7, w8 = w[2, 0], w[2, 1], w[2, 2]
                for k in range(c):
                    acc[k] = (bias[k] + w0[k] * x0[k] + w1[k] * x1[k] + w2[k] * x2[k] + w3[k] * x3[k]
                              + w4[k] * x4[k] + w5[k] * x5[k] + w6[k] * x6[k] + w7[k] * x7[k] + w8[k] * x8[k])
            else:
                for k in range(c):
                    acc[k] = bias[k]
                _depthwise_taps(x, w, acc, ih, iw, dh, dw)
            if has_res:
                r = res[oh, ow]
                for k in range(c):
                    acc[k] += r[k]
            _activate(acc, code, a, b)


@numba.njit(cache=True)
def _transpose(src, dst):
    """``dst = src.T`` for 2-D arrays, in 32x32 tiles (NumPy's copy of an NHWC -> NCHW view is cache-hostile)."""
    rows, cols = src.shape
    for i0 in range(0, rows, 32):
        i1 = min(i0 + 32, rows)
        for j0 in range(0, cols, 32):
            for j in range(j0, min(j0 + 32, cols)):
                d = dst[j]
                for i in range(i0, i1):
                    d[i] = src[i, j]


@numba.njit(cache=True)
def _taps_inside(pos, step, taps, dil, pad, limit):
    """How many of ``taps`` kernel taps of output ``pos`` fall in ``[-pad, limit)`` with pad, else ``[0, limit)``."""
    count = 0
    for t in range(taps):
        p = pos * step - pad + t * dil
        if p >= 0 and p < limit:
            count += 1
    return count


@numba.njit(cache=True)
def _pool(x, y, kh, kw, sh, sw, dh, dw, ph, pw, is_max, lim_h, lim_w, include_pad):
    """Max or average pooling of ``x (N*C, H, W)`` into ``y (N*C, ho, wo)``.

    Averages divide by the taps inside the input, or with ``include_pad`` inside the explicitly padded
    extent ``[-ph, lim)`` (without ceil_mode's extra end padding). Maxima are selects, not branches; with
    a column stride each channel is first split into its column phases, so that every tap reads contiguously.
    """
    nc, h, w = x.shape
    ho, wo = y.shape[1], y.shape[2]
    shift_h, shift_w = (ph, pw) if include_pad else (0, 0)
    count_w = np.empty(wo, np.float32)
    for ow in range(wo):
        count_w[ow] = _taps_inside(ow, sw, kw, dw, pw - shift_w, (lim_w if include_pad else w) + shift_w)
    phases = np.empty((sw, h, (w + sw - 1) // sw), np.float32)
    for c in range(nc):
        if sw > 1:
            _split_phases(x[c], phases)
        for oh in range(ho):
            row = y[c, oh]
            for k in range(wo):
                row[k] = -np.inf if is_max else 0
            for i in range(kh):
                ih = oh * sh - ph + i * dh
                if ih < 0 or ih >= h:
                    continue
                for j in range(kw):
                    off = j * dw - pw
                    lo, hi = _col_range(wo, off, sw, w)
                    if hi == lo:
                        continue
                    r = off % sw
                    dst, s = row[lo:hi], phases[r, ih, lo + (off - r) // sw:] if sw > 1 else x[c, ih, lo + off:]
                    if is_max:
                        for k in range(hi - lo):
                            v, m = s[k], dst[k]
                            dst[k] = v if (v > m or v != v) else m
                    else:
                        for k in range(hi - lo):
                            dst[k] += s[k]
            if not is_max:
                count_h = _taps_inside(oh, sh, kh, dh, ph - shift_h, (lim_h if include_pad else h) + shift_h)
                for ow in range(wo):
                    row[ow] = row[ow] / (count_h * count_w[ow])


@numba.njit(cache=True)
def _split_phases(plane, phases):
    """``phases[r, i, q] = plane[i, q * s + r]`` for stride ``s = len(phases)``: strided taps become contiguous."""
    s = phases.shape[0]
    h, w = plane.shape
    for r in range(s):
        for i in range(h):
            dst, src = phases[r, i], plane[i, r:]
            for q in range((w - r + s - 1) // s):
                dst[q] = src[q * s]


# --- convolution ----------------------------------------------------------------------------------

def _geometry(spatial, kernel, auto_pad, dilations, pads, strides):
    """``(strides, dilations, begin pads, output size)`` of a 2-D conv, or None when the fast path does not apply."""
    strides, dilations = list(strides or [1, 1]), list(dilations or [1, 1])
    begin, end = ref_conv.conv_pads(auto_pad, pads, spatial, kernel, strides, dilations)
    out = [(size + b + e - (k - 1) * d - 1) // s + 1
           for size, k, s, d, b, e in zip(spatial, kernel, strides, dilations, begin, end, strict=True)]
    if min(out) <= 0 or min(begin) < 0 or min(end) < 0:
        return None
    return strides, dilations, begin, out


def _check_groups(c, m, cg, group):
    if c != cg * group or m % group:
        raise AclError(ErrorCode.INVALID_PARAM, f"conv: {c} input channels, {m} output channels, weight channels "
                       f"{cg}, group {group} do not match")


def _prepare(b, z, m, shape, out=None):
    """Bias (zeros when absent), the output and the residual (the output itself when absent) of a fast conv."""
    bias = np.zeros(m, F32) if b is None else np.ascontiguousarray(b, dtype=F32).reshape(m)
    y = output_buffer(out, shape)
    res = y if z is None else np.ascontiguousarray(np.broadcast_to(z, shape), dtype=F32)
    return bias, y, res


def _to_nchw(y: np.ndarray, dest=None) -> np.ndarray:
    """A C-contiguous NCHW copy of the float32 NHWC ``y`` (into ``dest`` when it fits)."""
    n, h, w, c = y.shape
    out = output_buffer(dest, (n, c, h, w))
    for i in range(n):
        _transpose(y[i].reshape(h * w, c), out[i].reshape(c, h * w))
    return out


def _nchw_array(x: np.ndarray) -> np.ndarray:
    """``x`` C-contiguous; an NCHW view of NHWC data (a channels-last chain's output) by the tiled transpose."""
    if x.flags.c_contiguous or x.ndim != 4 or not x.transpose(0, 2, 3, 1).flags.c_contiguous or x.dtype != F32:
        return np.ascontiguousarray(x)
    return _to_nchw(x.transpose(0, 2, 3, 1))


def _fast_nchw(x, w, b, z, geom, group, code, a, bb, out=None):
    """The float32 NCHW conv with its epilogue: depthwise through the channels-last kernel, else GEMMs."""
    (sh, sw), (dh, dw), (ph, pw), (ho, wo) = geom
    n, c = x.shape[:2]
    m, cg, kh, kw = w.shape
    _check_groups(c, m, cg, group)
    if cg == 1 and m == group:
        zl = None if z is None else np.broadcast_to(z, (n, m, ho, wo)).transpose(0, 2, 3, 1)
        wl = w.reshape(m, kh, kw).transpose(1, 2, 0)[:, :, None, :]
        return _to_nchw(_fast_nhwc(x.transpose(0, 2, 3, 1), wl, b, zl, geom, group, code, a, bb), out)
    bias, y, res = _prepare(b, z, m, (n, m, ho, wo), out)
    p, k, mg = ho * wo, cg * kh * kw, m // group
    w2 = np.ascontiguousarray(w).reshape(group, mg, k)
    x = _nchw_array(x)
    direct = kh == kw == sh == sw == 1 and ph == pw == 0 and (ho, wo) == x.shape[2:]
    rows = ho if direct else -(-ho // max(1, -(-p * k * group // TILE_ELEMENTS)))  # equal tiles of output rows
    for i in range(n):
        yi = y[i].reshape(m, p)
        for oh0 in range(0, ho, rows):
            p0, p1 = oh0 * wo, min(oh0 + rows, ho) * wo
            if direct:
                src = x[i].reshape(c, p)
            else:
                src = _buffer(c * kh * kw * (p1 - p0)).reshape(c * kh * kw, p1 - p0)
                _im2col_nchw(x[i], src, kh, kw, sh, sw, dh, dw, ph, pw, oh0, oh0 + (p1 - p0) // wo, wo)
            for g in range(group):
                sgemm(w2[g], src[g * k:(g + 1) * k], yi[g * mg:(g + 1) * mg, p0:p1])
        _epilogue(yi, bias, res[i].reshape(m, p), z is not None, True, code, np.float32(a), np.float32(bb))
    return y


def _fast_nhwc(x, w, b, z, geom, group, code, a, bb, out=None):
    """The float32 channels-last conv: ``x (N, H, W, C)``, ``w (kh, kw, C / group, M)`` -> ``(N, ho, wo, M)``."""
    (sh, sw), (dh, dw), (ph, pw), (ho, wo) = geom
    n, h, wd, c = x.shape
    kh, kw, cg, m = w.shape
    _check_groups(c, m, cg, group)
    if group > 1 and not (cg == 1 and m == group):
        zc = None if z is None else np.broadcast_to(z, (n, ho, wo, m)).transpose(0, 3, 1, 2)
        y = _fast_nchw(x.transpose(0, 3, 1, 2), w.transpose(3, 2, 0, 1), b, zc, geom, group, code, a, bb)
        return np.ascontiguousarray(y.transpose(0, 2, 3, 1))
    bias, y, res = _prepare(b, z, m, (n, ho, wo, m), out)
    x = np.ascontiguousarray(x)
    a, bb, has_res = np.float32(a), np.float32(bb), z is not None
    if group > 1:
        wc = np.ascontiguousarray(w).reshape(kh, kw, m)
        for i in range(n):
            _depthwise_nhwc(x[i], wc, bias, y[i], res[i], has_res, sh, sw, dh, dw, ph, pw, code, a, bb)
        return y
    p, k = ho * wo, kh * kw * c
    w2 = np.ascontiguousarray(w).reshape(k, m)
    if kh == kw == sh == sw == 1 and ph == pw == 0 and (ho, wo) == (h, wd):
        step = max(64, OUT_TILE_ELEMENTS // max(m, 1))  # pixels whose outputs stay in cache for the epilogue
        xs, ys, rs = x.reshape(n * p, c), y.reshape(n * p, m), res.reshape(n * p, m)  # the batch's pixels as one
        for p0 in range(0, n * p, step):
            yt = ys[p0:p0 + step]
            sgemm(xs[p0:p0 + step], w2, yt)
            _epilogue(yt, bias, rs[p0:p0 + step], has_res, False, code, a, bb)
        return y
    if p * k <= TILE_ELEMENTS // 2:  # small images: the windows of several images in a tile, one GEMM
        return _nhwc_images(x, w2, bias, y, res, has_res, (kh, kw, sh, sw, dh, dw, ph, pw, ho, wo), code, a, bb)
    rows = -(-ho // max(1, -(-p * k // TILE_ELEMENTS)))  # equal tiles of output rows, each's windows in a tile
    cols = _buffer(rows * wo * k).reshape(rows * wo, k)
    for i in range(n):
        for oh0 in range(0, ho, rows):
            oh1 = min(oh0 + rows, ho)
            tile = cols[:(oh1 - oh0) * wo]
            _im2col_nhwc(x[i], tile, kh, kw, sh, sw, dh, dw, ph, pw, oh0, oh1, wo)
            yt = y[i, oh0:oh1].reshape(-1, m)
            sgemm(tile, w2, yt)
            _epilogue(yt, bias, res[i, oh0:oh1].reshape(-1, m), has_res, False, code, a, bb)
    return y


def _nhwc_images(x, w2, bias, y, res, has_res, geom, code, a, bb):
    """The channels-last im2col conv for images whose windows fit a tile several times: one GEMM per group."""
    kh, kw, sh, sw, dh, dw, ph, pw, ho, wo = geom
    n, (k, m), p = x.shape[0], w2.shape, ho * wo
    per = min(n, max(1, TILE_ELEMENTS // (p * k)))
    cols = _buffer(per * p * k).reshape(per * p, k)
    for i0 in range(0, n, per):
        i1 = min(i0 + per, n)
        for i in range(i0, i1):
            _im2col_nhwc(x[i], cols[(i - i0) * p:(i - i0 + 1) * p], kh, kw, sh, sw, dh, dw, ph, pw, 0, ho, wo)
        tile, yt = cols[:(i1 - i0) * p], y[i0:i1].reshape(-1, m)
        sgemm(tile, w2, yt)
        _epilogue(yt, bias, res[i0:i1].reshape(-1, m), has_res, False, code, a, bb)
    return y


def _is_f32(*arrays) -> bool:
    return all(v is None or v.dtype == F32 for v in arrays)


@kernel("Conv", "cpu")
def conv(x, w, b=None, *, auto_pad="NOTSET", dilations=None, group=1, kernel_shape=None, pads=None, strides=None,
         out=None):
    if x.ndim == 4 and w.ndim == 4 and _is_f32(x, w, b):
        geom = _geometry(x.shape[2:], w.shape[2:], auto_pad, dilations, pads, strides)
        if geom is not None:
            return _fast_nchw(x, w, b, None, geom, group, 0, 0.0, 0.0, None if out is x else out)
    return ref_conv.conv(x, w, b, auto_pad=auto_pad, dilations=dilations, group=group, kernel_shape=kernel_shape,
                         pads=pads, strides=strides)


# --- FusedConv ------------------------------------------------------------------------------------

def _reference_activation(y, activation, alpha, beta):
    if activation == "Relu":
        return act_ops.relu(y)
    if activation == "Clip":
        return ref_clip(y, np.asarray(alpha, y.dtype), np.asarray(beta, y.dtype))
    if activation == "LeakyRelu":
        return act_ops.leaky_relu(y, alpha=alpha)
    if activation == "Sigmoid":
        return act_ops.sigmoid(y)
    if activation == "HardSigmoid":
        return act_ops.hard_sigmoid(y, alpha=alpha, beta=beta)
    if activation == "HardSwish":
        return act_ops.hard_swish(y)
    return y


def _permuted(v: Value | None, perm) -> Value | None:
    if v is None or not isinstance(v.type, TensorType) or v.type.shape is None or len(v.type.shape) != len(perm):
        return v
    return Value(v.name, TensorType(v.type.dtype, tuple(v.type.shape[p] for p in perm)), v.const)


def _infer_fused(node: Node):
    """FusedConv's output type is Conv's (the residual and activation keep it), channels-last when asked."""
    from opencann.compiler.passes.shape_inference import infer_node

    last = node.attrs.get("channels_last", 0)
    x, w = node.inputs[0], node.inputs[1]
    if last:
        x, w = _permuted(x, (0, 3, 1, 2)), _permuted(w, (3, 2, 0, 1))
    attrs = {k: v for k, v in node.attrs.items() if k not in ("activation", "alpha", "beta", "channels_last")}
    probe = Node("Conv", [x, w, *node.inputs[2:3]], [Value(f"{node.name}/probe")], attrs, name=node.name)
    out = infer_node(probe, {"": 17})
    return [_permuted(Value("y", out[0]), (0, 2, 3, 1)).type] if last and out[0] is not None else out


@op("FusedConv", since=1, domain="opencann", infer=_infer_fused)
def fused_conv(x, w, b=None, z=None, *, activation="", alpha=0.0, beta=0.0, channels_last=0, auto_pad="NOTSET",
               dilations=None, group=1, kernel_shape=None, pads=None, strides=None, out=None):
    """``activation(Conv(x, w, b) + z)``: Conv's attributes, an optional residual ``z`` and an activation.

    With ``channels_last`` the data is NHWC (``x``, ``z`` and the result) and ``w`` is ``(kh, kw, C / group, M)``.
    """
    code = ACTIVATIONS.get(activation)
    if code is None:
        raise AclError(ErrorCode.INVALID_PARAM, f"FusedConv: unknown activation '{activation}' "
                       f"(one of {', '.join(repr(k) for k in ACTIVATIONS)})")
    if channels_last and (x.ndim != 4 or w.ndim != 4):
        raise AclError(ErrorCode.INVALID_PARAM, f"FusedConv: channels_last needs 4-D input and weight, got "
                       f"{x.shape} and {w.shape}")
    if x.ndim == 4 and w.ndim == 4 and _is_f32(x, w, b, z):
        spatial, kernel_hw = (x.shape[1:3], w.shape[:2]) if channels_last else (x.shape[2:], w.shape[2:])
        geom = _geometry(spatial, kernel_hw, auto_pad, dilations, pads, strides)
        if geom is not None:
            fast = _fast_nhwc if channels_last else _fast_nchw
            return fast(x, w, b, z, geom, group, code, alpha, beta, None if out is x else out)  # never over x
    if channels_last:
        y = fused_conv(x.transpose(0, 3, 1, 2), w.transpose(3, 2, 0, 1), b, None if z is None else
                       np.moveaxis(z, -1, 1), activation=activation, alpha=alpha, beta=beta, auto_pad=auto_pad,
                       dilations=dilations, group=group, pads=pads, strides=strides)
        return np.ascontiguousarray(y.transpose(0, 2, 3, 1))
    y = ref_conv.conv(x, w, b, auto_pad=auto_pad, dilations=dilations, group=group, kernel_shape=kernel_shape,
                      pads=pads, strides=strides)
    if z is not None:
        y = (y + z).astype(y.dtype, copy=False)
    return _reference_activation(y, activation, alpha, beta)


# --- pooling --------------------------------------------------------------------------------------

def _pool_fast(x, kernel_shape, strides, pads, dilations, auto_pad, ceil_mode, is_max, include_pad):
    """Pooled ``x`` by the Numba loop, or None when the fast path does not apply (rank, dtype, pads)."""
    if x.ndim != 4 or x.dtype != F32 or not kernel_shape or len(kernel_shape) != 2:
        return None
    strides, dilations, begin, end, extra = ref_pool._geometry(x, kernel_shape, strides, pads, dilations, auto_pad,
                                                               ceil_mode)
    if min(begin) < 0 or min(end) < 0:
        return None
    out = [(size + b + e + more - (k - 1) * d - 1) // s + 1 for size, k, s, d, b, e, more in
           zip(x.shape[2:], kernel_shape, strides, dilations, begin, end, extra, strict=True)]
    if min(out) <= 0:
        return None
    n, c, h, w = x.shape
    y = np.empty((n, c, *out), dtype=F32)
    _pool(_nchw_array(x).reshape(n * c, h, w), y.reshape(n * c, *out), *kernel_shape, *strides, *dilations,
          *begin, is_max, h + end[0], w + end[1], bool(include_pad))
    return y


@kernel("MaxPool", "cpu")
def max_pool(x, *, auto_pad="NOTSET", ceil_mode=0, dilations=None, kernel_shape=None, pads=None, storage_order=0,
             strides=None, n_outputs=1):
    y = None if n_outputs > 1 else _pool_fast(x, kernel_shape, strides, pads, dilations, auto_pad, ceil_mode, True,
                                              False)
    if y is None:
        return ref_pool.max_pool(x, auto_pad=auto_pad, ceil_mode=ceil_mode, dilations=dilations,
                                 kernel_shape=kernel_shape, pads=pads, storage_order=storage_order, strides=strides,
                                 n_outputs=n_outputs)
    return y


@kernel("AveragePool", "cpu")
def average_pool(x, *, auto_pad="NOTSET", ceil_mode=0, count_include_pad=0, dilations=None, kernel_shape=None,
                 pads=None, strides=None):
    y = _pool_fast(x, kernel_shape, strides, pads, dilations, auto_pad, ceil_mode, False, count_include_pad)
    if y is None:
        return ref_pool.average_pool(x, auto_pad=auto_pad, ceil_mode=ceil_mode, count_include_pad=count_include_pad,
                                     dilations=dilations, kernel_shape=kernel_shape, pads=pads, strides=strides)
    return y


@kernel("GlobalAveragePool", "cpu")
def global_average_pool(x):
    if x.dtype != F32 or x.ndim < 3:
        return ref_pool.global_average_pool(x)
    if x.ndim == 4 and not x.flags.c_contiguous and x.transpose(0, 2, 3, 1).flags.c_contiguous:  # an NHWC view
        n, c, h, w = x.shape
        return (np.add.reduce(x.transpose(0, 2, 3, 1).reshape(n, h * w, c), axis=1) * np.float32(1 / (h * w))
                ).reshape(n, c, 1, 1)
    flat = np.ascontiguousarray(x).reshape(*x.shape[:2], -1)
    return (np.add.reduce(flat, axis=2) * np.float32(1 / flat.shape[2])).reshape(*x.shape[:2], *[1] * (x.ndim - 2))

