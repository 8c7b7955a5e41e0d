"""Fast CPU kernels for TensorFlow-domain training ops: 2-D convolution (TFConv) and its gradients, max
pooling (TFMaxPool) and its gradient, fused batch norm and its gradient, BiasAddGrad, ReluGrad, stateless
uniform random floats (dropout masks), the sparse softmax cross-entropy (one float64 pass per row) and the fused
optimizer updates.

The reference kernels of :mod:`opencann.ops.tf_nn`, :mod:`opencann.ops.tf_ops` and :mod:`opencann.ops.tf_training`
stay the oracle and the fallback (other dtypes, ranks, grouped and depthwise filters, broadcast operands). float32
2-D convolutions work channels-last with TF's ``(kh, kw, C, M)`` filters: a Numba loop gathers the input windows
into a reused im2col buffer, rows ``(n, oh, ow)`` by columns ``(i, j, c)`` (the filter's order), or tap-major (the
transpose) for inputs of few channels, where it copies runs of output columns; the forward conv is one BLAS product
``cols @ W`` and the filter gradient ``cols.T @ dy``; the input gradient is ``dy @ W.T`` scatter-added back by a
Numba col2im. Batches go by groups of images whose windows fit 1 MiB (the GEMM then reads them from L2). The gathers
copy whole window rows (``kw * c`` elements) through slices indexed by the loop counter, which LLVM vectorizes
(offsets computed per element it does not). Convolutions of 16 or 32 output channels (the small CNNs' layers, where
the GEMMs of K = 9..288 ran at half of MKL's peak and the gathers cost as much again) skip the windows: a direct
kernel of explicit AVX-512 vectors (:func:`opencann.ops.cpu_conv._stem_run`) keeps 8 or 13 outputs of a row in
registers over all taps of a zero-padded copy of the images; the input gradient of a stride-1 conv is the same
kernel over the padded ``dy`` with the flipped, channel-transposed filter, and the filter gradient has one of its
own (:func:`_filter_grad_run`: 12 or 16 channel-taps, or a one-channel input's nine taps, summed over all pixels in
registers, with the bias gradient's sums of ``dy`` when ``fuse_tf_conv`` joined a BiasAddGrad). On AVX-512 hosts
(elsewhere they spill registers and the im2col path serves) they run at about the FMA units' peak, 1.3-2x the im2col
path's speed, in plain float32 sums (errors like the GEMM's). Max pooling and MaxPoolGrad are direct Numba loops
over NHWC windows, vectorized over channels; MaxPoolGrad routes each window's gradient to its first maximum, as
TensorFlow's CPU kernel does, and with ``relu=1`` (the TF importer's fusion of a following ReluGrad) only to a
positive one; 2x2 windows at stride 2 (the common case) have a kernel of their own whose channel loop LLVM
vectorizes (16 and 32 channels passed as constants: it vectorizes loops that short only when it knows their length).
MaxPoolGrad and ConvBackpropInput write into a planned ``out`` buffer. BiasAddGrad sums blocks of rows in float32
(runs of rows as one vector) and the blocks in float64; fused batch norm takes per-channel statistics in two
float64-accumulated passes and normalizes in one. Stateless uniform floats run Philox-4x32-10 in Numba, bit for bit
the reference's (and TensorFlow's) stream. The optimizer updates (``ApplyAdam``, ``ApplyMomentum``, ...) compute the
new variable and slots in one Numba pass, element by element in the reference's float32 operation order, instead of
a NumPy temporary per operation.

The kernels split their work into pieces that :func:`opencann.runtime.workers.parallel_for` shares out among
threads: convolutions by their groups of images (one nogil Numba call each: the windows, then ``cblas_sgemm``
through :func:`opencann.ops.blas.gemm`, MKL on one thread; the filter gradient adds the groups' products after
the join), pooling by images, batch norm, BiasAddGrad and the optimizer updates by blocks of rows (sums: float64
partial sums per piece, added up in piece order after). The pieces depend on the shapes alone, never on the
thread count, so results are the same, bit for bit, on any number of threads (the direct convolutions run as one
piece on one thread: no output's sum depends on the pieces; the direct filter gradient has ``FG_PIECES``).
"""
from __future__ import annotations

import threading

import numba
import numpy as np
from llvmlite import binding as llvm
from llvmlite import ir as llir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

from opencann.ops import blas, tf_nn, tf_ops, tf_stateless, tf_training
from opencann.ops.blas import gemm, sgemm
from opencann.ops.cpu_conv import _stem_run
from opencann.ops.llvm_vector import copy_floats, dense_f32, fma_of, splat, zero_floats
from opencann.ops.registry import kernel
from opencann.runtime import workers

F32 = np.dtype(np.float32)
DOMAIN = "opencann"
FEW_CHANNELS = 4  # at most this many input channels: convolutions gather their windows tap-major
TILE_ELEMENTS = 1 << 18  # im2col buffer (1 MiB of float32, stays in L2 for the GEMM): larger go by groups of images
PIECE_ELEMENTS = 1 << 15  # elements of windows or data worth a piece of their own (workers.parallel_for) ...
STREAM_ELEMENTS = 1 << 18  # ... for light one-pass kernels (pooling, sums, batch norm, the optimizer updates)
MAX_PIECES = 8  # pieces of a kernel at most (each costs ~3-5 us; 8 share out well among 2 to 4 threads)
SUM_BLOCK = 256  # rows per float32 partial sum of BiasAddGrad
SUM_RUN = 128  # elements of BiasAddGrad's runs of rows added up as one vector
FLOAT = 1  # ONNX's float32 type code
_local = threading.local()
# Philox-4x32-10 constants as uint64 (Numba keeps uint64 arithmetic uint64; the words stay below 2**32)
_MASK32, _SHIFT32 = np.uint64(0xFFFFFFFF), np.uint64(32)
_M0, _M1 = np.uint64(0xD2511F53), np.uint64(0xCD9E8D57)
_KEY0, _KEY1 = np.uint64(0x9E3779B9), np.uint64(0xBB67AE85)
_MANTISSA, _ONE_BITS = np.uint64(0x7FFFFF), np.uint64(0x3F800000)


def _scratch(size: int) -> np.ndarray:
    """This thread's reusable float32 scratch of at least ``size`` elements (fresh pages cost more than GEMMs)."""
    buf = getattr(_local, "buf", None)
    if buf is None or buf.size < size:
        buf = _local.buf = np.empty(max(size, 1), F32)
    return buf[:size]


@numba.njit(cache=True, nogil=True)
def _im2col(x, cols, kh, kw, sh, sw, dh, dw, ph, pw, ho, wo):
    """Windows of NHWC ``x`` into rows ``(n, oh, ow)`` x columns ``(i, j, c)``, zeros for padding. (Loops index
    slices by their own counter: LLVM vectorizes those, not offsets computed per element.)"""
    n, h, w, c = x.shape
    rows_x = x.reshape(n, h, w * c)
    span = kw * c
    r = 0
    for b in range(n):
        for oh in range(ho):
            for ow in range(wo):
                row = cols[r]
                iw0 = ow * sw - pw
                inside = dw == 1 and iw0 >= 0 and iw0 + kw <= w
                for i in range(kh):
                    ih = oh * sh - ph + i * dh
                    dst = row[i * span:(i + 1) * span]
                    if ih < 0 or ih >= h:
                        dst[:] = 0.0
                    elif inside:  # the window's row is one run of kw * c elements
                        src = rows_x[b, ih, iw0 * c:iw0 * c + span]
                        for t in range(span):
                            dst[t] = src[t]
                    else:
                        for j in range(kw):
                            iw = iw0 + j * dw
                            d = dst[j * c:(j + 1) * c]
                            if iw < 0 or iw >= w:
                                d[:] = 0.0
                            else:
                                s = x[b, ih, iw]
                                for ch in range(c):
                                    d[ch] = s[ch]
                r += 1


