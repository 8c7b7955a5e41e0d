"""Direct depthwise (one channel a group) 2-D convolution of channels-last float32 images, in Numba.

Undilated 3x3 windows at column stride 1 or 2 inside the image (with at least 8 channels) run explicit 16- (or
8-) channel vector code (:func:`_run3`): the nine weights of a channel block stay in registers while four
outputs at a time walk along the output row, each input vector loaded once for the four, the bias and a Relu or
Clip applied before the store (LLVM's own vectorisation of the channel loops used 256-bit vectors and scalar
remainders: MobileNetV2's depthwise layers now take 0.65-0.85x the time, its batch-1 run ~0.95x). The remaining
outputs (borders, other kernels) are computed tap by tap over the channels; the residual and other activations are
applied over each finished output row.
:mod:`opencann.ops.cpu_conv` calls it for depthwise convs (NCHW ones transposed around it) and
:mod:`opencann.ops.cpu_inverted_residual` inside its MobileNet blocks.
"""
from __future__ import annotations

import numba
import numpy as np
from llvmlite import ir as llir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

from opencann.ops.cpu_conv_base import act, activate, col_range
from opencann.ops.llvm_vector import dense_f32, fma_of, splat

GROUP = 4  # outputs :func:`_run3` computes at once


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


def _run3(stride: int, lanes: int):
    """An intrinsic ``run(x, xo, xr, y, yo, n, w, k, bias, lo, hi)``: ``n`` consecutive outputs, channels
    ``k..k+lanes``, of a 3x3 depthwise conv at column stride ``stride`` over flat channels-last arrays with
    ``C = w.size // 9`` channels: output ``o`` at ``y[yo + o*C]`` reads the window at ``x[xo + o*stride*C]``,
    rows ``xr`` apart, and is ``bias +`` its sums clipped to ``[lo, hi]`` (NaN stays NaN)."""
    cols = (GROUP - 1) * stride + 3

    @intrinsic
    def run(typingctx, x, xo, xr, y, yo, n, w, k, bias, lo, hi):
        if not dense_f32(x, y, w, bias):
            return None
        ip, f32 = types.intp, types.float32
        sig = types.void(x, ip, ip, y, ip, ip, w, ip, bias, f32, f32)

        def codegen(context, builder, signature, args):
            xo_, xr_, yo_, n_, k_, lo_, hi_ = (args[i] for i in (1, 2, 4, 5, 7, 9, 10))
            xp, yp, wp, bp = (context.make_array(signature.args[i])(context, builder, args[i]).data
                              for i in (0, 3, 6, 8))
            vec = llir.VectorType(llir.FloatType(), lanes)
            fma = fma_of(builder.module, vec)

            def const(v):
                return llir.Constant(xo_.type, v)
            c = builder.sdiv(context.make_array(signature.args[6])(context, builder, args[6]).nitems, const(9))

            def at(ptr, off):
                return builder.bitcast(builder.gep(ptr, [off]), vec.as_pointer())
            taps = [builder.load(at(wp, builder.add(k_, builder.mul(c, const(t)))), align=4) for t in range(9)]
            b = builder.load(at(bp, k_), align=4)
            low, high = splat(builder, lo_, vec), splat(builder, hi_, vec)

            def outputs(o, group):
                xb = builder.add(builder.add(xo_, k_), builder.mul(o, builder.mul(c, const(stride))))
                acc = [b] * group
                for i in range(3):
                    row = builder.add(xb, builder.mul(xr_, const(i)))
                    for col in range(cols if group > 1 else 3):
                        v = builder.load(at(xp, builder.add(row, builder.mul(c, const(col)))), align=4)
                        for g in range(group):
                            j = col - g * stride
                            if 0 <= j < 3:
                                acc[g] = builder.call(fma, [taps[i * 3 + j], v, acc[g]])
                for g in range(group):
                    s = builder.select(builder.fcmp_ordered("<", acc[g], low), low, acc[g])
                    s = builder.select(builder.fcmp_ordered(">", s, high), high, s)
                    off = builder.add(builder.add(yo_, k_), builder.mul(builder.add(o, const(g)), c))
                    builder.store(s, at(yp, off), align=4)
            groups = builder.sdiv(n_, const(GROUP))
            with cgutils.for_range(builder, groups) as loop:
                outputs(builder.mul(loop.index, const(GROUP)), GROUP)
            with cgutils.for_range(builder, builder.sub(n_, builder.mul(groups, const(GROUP)))) as loop:
                outputs(builder.add(builder.mul(groups, const(GROUP)), loop.index), 1)
            return context.get_dummy_value()
        return sig, codegen
    return run