@numba.njit(cache=True, nogil=True)
def _im2col_taps(x, cols, kh, kw, sh, sw, dh, dw, ph, pw, ho, wo):
    """The transpose of :func:`_im2col`, ``cols ((i, j, c), (n, oh, ow))``: runs of ``ow`` (few channels)."""
    n, h, w, c = x.shape
    rows_x = x.reshape(n, h, w * c)
    for i in range(kh):
        for j in range(kw):
            off = j * dw - pw  # iw = ow * sw + off
            lo, hi = 0, wo  # the outputs [lo, hi) whose iw is inside
            while lo < wo and lo * sw + off < 0:
                lo += 1
            while hi > lo and (hi - 1) * sw + off >= w:
                hi -= 1
            for ch in range(c):
                dst = cols[(i * kw + j) * c + ch].reshape(n, ho, wo)
                for b in range(n):
                    for oh in range(ho):
                        ih = oh * sh - ph + i * dh
                        d = dst[b, oh]
                        if ih < 0 or ih >= h:
                            d[:] = 0.0
                            continue
                        d[:lo] = 0.0
                        d[hi:] = 0.0
                        if c == 1 and sw == 1:  # one contiguous run
                            src, run = rows_x[b, ih, lo + off:hi + off], d[lo:hi]
                            for t in range(hi - lo):
                                run[t] = src[t]
                        else:
                            src = x[b, ih, :, ch]
                            for ow in range(lo, hi):
                                d[ow] = src[ow * sw + off]


@numba.njit(cache=True, nogil=True)
def _col2im(cols, dx, kh, kw, sh, sw, dh, dw, ph, pw, ho, wo):
    """The adjoint of :func:`_im2col`: scatter-add the columns onto a zeroed NHWC ``dx``."""
    n, h, w, c = dx.shape
    dx[:] = 0.0
    rows = dx.reshape(n, h, w * c)
    span = kw * c
    r = 0
    for b in range(n):
        for oh in range(ho):
            for ow in range(wo):
                iw0 = ow * sw - pw
                inside = dw == 1 and iw0 >= 0 and iw0 + kw <= w
                for i in range(kh):
                    ih = oh * sh - ph + i * dh
                    if ih < 0 or ih >= h:
                        continue
                    src = cols[r, i * span:(i + 1) * span]
                    if inside:
                        dst = rows[b, ih, iw0 * c:iw0 * c + span]
                        for t in range(span):
                            dst[t] += src[t]
                    else:
                        for j in range(kw):
                            iw = iw0 + j * dw
                            if 0 <= iw < w:
                                d, s = dx[b, ih, iw], src[j * c:(j + 1) * c]
                                for ch in range(c):
                                    d[ch] += s[ch]
                r += 1


_ONE, _ZERO = np.float32(1), np.float32(0)


@numba.njit(cache=True, nogil=True)
def _gather(x, cols, k, rows, geom):
    """The windows of ``x`` into the scratch ``cols``: tap-major ``(k, rows)`` for few channels (returns True),
    else ``(rows, k)``; and the leading dimension of that layout."""
    if x.shape[3] <= FEW_CHANNELS:
        _im2col_taps(x, cols[:k * rows].reshape(k, rows), *geom)
        return True, max(rows, 1)
    _im2col(x, cols[:rows * k].reshape(rows, k), *geom)
    return False, k


@numba.njit(cache=True, nogil=True)
def _conv_group(fn, x, w, y, cols, geom):
    """A group of images' convolution: ``y (n, ho, wo, m) = windows(x) @ w (k, m)``, the windows gathered into
    the scratch ``cols``, the product by ``cblas_sgemm`` at ``fn``."""
    (k, m), rows = w.shape, y.shape[0] * y.shape[1] * y.shape[2]
    taps, ld = _gather(x, cols, k, rows, geom)
    gemm(fn, taps, False, rows, m, k, _ONE, cols, 0, ld, w, 0, m, _ZERO, y, 0, m)


@numba.njit(cache=True, nogil=True)
def _filter_grad_group(fn, x, dy, part, cols, geom):
    """A group of images' filter gradient: ``part (k, m) = windows(x).T @ dy (n, ho, wo, m)``."""
    (k, m), rows = part.shape, dy.shape[0] * dy.shape[1] * dy.shape[2]
    taps, ld = _gather(x, cols, k, rows, geom)
    gemm(fn, not taps, False, k, m, rows, _ONE, cols, 0, ld, dy, 0, m, _ZERO, part, 0, m)


@numba.njit(cache=True, nogil=True)
def _input_grad_group(fn, dy, w, dx, cols, geom):
    """A group of images' input gradient: ``dy (n, ho, wo, m) @ w.T`` into ``cols``, scatter-added onto ``dx``."""
    (k, m), rows = w.shape, dy.shape[0] * dy.shape[1] * dy.shape[2]
    gemm(fn, False, True, rows, k, m, _ONE, dy, 0, m, w, 0, m, _ZERO, cols, 0, k)
    _col2im(cols[:rows * k].reshape(rows, k), dx, *geom)


# --- direct channels-last convolution (16 or 32 output channels) --------------------------------

def _wide_vectors() -> bool:
    """Whether Numba compiles for AVX-512: the direct kernels keep up to 26 16-lane sums in registers (AVX-512 has
    32); on AVX2 they spill, and ran 1.3-2.4x slower than the im2col path, which then serves."""
    if numba.config.CPU_FEATURES is not None:
        return "+avx512f" in numba.config.CPU_FEATURES.split(",")
    try:
        return bool(llvm.get_host_cpu_features().get("avx512f"))
    except RuntimeError:  # features unknown on this host
        return False


WIDE_VECTORS = _wide_vectors()
DIRECT_GROUPS = (13, 8)  # outputs along a row the direct kernel sums at once (its registers: 2 * 13 + 3 of 32)
DIRECT_WEIGHTS = 1 << 14  # at most this many filter elements (64 KiB, read once per group of outputs)
_D16A, _D16B, _D32A, _D32B = (_stem_run(v, g) for v in (1, 2) for g in DIRECT_GROUPS)


@numba.njit(cache=True, nogil=True)
def _pad_nhwc(x, xp, top, left):
    """``xp (n, hp, wp, c)``: NHWC ``x`` at offset ``(top, left)`` (negative ones crop it), zeros around it (runs
    copied and zeroed as ``memcpy``/``memset``)."""
    n, h, w, c = x.shape
    hp, wp = xp.shape[1], xp.shape[2]
    j0 = min(max(0, left), wp)
    j1 = max(min(wp, left + w), j0)  # [j0, j1): the columns of xp that hold x
    row = wp * c
    for b in range(n):
        for i in range(hp):
            at, ih = (b * hp + i) * row, i - top
            if ih < 0 or ih >= h or j0 == j1:
                zero_floats(xp, at, row)
                continue
            zero_floats(xp, at, j0 * c)
            copy_floats(xp, at + j0 * c, x, ((b * h + ih) * w + j0 - left) * c, (j1 - j0) * c)
            zero_floats(xp, at + j1 * c, row - j1 * c)


@numba.njit(cache=True, nogil=True)
def _direct(xp, w, y, sh, sw, dh, dw, group, zero, lo, hi):
    """``y (n, ho, wo, m)`` (``m`` 16 or 32) = the conv of the zero-padded NHWC ``xp`` with ``w``, ``group``
    outputs of a row at a time by :func:`cpu_conv._stem_run` (the last group of a row overlaps the one before
    when ``group`` does not divide ``wo``). ``w`` is ``(kw, kh, c, m)``: its taps are read as the kernel's
    ``(c, kh, kw)`` with ``kw`` columns ``dw * c`` apart and ``c`` channels 1 apart; for ``c == dw == 1``
    ``w`` is ``(1, kh, kw, m)``, the window rows' ``kw`` pixels a run."""
    n, hp, wp, c = xp.shape
    ho, wo, m = y.shape[1], y.shape[2], y.shape[3]
    xs, ys, ws = xp.reshape(xp.size), y.reshape(y.size), w.reshape(w.size)
    planes, rows, run = w.shape[0], w.shape[1], w.shape[2]
    for b in range(n):
        for oh in range(ho):
            base, yb = (b * hp + oh * sh) * wp * c, (b * ho + oh) * wo * m
            o = 0
            while o < wo:
                s = min(o, wo - group)
                args = (xs, base + s * sw * c, dw * c, dh * wp * c, sw * c, planes, rows, run, ys, yb + s * m, group,
                        ws, zero, lo, hi)
                if m == 16 and group == DIRECT_GROUPS[0]:
                    _D16A(*args)
                elif m == 16:
                    _D16B(*args)
                elif group == DIRECT_GROUPS[0]:
                    _D32A(*args)
                else:
                    _D32B(*args)
                o = s + group


def _direct_group(c: int, m: int, taps: int, wo: int):
    """The group size :func:`_direct` takes for ``c -> m`` channels, ``taps`` kernel taps and rows of ``wo``
    outputs (the one that computes fewest outputs, overlaps included), or None: the im2col path serves."""
    if not WIDE_VECTORS or m not in (16, 32) or taps < 2 or taps * c * m > DIRECT_WEIGHTS or wo < min(DIRECT_GROUPS):
        return None
    return min((g for g in DIRECT_GROUPS if g <= wo), key=lambda g: -(-wo // g) * g)


def _direct_weights(w: np.ndarray, dw: int) -> np.ndarray:
    """A ``(kh, kw, c, m)`` filter in :func:`_direct`'s layout."""
    kh, kw, c, m = w.shape
    return np.ascontiguousarray(w).reshape(1, kh, kw, m) if c == 1 and dw == 1 else \
        np.ascontiguousarray(w.transpose(1, 0, 2, 3))


def _padded(x, geom, b0: int, b1: int) -> np.ndarray:
    """Images ``[b0, b1)`` of NHWC ``x`` zero-padded for the windows of ``geom`` (in the scratch; ``x``'s own
    images where no padding is needed)."""
    kh, kw, sh, sw, dh, dw, ph, pw, ho, wo = geom
    hp, wp = (ho - 1) * sh + (kh - 1) * dh + 1, (wo - 1) * sw + (kw - 1) * dw + 1
    if ph == pw == 0 and (hp, wp) == x.shape[1:3]:
        return x[b0:b1]
    xp = _scratch((b1 - b0) * hp * wp * x.shape[3]).reshape(b1 - b0, hp, wp, x.shape[3])
    _pad_nhwc(x[b0:b1], xp, ph, pw)
    return xp


def _direct_conv(x, w, y, geom, group: int, bias=None, relu: bool = False) -> None:
    """``y`` = the conv of NHWC ``x`` with the ``(kh, kw, c, m)`` filter ``w`` at ``geom`` by :func:`_direct` over
    each piece's images, zero-padded (one piece on one thread: each output's sum is the same in any piece). A
    ``bias`` starts each output's sum (not bit-identical to adding it afterwards: within an ulp or two); ``relu``
    clamps the results at 0 (NaN stays NaN)."""
    wd = _direct_weights(w, geom[5])
    zero, inf = np.zeros(w.shape[3], F32) if bias is None else np.ascontiguousarray(bias), np.float32(np.inf)
    lo = np.float32(0) if relu else -inf

    def piece(b0, b1):
        _direct(_padded(x, geom, b0, b1), wd, y[b0:b1], *geom[2:6], group, zero, lo, inf)
    n = len(x)
    _each(_tiles(n, geom[8] * geom[9] * w[..., 0].size) if workers.size() > 1 else [(0, n)], piece)


def _filter_grad_run(vectors: int, rows: int, run: int):
    """An intrinsic ``run(x, xo, xa, ximg, xrow, step, dy, n, ho, wo, out, oo, ra, bias, with_bias)``: ``rows * run``
    sums over the pixels of ``dy (n, ho, wo, 16 * vectors)`` of one input value times the pixel's gradient vector,
    in registers: sum ``(a, q)`` reads ``x[xo + a * xa + q + b * ximg + oh * xrow + ow * step]`` for pixel
    ``(b, oh, ow)`` and is added to ``out[oo + (a * ra + q) * 16 * vectors]`` (a filter gradient's rows, ``x`` the
    flat padded input) after each image (its sums start at zero: the error of sums of one image's pixels); with
    ``with_bias``, the sums of the gradient vectors too, added to ``bias``."""
    @intrinsic
    def fgrad(typingctx, x, xo, xa, ximg, xrow, step, dy, n, ho, wo, out, oo, ra, bias, with_bias):
        if not dense_f32(x, dy, out, bias):
            return None
        ip = types.intp
        sig = types.void(x, ip, ip, ip, ip, ip, dy, ip, ip, ip, out, ip, ip, bias, types.boolean)

        def codegen(context, builder, signature, args):
            xo_, xa_, ximg_, xrow_, step_, n_, ho_, wo_, oo_, ra_ = (args[i] for i in (1, 2, 3, 4, 5, 7, 8, 9, 11, 12))
            xp, dp, op, bp = (context.make_array(signature.args[i])(context, builder, args[i]).data
                              for i in (0, 6, 10, 13))
            vec = llir.VectorType(llir.FloatType(), 16)
            fma = fma_of(builder.module, vec)

            def const(v):
                return llir.Constant(xo_.type, v)

            def at(ptr, off):
                return builder.bitcast(builder.gep(ptr, [off]), vec.as_pointer())

            def add_to(ptr, off, sums):
                dst = at(ptr, off)
                builder.store(builder.fadd(builder.load(dst, align=4), builder.load(sums)), dst, align=4)
            m = const(16 * vectors)
            acc = [[[cgutils.alloca_once(builder, vec) for _ in range(vectors)] for _ in range(run)]
                   for _ in range(rows)]
            acc_b = [cgutils.alloca_once(builder, vec) for _ in range(vectors)]
            pixel = cgutils.alloca_once_value(builder, const(0))

            def image(b, with_b):
                for sums in [v for by_q in acc for by_v in by_q for v in by_v] + acc_b:
                    builder.store(llir.Constant(vec, None), sums)
                xb = builder.add(xo_, builder.mul(b, ximg_))
                with cgutils.for_range(builder, ho_) as oh:
                    xh = builder.add(xb, builder.mul(oh.index, xrow_))
                    with cgutils.for_range(builder, wo_) as ow:
                        xw, d = builder.add(xh, builder.mul(ow.index, step_)), builder.load(pixel)
                        g = [builder.load(at(dp, builder.add(d, const(16 * v))), align=4) for v in range(vectors)]
                        for a in range(rows):
                            xr = builder.add(xw, builder.mul(xa_, const(a)))
                            for q in range(run):
                                s = splat(builder, builder.load(builder.gep(xp, [builder.add(xr, const(q))]), align=4),
                                          vec)
                                for v, sums in enumerate(acc[a][q]):
                                    builder.store(builder.call(fma, [s, g[v], builder.load(sums)]), sums)
                        for v, sums in enumerate(acc_b if with_b else []):
                            builder.store(builder.fadd(builder.load(sums), g[v]), sums)
                        builder.store(builder.add(d, m), pixel)
                for a in range(rows):
                    for q in range(run):
                        row = builder.add(oo_, builder.mul(builder.add(builder.mul(ra_, const(a)), const(q)), m))
                        for v in range(vectors):
                            add_to(op, builder.add(row, const(16 * v)), acc[a][q][v])
                for v in range(vectors if with_b else 0):
                    add_to(bp, const(16 * v), acc_b[v])
            with cgutils.for_range(builder, n_) as b:
                with builder.if_else(args[14]) as (then, otherwise):
                    with then:
                        image(b.index, True)
                    with otherwise:
                        image(b.index, False)
            return context.get_dummy_value()
        return sig, codegen
    return fgrad


FG_PIECES = 2  # pieces of the direct filter gradient (each call's cost is worth saving; two threads still share)
# the direct filter gradient's calls: 16 channels of a tap (16 outputs), 4 channels of a kernel row's 3 taps (32
# outputs: 24 sums, 15% faster than 8 channels of a tap), a one-channel input's 3x3 taps (16 outputs)
_FG16, _FG32, _FG_TAPS = _filter_grad_run(1, 1, 16), _filter_grad_run(2, 3, 4), _filter_grad_run(1, 3, 3)


@numba.njit(cache=True, nogil=True)
def _direct_filter_grad(xp, dy, part, bias, sh, sw, dh, dw, with_bias):
    """``part (kh, kw, c, m)`` (zeros) += the sum over the pixels of ``dy (n, ho, wo, m)`` of their windows of the
    zero-padded NHWC ``xp`` times their gradients, by :func:`_filter_grad_run`'s calls (``_FG16``, ``_FG32``,
    ``_FG_TAPS``; see :func:`_direct_filter_ok`); with ``with_bias``, ``bias (m)`` (zeros) += the sum of the
    gradients (BiasAddGrad, by the first call)."""
    n, hp, wp, c = xp.shape
    ho, wo, m = dy.shape[1], dy.shape[2], dy.shape[3]
    kh, kw = part.shape[0], part.shape[1]
    xs, ds, ps = xp.reshape(xp.size), dy.reshape(dy.size), part.reshape(part.size)
    ximg, xrow, step = hp * wp * c, sh * wp * c, sw * c
    if c == 1:
        _FG_TAPS(xs, 0, dh * wp, ximg, xrow, step, ds, n, ho, wo, ps, 0, kw, bias, with_bias)
        return
    for i in range(kh):
        if m == 32:  # the row's three taps at once
            for c0 in range(0, c, 4):
                _FG32(xs, i * dh * wp * c + c0, dw * c, ximg, xrow, step, ds, n, ho, wo, ps, (i * kw * c + c0) * m, c,
                      bias, with_bias and i == 0 and c0 == 0)
            continue
        for j in range(kw):
            for c0 in range(0, c, 16):
                xo, oo = (i * dh * wp + j * dw) * c + c0, ((i * kw + j) * c + c0) * m
                _FG16(xs, xo, 0, ximg, xrow, step, ds, n, ho, wo, ps, oo, 0, bias, with_bias and i == j == c0 == 0)


def _direct_filter_ok(c: int, m: int, kh: int, kw: int, dw: int) -> bool:
    """Whether :func:`_direct_filter_grad` serves a ``(kh, kw, c, m)`` filter's gradient: 16 outputs of a multiple
    of 16 channels, 32 outputs of a multiple of 4 channels and 3 taps a row, or a one-channel 3x3 filter (``dw``
    1, 16 outputs)."""
    if not WIDE_VECTORS or kh * kw * c * m > DIRECT_WEIGHTS:
        return False
    if c == 1:
        return m == 16 and kh == kw == 3 and dw == 1
    return (m == 16 and c % 16 == 0 and kh * kw > 1) or (m == 32 and c % 4 == 0 and kw == 3)


@numba.njit(cache=True, nogil=True)
def _max_pool_grad(x, g, dx, kh, kw, sh, sw, ph, pw, relu):
    """Each NHWC window's gradient onto its first (row-major) maximum among the unpadded elements (``relu``: only
    onto a positive maximum, ReluGrad on ``x`` fused)."""
    n, h, w, c = x.shape
    ho, wo = g.shape[1], g.shape[2]
    tiled = sh == kh and sw == kw and ph == 0 and pw == 0  # each pixel in one window at most: written, not added
    if not tiled or ho * kh != h or wo * kw != w:
        dx[:] = 0.0
    best = np.empty(c, x.dtype)
    at = np.empty(c, np.int64)  # flat pixel (ih * w + iw) of each channel's maximum
    for b in range(n):
        flat = dx[b].reshape(h * w, c)
        for oh in range(ho):
            ih0 = oh * sh - ph
            i0, i1 = max(0, -ih0), min(kh, h - ih0)
            for ow in range(wo):
                iw0 = ow * sw - pw
                j0, j1 = max(0, -iw0), min(kw, w - iw0)
                if i0 >= i1 or j0 >= j1:
                    continue
                start = x[b, ih0 + i0, iw0 + j0]
                for ch in range(c):
                    best[ch] = start[ch]
                    at[ch] = (ih0 + i0) * w + iw0 + j0
                for i in range(i0, i1):
                    for j in range(j0, j1):
                        here = (ih0 + i) * w + iw0 + j
                        src = x[b, ih0 + i, iw0 + j]
                        for ch in range(c):
                            v, m = src[ch], best[ch]
                            better = v > m
                            best[ch] = v if better else m
                            at[ch] = here if better else at[ch]
                grow = g[b, oh, ow]
                if relu:
                    for ch in range(c):
                        at[ch] = at[ch] if best[ch] > 0 else -1
                if tiled:
                    for i in range(i0, i1):
                        for j in range(j0, j1):
                            here = (ih0 + i) * w + iw0 + j
                            dst = flat[here]
                            for ch in range(c):
                                dst[ch] = grow[ch] if at[ch] == here else 0.0
                else:
                    for ch in range(c):
                        if at[ch] >= 0:
                            flat[at[ch], ch] += grow[ch]


@numba.njit(cache=True, nogil=True)
def _max_pool_grad_2x2_rows(x, g, dx, keep, c):
    """:func:`_max_pool_grad` of 2x2 windows at stride 2 from the origin, ``c`` channels (a constant where the
    caller passes one, so that LLVM vectorizes the channel loop whole: 2.5-3x faster at 16 channels). Each window's
    maximum is found in row-major order, first maximum winning as there; ``keep``: route non-positive maxima too."""
    n, h, w = x.shape[0], x.shape[1], x.shape[2]
    ho, wo = g.shape[1], g.shape[2]
    rows, drows, grows = x.reshape(n, h, w * c), dx.reshape(n, h, w * c), g.reshape(n, ho, wo * c)
    z = np.float32(0)
    for b in range(n):
        for oh in range(ho):
            r0, r1, d0, d1 = rows[b, 2 * oh], rows[b, 2 * oh + 1], drows[b, 2 * oh], drows[b, 2 * oh + 1]
            gg = grows[b, oh]
            for ow in range(wo):
                p = 2 * ow * c
                xa, xb, xc, xd = r0[p:p + c], r0[p + c:p + 2 * c], r1[p:p + c], r1[p + c:p + 2 * c]
                da, db, dc, dd = d0[p:p + c], d0[p + c:p + 2 * c], d1[p:p + c], d1[p + c:p + 2 * c]
                gr = gg[ow * c:ow * c + c]
                for ch in range(c):
                    m = xa[ch]
                    v = xb[ch]
                    wb = v > m
                    m = v if wb else m
                    v = xc[ch]
                    wc = v > m
                    m = v if wc else m
                    v = xd[ch]
                    wd = v > m
                    m = v if wd else m
                    gv = gr[ch]
                    gv = gv if (m > 0) | keep else z
                    dd[ch] = gv if wd else z
                    gv = z if wd else gv
                    dc[ch] = gv if wc else z
                    gv = z if wc else gv
                    db[ch] = gv if wb else z
                    gv = z if wb else gv
                    da[ch] = gv


@numba.njit(cache=True, nogil=True)
def _max_pool_grad_2x2(x, g, dx, relu):
    """:func:`_max_pool_grad_2x2_rows` with the channel count a constant for 16 and 32 channels."""
    if g.shape[1] * 2 != x.shape[1] or g.shape[2] * 2 != x.shape[2]:
        dx[:] = 0.0  # rows or columns no window covers
    c = x.shape[3]
    if c == 16:
        _max_pool_grad_2x2_rows(x, g, dx, not relu, 16)
    elif c == 32:
        _max_pool_grad_2x2_rows(x, g, dx, not relu, 32)
    else:
        _max_pool_grad_2x2_rows(x, g, dx, not relu, c)


@numba.njit(cache=True, nogil=True)
def _max_pool(x, y, kh, kw, sh, sw, ph, pw):
    """The maximum of each NHWC window's unpadded elements (-inf for none; NaN wins)."""
    n, h, w, c = x.shape
    ho, wo = y.shape[1], y.shape[2]
    for b in range(n):
        for oh in range(ho):
            ih0 = oh * sh - ph
            i0, i1 = max(0, -ih0), min(kh, h - ih0)
            for ow in range(wo):
                iw0 = ow * sw - pw
                j0, j1 = max(0, -iw0), min(kw, w - iw0)
                row = y[b, oh, ow]
                for ch in range(c):
                    row[ch] = -np.inf
                for i in range(i0, i1):
                    for j in range(j0, j1):
                        src = x[b, ih0 + i, iw0 + j]
                        for ch in range(c):
                            v, m = src[ch], row[ch]
                            row[ch] = v if (v > m or v != v) else m


@numba.njit(cache=True, nogil=True)
def _max_pool_tiled(x, y, kh, kw):
    """:func:`_max_pool` of windows that tile ``x`` from its origin (no overlap, no padding): the maximum of each
    window's ``kh`` rows first, over runs of ``wo * kw * c`` elements, then of its ``kw`` pixels."""
    n, c = x.shape[0], x.shape[3]
    ho, wo = y.shape[1], y.shape[2]
    rows = x.reshape(n, x.shape[1], x.shape[2] * c)
    span = wo * kw * c
    v = np.empty(span, x.dtype)
    for b in range(n):
        for oh in range(ho):
            first = rows[b, oh * kh, :span]
            for e in range(span):
                v[e] = first[e]
            for i in range(1, kh):
                r = rows[b, oh * kh + i, :span]
                for e in range(span):
                    a, m = r[e], v[e]
                    v[e] = a if (a > m or a != a) else m
            for ow in range(wo):
                out, s0 = y[b, oh, ow], v[ow * kw * c:(ow * kw + 1) * c]
                for ch in range(c):
                    out[ch] = s0[ch]
                for j in range(1, kw):
                    s = v[(ow * kw + j) * c:(ow * kw + j + 1) * c]
                    for ch in range(c):
                        a, m = s[ch], out[ch]
                        out[ch] = a if (a > m or a != a) else m


@numba.njit(cache=True, nogil=True)
def _relu_grad(g, f, out):
    for i in range(g.size):
        out[i] = g[i] if f[i] > 0 else 0.0


@numba.njit(cache=True, nogil=True)
def _block_sums(x, parts):
    """Column sums of each block of ``SUM_BLOCK`` rows of ``x (rows, C)`` in float32, into ``parts (blocks, C)``.
    Runs of ``k`` rows (``k * C >= SUM_RUN``) are added up as one vector, so that LLVM vectorizes the sums of few
    channels; the ``k`` partial sums are added after each block."""
    rows, c = x.shape
    k = max(1, SUM_RUN // max(c, 1))
    flat = x.reshape(-1)
    acc = np.empty(k * c, x.dtype)
    for blk in range(parts.shape[0]):
        r, end = blk * SUM_BLOCK, min((blk + 1) * SUM_BLOCK, rows)
        acc[:] = 0.0
        while r + k <= end:
            run = flat[r * c:(r + k) * c]
            for e in range(k * c):
                acc[e] += run[e]
            r += k
        part = parts[blk]
        part[:] = acc[:c]
        for j in range(1, k):
            for ch in range(c):
                part[ch] += acc[j * c + ch]
        for rr in range(r, end):
            for ch in range(c):
                part[ch] += x[rr, ch]


# --- dispatch -------------------------------------------------------------------------------------

def _conv_plan(in_shape, filter_shape, dy, strides, padding, explicit_paddings, dilations, data_format, depthwise):
    """(channels-last dy, channels-last input shape, geometry) for a float32 2-D conv the Numba path takes,
    else None."""
    if len(filter_shape) != 4 or depthwise or dy.dtype != F32 or dy.ndim != 4:
        return None
    dy_l, x_last, kernel_, strides_, dilations_, begin, groups, _ = tf_nn._conv_geometry(
        in_shape, filter_shape, dy, strides, padding, explicit_paddings, dilations, data_format, depthwise)
    if groups != 1:
        return None
    geom = (kernel_[0], kernel_[1], strides_[0], strides_[1], dilations_[0], dilations_[1], begin[0], begin[1],
            dy_l.shape[1], dy_l.shape[2])
    return np.ascontiguousarray(dy_l), tuple(x_last), geom


def _spans(count: int, pieces: int, align: int = 1) -> list[tuple[int, int]]:
    """``range(count)`` as up to ``pieces`` ranges ``[a, b)`` of even sizes starting at multiples of ``align``."""
    size = max(-(-count // max(pieces, 1)), 1)
    step = -(-size // align) * align
    return [(a, min(a + step, count)) for a in range(0, count, step)]


def _tiles(n: int, per_image: int) -> list[tuple[int, int]]:
    """Groups of whole images ``[b0, b1)`` of even sizes whose windows fit ``TILE_ELEMENTS``, about
    ``PIECE_ELEMENTS`` each (at least one image; at most ``MAX_PIECES`` unless they must be more to fit): the
    pieces :func:`workers.parallel_for` shares out. They depend on the shapes alone, never on the thread count,
    and so do the results."""
    fit = -(-n // max(1, TILE_ELEMENTS // max(per_image, 1)))
    return _spans(n, max(fit, min(n, n * per_image // PIECE_ELEMENTS, MAX_PIECES)))


def _rows(rows: int, per_row: int, unit: int = STREAM_ELEMENTS, align: int = 1) -> list[tuple[int, int]]:
    """Ranges of rows of ``per_row`` elements, about ``unit`` elements each (at most ``MAX_PIECES``): pieces for
    a row-wise kernel."""
    return _spans(rows, min(rows * per_row // unit, MAX_PIECES), align)


def _images(x: np.ndarray, unit: int = STREAM_ELEMENTS) -> list[tuple[int, int]]:
    """Groups of images of NHWC ``x`` for a per-image kernel's pieces."""
    return _rows(x.shape[0], x[:1].size, unit)


def _each(spans: list[tuple[int, int]], fn) -> None:
    """``fn(a, b)`` for each span, on :func:`workers.size` threads (a caller whose pieces multiply wraps this in
    :class:`blas.OneThread`)."""
    if len(spans) == 1:
        fn(*spans[0])
    else:
        workers.parallel_for(lambda i: fn(*spans[i]), len(spans))


def _sums(spans: list[tuple[int, int]], fn, shape: tuple) -> np.ndarray:
    """The sum of float64 partial results, one per span, added up in span order: ``fn(a, b, part)`` fills ``part``
    (zeros of ``shape``) for the span ``[a, b)``."""
    parts = np.zeros((max(len(spans), 1), *shape), np.float64)
    if len(spans) == 1:
        fn(*spans[0], parts[0])
        return parts[0]
    workers.parallel_for(lambda i: fn(*spans[i], parts[i]), len(spans))
    return parts.sum(axis=0)


def _elementwise(kernel_, arrays, scalars) -> None:
    """``kernel_(*arrays, *scalars)`` over blocks of the flat ``arrays`` (inputs and outputs alike)."""
    _each(_rows(arrays[0].size, 1), lambda a, b: kernel_(*(t[a:b] for t in arrays), *scalars))


def _windows(x, geom, k: int, b0: int, b1: int) -> tuple[np.ndarray, bool]:
    """The im2col of images ``[b0, b1)`` of NHWC ``x`` in the scratch buffer, and whether it is tap-major
    ``(k, rows)`` (few channels) rather than ``(rows, k)``."""
    rows = (b1 - b0) * geom[8] * geom[9]
    if x.shape[-1] <= FEW_CHANNELS:
        cols = _scratch(rows * k).reshape(k, rows)
        _im2col_taps(x[b0:b1], cols, *geom)
        return cols, True
    cols = _scratch(rows * k).reshape(rows, k)
    _im2col(x[b0:b1], cols, *geom)
    return cols, False


def _fits(out, shape, *inputs) -> bool:
    """Whether a planned ``out`` can take a result of ``shape`` without overwriting an input."""
    return out is not None and out.shape == tuple(shape) and out.dtype == F32 and out.flags.c_contiguous and \
        not any(np.may_share_memory(out, a) for a in inputs)


@numba.njit(cache=True, nogil=True, error_model="numpy")
def _sparse_xent(features, labels, loss, grad):
    """Loss and logit gradient per row of ``features`` in float64 (log-sum-exp shifted by the row maximum);
    returns -1, or the first row whose label is out of range."""
    n, c = features.shape
    for i in range(n):
        label = labels[i]
        if label < 0 or label >= c:
            return i
        top = features[i, 0]
        for j in range(1, c):
            top = max(top, features[i, j])
        total = 0.0
        for j in range(c):
            total += np.exp(np.float64(features[i, j]) - top)
        lse = np.log(total) + top
        for j in range(c):
            grad[i, j] = np.exp(np.float64(features[i, j]) - lse) - (j == label)
        loss[i] = lse - features[i, label]
    return -1


@kernel("SparseSoftmaxCrossEntropyWithLogits", "cpu", domain=DOMAIN)
def sparse_softmax_cross_entropy(features, labels):
    """float32 logits: one compiled pass per row in float64 (:func:`_sparse_xent`: ~3x faster than the
    reference's NumPy passes at Keras' sizes, each result rounded once); others the reference."""
    if features.dtype != F32 or features.ndim != 2 or labels.ndim != 1 or labels.dtype.kind not in "iu":
        return tf_ops.sparse_softmax_cross_entropy(features, labels)
    loss, grad = np.empty(features.shape[0], F32), np.empty(features.shape, F32)
    bad = _sparse_xent(np.ascontiguousarray(features), labels.astype(np.int64, copy=False), loss, grad)
    if bad >= 0:
        tf_ops.bad_label(labels[bad], features.shape[1])
    return loss, grad


@kernel("TFConv", "cpu", domain=DOMAIN)
def tf_conv(input, filter, bias=None, *, strides=(), padding="VALID", explicit_paddings=(), dilations=(),
            data_format="NHWC", relu=0, out=None):
    if input.dtype != F32 or filter.dtype != F32 or input.ndim != 4 or filter.ndim != 4 or \
            tf_nn._last_shape(input.shape, data_format)[-1] != filter.shape[2] or \
            (bias is not None and (bias.dtype != F32 or bias.shape != filter.shape[3:])):
        return tf_nn.tf_conv(input, filter, bias, strides=strides, padding=padding,
                             explicit_paddings=explicit_paddings, dilations=dilations, data_format=data_format,
                             relu=relu)
    x = np.ascontiguousarray(tf_nn._to_last(input, data_format))
    kernel_, strides_, dilations_, (ho, wo), begin = tf_nn.window_geometry(
        x.shape, filter.shape[:2], strides, dilations, padding, explicit_paddings, data_format)
    n, c, m = x.shape[0], x.shape[-1], filter.shape[-1]
    geom = (*kernel_, *strides_, *dilations_, *begin, ho, wo)
    k = kernel_[0] * kernel_[1] * c
    last = tf_nn._last(data_format)
    y = out if last and _fits(out, (n, ho, wo, m), input, filter) else np.empty((n, ho, wo, m), F32)
    group = _direct_group(c, m, kernel_[0] * kernel_[1], wo)
    if group:
        _direct_conv(x, filter, y, geom, group, bias, bool(relu))
        return tf_nn._from_last(y, data_format)
    w2 = np.ascontiguousarray(filter).reshape(k, m)
    fn = blas.sgemm_address()

    def piece(b0, b1):
        if fn:
            _conv_group(fn, x[b0:b1], w2, y[b0:b1], _scratch((b1 - b0) * ho * wo * k), geom)
        else:
            cols, tap_major = _windows(x, geom, k, b0, b1)
            sgemm(cols, w2, y[b0:b1].reshape(-1, m), trans_a=tap_major)
    with blas.OneThread():
        _each(_tiles(n, ho * wo * k), piece)
    if bias is not None:
        np.add(y, bias, out=y)
    if relu:
        np.maximum(y, F32.type(0), out=y)
    return tf_nn._from_last(y, data_format)


@kernel("TFMaxPool", "cpu", domain=DOMAIN)
def tf_max_pool(input, *, ksize=(), strides=(), padding="VALID", explicit_paddings=(), data_format="NHWC", out=None):
    if input.dtype != F32 or input.ndim != 4:
        return tf_nn.tf_max_pool(input, ksize=ksize, strides=strides, padding=padding,
                                 explicit_paddings=explicit_paddings, data_format=data_format)
    x = np.ascontiguousarray(tf_nn._to_last(input, data_format))
    kernel_, strides_, _, (ho, wo), begin = tf_nn.window_geometry(
        x.shape, tf_nn._spatial(ksize, data_format, 2), strides, (), padding, explicit_paddings, data_format)
    shape = (x.shape[0], ho, wo, x.shape[-1])
    y = out if tf_nn._last(data_format) and _fits(out, shape, input) else np.empty(shape, F32)
    if list(strides_) == list(kernel_) and not any(begin) and ho * kernel_[0] <= x.shape[1] and \
            wo * kernel_[1] <= x.shape[2]:
        _each(_images(x), lambda b0, b1: _max_pool_tiled(x[b0:b1], y[b0:b1], *kernel_))
    else:
        _each(_images(x), lambda b0, b1: _max_pool(x[b0:b1], y[b0:b1], *kernel_, *strides_, *begin))
    return tf_nn._from_last(y, data_format)


@kernel("ConvBackpropFilter", "cpu", domain=DOMAIN)
def conv_backprop_filter(input, filter_sizes, out_backprop, *, strides=(), padding="VALID", explicit_paddings=(),
                         dilations=(), data_format="NHWC", depthwise=0, bias_grad=0):
    sizes = tuple(int(s) for s in filter_sizes)
    plan = None if input.dtype != F32 else _conv_plan(input.shape, sizes, out_backprop, strides, padding,
                                                      explicit_paddings, dilations, data_format, depthwise)
    if plan is None:
        return tf_nn.conv_backprop_filter(input, filter_sizes, out_backprop, strides=strides, padding=padding,
                                          explicit_paddings=explicit_paddings, dilations=dilations,
                                          data_format=data_format, depthwise=depthwise, bias_grad=bias_grad)
    dy, _, geom = plan
    x = np.ascontiguousarray(tf_nn._to_last(input, data_format))
    k, m = sizes[0] * sizes[1] * sizes[2], dy.shape[-1]
    direct = _direct_filter_ok(sizes[2], m, sizes[0], sizes[1], geom[5])
    tiles = _spans(dy.shape[0], FG_PIECES) if direct else _tiles(dy.shape[0], geom[8] * geom[9] * k)
    parts = np.zeros((max(len(tiles), 1), k, m), F32)  # each group's product, added up after (an empty batch: 0)
    biases = np.zeros((len(parts), m), F32)  # the direct kernel's sums of dy (bias_grad)
    fn = blas.sgemm_address()

    def piece(i):
        b0, b1 = tiles[i]
        if direct:
            _direct_filter_grad(_padded(x, geom, b0, b1), dy[b0:b1], parts[i].reshape(sizes), biases[i], *geom[2:6],
                                bool(bias_grad))
        elif fn:
            _filter_grad_group(fn, x[b0:b1], dy[b0:b1], parts[i], _scratch((b1 - b0) * geom[8] * geom[9] * k), geom)
        else:
            cols, tap_major = _windows(x, geom, k, b0, b1)
            sgemm(cols, dy[b0:b1].reshape(-1, m), parts[i], trans_a=not tap_major)
    with blas.OneThread():
        workers.parallel_for(piece, len(tiles))
    dw = (parts[0] if len(parts) == 1 else parts.sum(axis=0)).reshape(sizes)
    if not bias_grad:
        return dw
    return dw, (biases[0] if len(biases) == 1 else biases.sum(axis=0)) if direct else bias_add_grad(dy)


@kernel("ConvBackpropInput", "cpu", domain=DOMAIN)
def conv_backprop_input(input_sizes, filter, out_backprop, *, strides=(), padding="VALID", explicit_paddings=(),
                        dilations=(), data_format="NHWC", depthwise=0, out=None):
    sizes = [int(s) for s in input_sizes]
    plan = None if filter.dtype != F32 else _conv_plan(sizes, filter.shape, out_backprop, strides, padding,
                                                       explicit_paddings, dilations, data_format, depthwise)
    if plan is None:
        return tf_nn.conv_backprop_input(input_sizes, filter, out_backprop, strides=strides, padding=padding,
                                         explicit_paddings=explicit_paddings, dilations=dilations,
                                         data_format=data_format, depthwise=depthwise)
    dy, x_last, geom = plan
    m = dy.shape[-1]
    w = np.ascontiguousarray(filter).reshape(-1, m)  # (kh * kw * C, M)
    dx = out if tf_nn._last(data_format) and _fits(out, x_last, filter, out_backprop) else np.empty(x_last, F32)
    kh, kw, sh, sw, dh, dw, ph, pw = geom[:8]
    group = _direct_group(m, x_last[-1], kh * kw, x_last[2]) if sh == sw == 1 else None
    if group:  # the full conv of dy with the flipped, channel-transposed filter
        flipped = np.ascontiguousarray(filter)[::-1, ::-1].transpose(0, 1, 3, 2)
        _direct_conv(dy, flipped, dx, (kh, kw, 1, 1, dh, dw, (kh - 1) * dh - ph, (kw - 1) * dw - pw, *x_last[1:3]),
                     group)
        return tf_nn._from_last(dx, data_format)
    fn = blas.sgemm_address()

    def piece(b0, b1):
        cols = _scratch((b1 - b0) * geom[8] * geom[9] * w.shape[0])
        if fn:
            _input_grad_group(fn, dy[b0:b1], w, dx[b0:b1], cols, geom)
        else:
            sgemm(dy[b0:b1].reshape(-1, m), w, out=cols.reshape(-1, w.shape[0]), trans_b=True)
            _col2im(cols.reshape(-1, w.shape[0]), dx[b0:b1], *geom)
    with blas.OneThread():
        _each(_tiles(dy.shape[0], geom[8] * geom[9] * w.shape[0]), piece)
    return tf_nn._from_last(dx, data_format)


@kernel("MaxPoolGrad", "cpu", domain=DOMAIN)
def max_pool_grad(orig_input, orig_output, grad, *, ksize=(), strides=(), padding="VALID", explicit_paddings=(),
                  data_format="NHWC", relu=0, out=None):
    if orig_input.dtype != F32 or grad.dtype != F32 or orig_input.ndim != 4:
        return tf_nn.max_pool_grad(orig_input, orig_output, grad, ksize=ksize, strides=strides, padding=padding,
                                   explicit_paddings=explicit_paddings, data_format=data_format, relu=relu)
    x = np.ascontiguousarray(tf_nn._to_last(orig_input, data_format))
    g = np.ascontiguousarray(tf_nn._to_last(grad, data_format))
    kernel_, strides_, begin = tf_nn._pool_geometry(x.shape, g, ksize, strides, padding, explicit_paddings,
                                                    data_format)
    last = tf_nn._last(data_format)
    dx = out if last and _fits(out, x.shape, orig_input, orig_output, grad) else np.empty(x.shape, F32)
    geom = (kernel_[0], kernel_[1], strides_[0], strides_[1], begin[0], begin[1], bool(relu))
    if geom[:6] == (2, 2, 2, 2, 0, 0) and 2 * g.shape[1] <= x.shape[1] and 2 * g.shape[2] <= x.shape[2]:
        _each(_images(x, PIECE_ELEMENTS), lambda b0, b1: _max_pool_grad_2x2(x[b0:b1], g[b0:b1], dx[b0:b1], geom[6]))
    else:
        _each(_images(x, PIECE_ELEMENTS), lambda b0, b1: _max_pool_grad(x[b0:b1], g[b0:b1], dx[b0:b1], *geom))
    return tf_nn._from_last(dx, data_format)


@kernel("ReluGrad", "cpu", domain=DOMAIN)
def relu_grad(gradients, features):
    if gradients.dtype != F32 or features.dtype != F32 or gradients.shape != features.shape:
        return tf_ops.relu_grad(gradients, features)
    out = np.empty(gradients.shape, F32)  # a fresh one: in place, LLVM cannot vectorize the select
    _elementwise(_relu_grad, [np.ascontiguousarray(gradients).reshape(-1), np.ascontiguousarray(features).reshape(-1),
                              out.reshape(-1)], ())
    return out


@kernel("BiasAddGrad", "cpu", domain=DOMAIN)
def bias_add_grad(grad, *, data_format="NHWC"):
    if grad.dtype != F32 or grad.ndim < 2 or (data_format == "NCHW" and grad.ndim > 2):
        return tf_ops.bias_add_grad(grad, data_format=data_format)
    flat = np.ascontiguousarray(grad).reshape(-1, grad.shape[-1])
    parts = np.zeros((max(-(-flat.shape[0] // SUM_BLOCK), 1), flat.shape[1]), F32)  # float32 sums of blocks
    _each(_rows(len(parts), flat[:SUM_BLOCK].size),
          lambda b0, b1: _block_sums(flat[b0 * SUM_BLOCK:b1 * SUM_BLOCK], parts[b0:b1]))
    return parts.sum(axis=0, dtype=np.float64).astype(F32)  # the blocks added up in order, in float64


# --- fused batch normalization -------------------------------------------------------------------

@numba.njit(cache=True, nogil=True)
def _bn_sums(x, mean, total):
    """Per-channel float64 sums of ``x (rows, C)`` (``mean`` None), else of its squared deviations from ``mean``,
    added to ``total``."""
    for r in range(x.shape[0]):
        for ch in range(x.shape[1]):
            if mean is None:
                total[ch] += x[r, ch]
            else:
                d = x[r, ch] - mean[ch]
                total[ch] += d * d


@numba.njit(cache=True, nogil=True)
def _bn_apply(x, mean, mul, offset, y):
    for r in range(x.shape[0]):
        for ch in range(x.shape[1]):
            y[r, ch] = (x[r, ch] - mean[ch]) * mul[ch] + offset[ch]


@numba.njit(cache=True, nogil=True)
def _bn_grad_sums(dy, x, mean, rstd, sums):
    """Per-channel float64 sums of ``dy`` and ``dy * xhat`` added to ``sums (2, C)``."""
    for r in range(x.shape[0]):
        for ch in range(x.shape[1]):
            g = dy[r, ch]
            sums[0, ch] += g
            sums[1, ch] += g * ((x[r, ch] - mean[ch]) * rstd[ch])


@numba.njit(cache=True, nogil=True)
def _bn_grad_dx(dy, x, mean, rstd, mul, mean_dy, mean_dyx, dx):
    """``mul * (dy - mean(dy) - xhat * mean(dy * xhat))``, the reference's float32 operation order."""
    for r in range(x.shape[0]):
        for ch in range(x.shape[1]):
            xhat = (x[r, ch] - mean[ch]) * rstd[ch]
            dx[r, ch] = mul[ch] * (dy[r, ch] - mean_dy[ch] - xhat * mean_dyx[ch])


def _bn_stats(flat: np.ndarray, spans) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and biased variance of ``flat (rows, C)`` (float32): two passes of float64 sums, each
    span's added up in order after."""
    rows, c = max(flat.shape[0], 1), flat.shape[1]
    mean = _sums(spans, lambda r0, r1, part: _bn_sums(flat[r0:r1], None, part), (c,)) / rows
    var = _sums(spans, lambda r0, r1, part: _bn_sums(flat[r0:r1], mean, part), (c,)) / rows
    return mean.astype(F32), var.astype(F32)


def _bn_fast(data_format, *arrays) -> bool:
    return tf_nn._last(data_format) and arrays[0].ndim >= 2 and all(a.dtype == F32 for a in arrays)


@kernel("FusedBatchNorm", "cpu", domain=DOMAIN)
def fused_batch_norm(x, scale, offset, mean, variance, *, epsilon=1e-4, exponential_avg_factor=1.0,
                     data_format="NHWC", is_training=1, n_outputs=6):
    if not _bn_fast(data_format, x, scale, offset, mean, variance):
        return tf_nn.fused_batch_norm(x, scale, offset, mean, variance, epsilon=epsilon, data_format=data_format,
                                      exponential_avg_factor=exponential_avg_factor, is_training=is_training,
                                      n_outputs=n_outputs)
    flat = np.ascontiguousarray(x).reshape(-1, x.shape[-1])
    spans = _rows(*flat.shape)
    if is_training:
        used_mean, used_var = _bn_stats(flat, spans)
        count = flat.shape[0]
        unbiased = used_var * F32.type(count / max(count - 1, 1))
        f = exponential_avg_factor
        out_mean = used_mean if f == 1 else ((1 - f) * mean + f * used_mean).astype(F32)
        out_var = unbiased if f == 1 else ((1 - f) * variance + f * unbiased).astype(F32)
    else:
        used_mean, used_var = mean, variance
        out_mean, out_var = mean, variance
    mul = scale / np.sqrt(used_var + F32.type(epsilon))
    y = np.empty(x.shape, F32)
    y_flat = y.reshape(flat.shape)
    _each(spans, lambda r0, r1: _bn_apply(flat[r0:r1], used_mean, mul, offset, y_flat[r0:r1]))
    return (y, out_mean, out_var, used_mean, used_var, np.zeros(0, F32))[:n_outputs]


@kernel("FusedBatchNormGrad", "cpu", domain=DOMAIN)
def fused_batch_norm_grad(y_backprop, x, scale, reserve_space_1, reserve_space_2, reserve_space_3=None, *,
                          epsilon=1e-4, data_format="NHWC", is_training=1, n_outputs=5):
    if not _bn_fast(data_format, x, y_backprop, scale, reserve_space_1, reserve_space_2) or \
            y_backprop.shape != x.shape:
        return tf_nn.fused_batch_norm_grad(y_backprop, x, scale, reserve_space_1, reserve_space_2, reserve_space_3,
                                           epsilon=epsilon, data_format=data_format, is_training=is_training,
                                           n_outputs=n_outputs)
    c = x.shape[-1]
    flat, dy = np.ascontiguousarray(x).reshape(-1, c), np.ascontiguousarray(y_backprop).reshape(-1, c)
    rstd = F32.type(1) / np.sqrt(reserve_space_2 + F32.type(epsilon))
    spans = _rows(*flat.shape)
    d_offset, d_scale = _sums(spans, lambda r0, r1, part: _bn_grad_sums(dy[r0:r1], flat[r0:r1], reserve_space_1,
                                                                          rstd, part), (2, c)).astype(F32)
    mul = scale * rstd
    count = F32.type(flat.shape[0])
    zeros = np.zeros(c, F32)
    mean_dy, mean_dyx = (d_offset / count, d_scale / count) if is_training else (zeros, zeros)
    dx = np.empty(x.shape, F32)
    dx_flat = dx.reshape(flat.shape)
    _each(spans, lambda r0, r1: _bn_grad_dx(dy[r0:r1], flat[r0:r1], reserve_space_1, rstd, mul, mean_dy, mean_dyx,
                                            dx_flat[r0:r1]))
    empty = np.zeros(0, F32)
    return (dx, d_scale, d_offset, empty, empty)[:n_outputs]


# --- random uniform floats (dropout masks) -------------------------------------------------------

@numba.njit(cache=True, nogil=True)
def _philox_unit_bits(seed, seed2, start, bits):
    """Philox-4x32-10 (key ``seed``) of the counters ``(start + g, seed2)``: each of a counter's 4 words as
    the float32 bit pattern in [1, 2) of its low 23 bits, into ``bits[4 g:4 g + 4]`` (uint64 arithmetic)."""
    k0_init, k1_init = seed & _MASK32, seed >> _SHIFT32
    s_lo, s_hi = seed2 & _MASK32, seed2 >> _SHIFT32
    for g in range((bits.size + 3) // 4):
        c = start + np.uint64(g)
        w0, w1, w2, w3, k0, k1 = c & _MASK32, c >> _SHIFT32, s_lo, s_hi, k0_init, k1_init
        for _ in range(10):
            p0, p1 = w0 * _M0, w2 * _M1
            w0, w1, w2, w3 = (p1 >> _SHIFT32) ^ w1 ^ k0, p1 & _MASK32, (p0 >> _SHIFT32) ^ w3 ^ k1, p0 & _MASK32
            k0, k1 = (k0 + _KEY0) & _MASK32, (k1 + _KEY1) & _MASK32
        base = 4 * g
        for i, w in enumerate((w0, w1, w2, w3)):
            if base + i < bits.size:
                bits[base + i] = np.uint32((w & _MANTISSA) | _ONE_BITS)


@kernel("StatelessRandomUniformV2", "cpu", domain=DOMAIN)
def stateless_random_uniform_v2(shape, key, counter, alg, *, dtype=1):
    if dtype != FLOAT or int(alg) not in (tf_stateless.PHILOX, tf_stateless.AUTO_SELECT):
        return tf_stateless.uniform_v2(shape, key, counter, alg, dtype=dtype)
    dims = tuple(int(d) for d in np.asarray(shape).reshape(-1))
    k, c = np.asarray(key, np.uint64).reshape(-1), np.asarray(counter, np.uint64).reshape(-1)
    bits = np.empty(dims, np.uint32)
    _philox_unit_bits(k[0], c[1], c[0], bits.reshape(-1))
    values = bits.view(F32)
    values -= np.float32(1)
    return values


# --- fused optimizer updates ----------------------------------------------------------------------

@numba.njit(cache=True, nogil=True)
def _momentum(var, accum, grad, new_var, new_accum, lr, momentum, nesterov, keras):
    for i in range(var.size):
        g = grad[i]
        if keras:
            a = accum[i] * momentum - g * lr
            new_var[i] = var[i] + (a * momentum - g * lr if nesterov else a)
        else:
            a = accum[i] * momentum + g
            new_var[i] = var[i] - (g * lr + a * momentum * lr if nesterov else a * lr)
        new_accum[i] = a


@numba.njit(cache=True, nogil=True)
def _adam(var, m, v, grad, new_var, new_m, new_v, alpha, one_minus_b1, one_minus_b2, beta1, epsilon, nesterov):
    for i in range(var.size):
        g = grad[i]
        mi = m[i] + (g - m[i]) * one_minus_b1
        vi = v[i] + (g * g - v[i]) * one_minus_b2
        direction = g * one_minus_b1 + beta1 * mi if nesterov else mi
        new_var[i] = var[i] - (direction * alpha) / (np.sqrt(vi) + epsilon)
        new_m[i] = mi
        new_v[i] = vi


@numba.njit(cache=True, nogil=True)
def _rms_prop(var, ms, mom, grad, new_var, new_ms, new_mom, lr, one_minus_rho, momentum, epsilon):
    for i in range(var.size):
        g = grad[i]
        s = ms[i] + (g * g - ms[i]) * one_minus_rho
        m = mom[i] * momentum + (g * lr) / np.sqrt(s + epsilon)
        new_var[i] = var[i] - m
        new_ms[i] = s
        new_mom[i] = m


def _flat(tensors, scalars):
    """The tensors flattened (all float32, one shape, contiguous) and the scalars as float32, else None."""
    shape = tensors[0].shape
    if any(t.dtype != F32 or t.shape != shape for t in tensors) or \
            any(np.ndim(s) or np.asarray(s).dtype != F32 for s in scalars):
        return None
    return [np.ascontiguousarray(t).reshape(-1) for t in tensors], [np.float32(s) for s in scalars]


def _outputs(var, n: int):
    return [np.empty(var.shape, F32) for _ in range(n)]


@kernel("ApplyMomentum", "cpu", domain=DOMAIN)
def apply_momentum(var, accum, lr, grad, momentum, *, use_nesterov=0):
    return _apply_momentum(var, accum, lr, grad, momentum, use_nesterov, False)


@kernel("ApplyKerasMomentum", "cpu", domain=DOMAIN)
def apply_keras_momentum(var, accum, lr, grad, momentum, *, use_nesterov=0):
    return _apply_momentum(var, accum, lr, grad, momentum, use_nesterov, True)


def _apply_momentum(var, accum, lr, grad, momentum, use_nesterov, keras):
    flat = _flat([var, accum, grad], [lr, momentum])
    if flat is None:
        ref = tf_training.apply_keras_momentum if keras else tf_training.apply_momentum
        return ref(var, accum, lr, grad, momentum, use_nesterov=use_nesterov)
    (v, a, g), (lr32, mom32) = flat
    out = _outputs(var, 2)
    _elementwise(_momentum, [v, a, g, *(o.reshape(-1) for o in out)], (lr32, mom32, bool(use_nesterov), keras))
    return tuple(out)


@kernel("ApplyAdam", "cpu", domain=DOMAIN)
def apply_adam(var, m, v, beta1_power, beta2_power, lr, beta1, beta2, epsilon, grad, *, use_nesterov=0):
    flat = _flat([var, m, v, grad], [beta1_power, beta2_power, lr, beta1, beta2, epsilon])
    if flat is None:
        return tf_training.apply_adam(var, m, v, beta1_power, beta2_power, lr, beta1, beta2, epsilon, grad,
                                      use_nesterov=use_nesterov)
    (var_f, m_f, v_f, g), (b1p, b2p, lr32, b1, b2, eps) = flat
    one = np.float32(1)
    alpha = lr32 * np.sqrt(one - b2p) / (one - b1p)
    out = _outputs(var, 3)
    _elementwise(_adam, [var_f, m_f, v_f, g, *(o.reshape(-1) for o in out)],
                 (alpha, one - b1, one - b2, b1, eps, bool(use_nesterov)))
    return tuple(out)


@kernel("ApplyRMSProp", "cpu", domain=DOMAIN)
def apply_rms_prop(var, ms, mom, lr, rho, momentum, epsilon, grad):
    flat = _flat([var, ms, mom, grad], [lr, rho, momentum, epsilon])
    if flat is None:
        return tf_training.apply_rms_prop(var, ms, mom, lr, rho, momentum, epsilon, grad)
    (v, s, m, g), (lr32, rho32, mom32, eps) = flat
    out = _outputs(var, 3)
    _elementwise(_rms_prop, [v, s, m, g, *(o.reshape(-1) for o in out)], (lr32, np.float32(1) - rho32, mom32, eps))
    return tuple(out)