_RUN1_16, _RUN2_16, _RUN1_8, _RUN2_8 = _run3(1, 16), _run3(2, 16), _run3(1, 8), _run3(2, 8)


@numba.njit(cache=True, error_model="numpy", boundscheck=False)
def _row3(xs, xo, xr, ys, yo, n, ws, bias, sw, lo, hi):
    """``n`` outputs of a 3x3 window row over all channels by :func:`_run3`, 16 (else 8) at a time; the last
    block overlaps the one before where the channels are not a multiple of the block."""
    c = bias.shape[0]
    lanes = 16 if c >= 16 else 8
    for k0 in range(0, c, lanes):
        k = min(k0, c - lanes)
        if lanes == 16 and sw == 1:
            _RUN1_16(xs, xo, xr, ys, yo, n, ws, k, bias, lo, hi)
        elif lanes == 16:
            _RUN2_16(xs, xo, xr, ys, yo, n, ws, k, bias, lo, hi)
        elif sw == 1:
            _RUN1_8(xs, xo, xr, ys, yo, n, ws, k, bias, lo, hi)
        else:
            _RUN2_8(xs, xo, xr, ys, yo, n, ws, k, bias, lo, hi)


@numba.njit(cache=True)
def depthwise_nhwc(x, w, bias, y, res, has_res, sh, sw, dh, dw, ph, pw, code, a, b):
    """Direct depthwise conv of one channels-last image: ``x (H, W, C)``, ``w (kh, kw, C)`` -> ``y (ho, wo, C)``.

    Undilated 3x3 windows inside the image at column stride 1 or 2 (8 channels or more) go through
    :func:`_row3`, the others tap by tap. A Relu or Clip without residual is applied as each output is stored;
    else the residual and the activation are added over each output row once it is done.
    """
    h, wd, c = x.shape
    ho, wo = y.shape[0], y.shape[1]
    three = w.shape[0] == 3 and w.shape[1] == 3 and dh == 1 and dw == 1 and (sw == 1 or sw == 2) and c >= 8
    fused = not has_res and code <= 2
    lo = a if code == 2 else np.float32(0) if code == 1 else np.float32(-np.inf)
    hi = b if code == 2 else np.float32(np.inf)
    if not fused:
        lo, hi = np.float32(-np.inf), np.float32(np.inf)
    lo_c, hi_c = col_range(wo, -pw, sw, wd - 2)  # outputs whose windows' columns lie inside the image
    xs, ys, ws = x.reshape(x.size), y.reshape(y.size), w.reshape(w.size)
    for oh in range(ho):
        ih = oh * sh - ph
        inner = three and ih >= 0 and ih + 2 < h and lo_c < hi_c
        if inner:
            _row3(xs, (ih * wd + lo_c * sw - pw) * c, wd * c, ys, (oh * wo + lo_c) * c, hi_c - lo_c, ws, bias, sw,
                  lo, hi)
        for ow in range(wo):
            if not inner or ow < lo_c or ow >= hi_c:
                _depthwise_taps(x, w, bias, y, oh, ow, ih, ow * sw - pw, dh, dw)
                if fused:
                    for k in range(c):
                        y[oh, ow, k] = act(y[oh, ow, k], code, a, b)
        if not fused:
            row = y[oh].reshape(wo * c)
            if has_res:
                r = res[oh].reshape(wo * c)
                for k in range(wo * c):
                    row[k] += r[k]
            activate(row, code, a, b)
