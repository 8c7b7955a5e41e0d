"""Fast CPU kernels for 2-D convolutions and pooling, and the fused ``opencann::FusedConv``.

float32 2-D convolutions are GEMMs through BLAS (MKL packing the weights itself: they are read once a run),
in either layout. NCHW (the ``Conv`` kernel): a 1x1 stride-1 unpadded conv is ``W[M, C] @ X[C, H*W]`` on
the input itself; other kernels first gather the windows of a tile of output rows into a reused per-thread
im2col buffer that stays in the L2 cache (a Numba loop over the image split into its column phases, so
every copy is contiguous whatever the stride; rows ordered ``(c, kh, kw)`` like the weights, so each group
is a row block) and multiply ``W[M, C*kh*kw] @ cols`` straight into those output columns. Channels-last
(``FusedConv`` with ``channels_last``, weights ``(kh, kw, C, M)``), measured fastest per shape on
ResNet-18 and MobileNetV2:

- 1x1 convs multiply the batch's pixels directly, in output tiles;
- 3x3 stride-1 convs with a constant weight of at least ``WINOGRAD4_CHANNELS`` and at most
  ``WINOGRAD4_WEIGHTS`` channel pairs (their 36 transforms stay in the L2 cache) and at least
  ``WINOGRAD4_SIZE`` output rows and columns run as Winograd F(4x4, 3x3): 36 GEMMs (one batched MKL call)
  on transformed 6x6 tiles, 4x fewer products (ResNet-18's 56x56x64 and 28x28x128 layers: 1.3-1.8x);
- other such convs with at least ``WINOGRAD_CHANNELS`` channels and enough output (``WINOGRAD_SIZE``,
  ``WINOGRAD_TILES``) run as F(2x2, 3x3): 16 GEMMs, 2.25x fewer products (ResNet-18: 1.3x on the 14x14
  layers, 1.4x on the 7x7 ones from batch 4; not a single 7x7 image, where the weights' reading costs more;
  F(4x4) measured no faster on those);
- other stride-1 convs: ``kh`` GEMMs per tile of output rows over each input row's ``kw``-wide windows
  (a third of the im2col copying; 1.25x on 56x56x64);
- strided ones: ``cols[P, kh*kw*C] @ W[kh*kw*C, M]``, the im2col copying whole channel vectors per tap (a
  whole kernel row at once inside the image), in tiles of output rows, or of several whole images when
  small ones fit a tile (fewer, taller GEMMs);
- few-channel inputs (an RGB stem) with at most ``STEM_VECTORS`` x 16 output channels, a multiple of 16, run a
  direct kernel (:func:`_stem_run`: explicit LLVM vector code over a zero-padded NCHW copy of the image): a
  group of outputs along an output row keeps its sums in registers over all ``C*kh*kw`` taps, each weight vector
  loaded once for the group, each input value broadcast; bias and Relu/Clip applied before the store (ResNet-18's
  7x7/2 3->64 and MobileNetV2's 3x3/2 3->32 stems: 0.6x and 0.5x the im2col and GEMM's time). Other few-channel convs
  gather NCHW windows (NHWC's runs of 3 values are slow) and multiply them transposed into NHWC rows.

Depthwise convs (one channel a group) run :mod:`opencann.ops.cpu_depthwise`'s direct channels-last loop
(NCHW ones transposed around it). Bias, a residual input and the activation are applied in one pass over each
output tile while it is in cache (:mod:`opencann.ops.cpu_conv_base` holds that epilogue). MaxPool (without
indices; channels-last on a chain's NHWC data, handed on as the same kind of view) and AveragePool are direct
Numba loops too, and so is the mean over H and W of channels-last data (GlobalAveragePool of a chain's NHWC
view, ReduceMean over axes 1 and 2 of its NHWC output). Other dtypes, ranks and attributes fall back to the
reference kernels of :mod:`opencann.ops.conv`, :mod:`opencann.ops.pool` and :mod:`opencann.ops.reduce`, which
stay the oracle. The Numba kernels are serial (one thread; BLAS threads are the BLAS setting).

``FusedConv`` is ``activation(conv(X, W, B) + Z)`` with an optional residual ``Z`` (the fuse_conv pass
builds it from Conv, Add and activation nodes). ``activation`` is "" (none), Relu, Clip (``alpha``/``beta``
are min/max), LeakyRelu (``alpha``), Sigmoid, HardSigmoid (``alpha``, ``beta``) or HardSwish.
"""
from __future__ import annotations

import weakref

import numba
import numpy as np
from llvmlite import ir as llir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

from opencann.compiler.ir import Node, TensorType, Value
from opencann.errors import AclError, ErrorCode
from opencann.ops import activation as act_ops
from opencann.ops import conv as ref_conv
from opencann.ops import pool as ref_pool
from opencann.ops import reduce as _reductions  # noqa: F401  (registers ReduceMean, which a kernel below speeds up)
from opencann.ops.blas import is_constant, sgemm_batch
from opencann.ops.blas import sgemm_unpacked as sgemm  # weights are read once a run: MKL packs them best itself
from opencann.ops.cpu_conv_base import ACTIVATIONS, F32, act, activate, col_range, epilogue, scratch
from opencann.ops.cpu_depthwise import depthwise_nhwc
from opencann.ops.cpu_elementwise import output_buffer
from opencann.ops.elementwise import clip as ref_clip
from opencann.ops.llvm_vector import copy_floats, dense_f32, fma_of, splat, zero_floats
from opencann.ops.registry import kernel, lookup, op

TILE_ELEMENTS = 1 << 19  # largest im2col tile (2 MiB of float32): bigger ones are split to stay in the L2 cache
SMALL_CHANNELS = 8  # channels-last convs of fewer input channels gather their windows from NCHW
STEM_VECTORS = 4  # such undilated convs of at most this many 16-channel vectors of outputs run the direct kernel
_STEM_GROUPS = (8, 8, 8, 6)  # outputs the direct kernel computes at once, per output vectors (24 sums at most)
OUT_TILE_ELEMENTS = 1 << 18  # a 1x1 conv's output tile (1 MiB), finished by the epilogue while in the L2 cache
WINOGRAD_CHANNELS = 128  # constant-weight 3x3 stride-1 convs of this many channels, with at least
WINOGRAD_SIZE = 6  # this many output rows and columns and
WINOGRAD_TILES = 32  # this many 2x2 output tiles in the batch, run as Winograd F(2x2, 3x3)
WINOGRAD4_CHANNELS = 64  # constant-weight 3x3 stride-1 convs of this many input channels,
WINOGRAD4_WEIGHTS = 128 * 128  # at most this many input x output channels and
WINOGRAD4_SIZE = 16  # at least this many output rows and columns run as Winograd F(4x4, 3x3)
WINOGRAD_BLOCK = 1 << 19  # the transformed inputs or outputs of a block of tile rows (2 MiB)
_WINOGRAD_G = {2: np.array([[1, 0, 0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0, 0, 1]]),  # per output tile size
               4: np.array([[1 / 4, 0, 0], [-1 / 6, -1 / 6, -1 / 6], [-1 / 6, 1 / 6, -1 / 6], [1 / 24, 1 / 12, 1 / 6],
                            [1 / 24, -1 / 12, 1 / 6], [0, 0, 1]])}
_TWO, _FOUR, _FIVE, _EIGHT = np.float32(2), np.float32(4), np.float32(5), np.float32(8)  # float32 math in Numba
_geometries: dict[tuple, tuple | None] = {}  # _geometry's answers
_winograd_weights: dict[tuple, np.ndarray] = {}  # (id of a constant (3, 3, C, M) weight, tile) -> its transform


# --- Numba kernels --------------------------------------------------------------------------------

@numba.njit(cache=True)
def _im2col_nchw(phases, cols, kh, kw, sh, dh, dw, ph, pw, oh0, oh1, wo):
    """Windows of output rows ``[oh0, oh1)`` of one image into ``cols (C*kh*kw, (oh1 - oh0)*wo)``, zeros for
    padding. The image comes split into its column phases for column stride ``s``: ``phases (C, s, H, ceil(W /
    s))`` with ``phases[c, r, i, q] = x[c, i, q*s + r]`` (``x[:, None]`` for stride 1), so every tap's row is a
    contiguous copy.

    Loops index views from 0 (no slice assignment, no negative-index checks), so LLVM vectorises them.
    """
    c_in, sw, h, wq = phases.shape
    w = sw * wq
    for c in range(c_in):
        for i in range(kh):
            for j in range(kw):
                dst = cols[(c * kh + i) * kw + j]
                off = j * dw - pw
                r = off % sw
                lo, hi = col_range(wo, off, sw, w)
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
                    src = phases[c, r, ih, lo + (off - r) // sw:]
                    for k in range(hi - lo):
                        inside[k] = src[k]


@numba.njit(cache=True)
def _split_columns(x, phases):
    """``phases[c, r, i, q] = x[c, i, q*s + r]`` for ``s = phases.shape[1]``, zeros past the image's width."""
    c_in, s, h, wq = phases.shape
    w = x.shape[2]
    for c in range(c_in):
        for r in range(s):
            for i in range(h):
                dst, src = phases[c, r, i], x[c, i, r:]
                n = (w - r + s - 1) // s
                for q in range(n):
                    dst[q] = src[q * s]
                for q in range(n, wq):
                    dst[q] = 0


@numba.njit(cache=True)
def _im2col_nhwc(x, cols, kh, kw, sh, sw, dh, dw, ph, pw, oh0, oh1, wo):
    """Windows of output rows ``[oh0, oh1)`` of one C-contiguous channels-last image ``x (H, W, C)`` into the
    C-contiguous ``cols ((oh1 - oh0) * wo, kh*kw*C)``, zeros for padding, by ``memcpy``s at flat offsets. A kernel row
    lying wholly inside the image row (``dw == 1``) is one contiguous run of ``kw*C`` values (a 3-channel stem's 7x7
    window: 7 runs of 21)."""
    h, w, c = x.shape
    run = kw * c
    for oh in range(oh0, oh1):
        for ow in range(wo):
            base = ((oh - oh0) * wo + ow) * kh * run
            iw0 = ow * sw - pw
            whole = dw == 1 and iw0 >= 0 and iw0 + kw <= w
            for i in range(kh):
                ih = oh * sh - ph + i * dh
                d = base + i * run
                if ih < 0 or ih >= h:
                    zero_floats(cols, d, run)
                elif whole:
                    copy_floats(cols, d, x, (ih * w + iw0) * c, run)
                else:
                    for j in range(kw):
                        iw = iw0 + j * dw
                        if iw < 0 or iw >= w:
                            zero_floats(cols, d + j * c, c)
                        else:
                            copy_floats(cols, d + j * c, x, (ih * w + iw) * c, c)


@numba.njit(cache=True)
def _row_windows(x, cols, kw, ph, pw, r0, r1, wo):
    """The ``kw``-wide stride-1 windows of window rows ``[r0, r1)`` (input row ``r - ph``) of one C-contiguous
    channels-last image ``x (H, W, C)``: ``cols[(r - r0) * wo + ow] = x[r - ph, ow - pw:ow - pw + kw]``
    flattened, zeros for padding."""
    h, w, c = x.shape
    run = kw * c
    flat = x.reshape(h, w * c)
    for r in range(r0, r1):
        ih = r - ph
        for ow in range(wo):
            d = cols[(r - r0) * wo + ow]
            iw0 = ow - pw
            if ih < 0 or ih >= h:
                for k in range(run):
                    d[k] = 0
            elif iw0 >= 0 and iw0 + kw <= w:
                src = flat[ih, iw0 * c:]
                for k in range(run):
                    d[k] = src[k]
            else:
                for j in range(kw):
                    dj = d[j * c:(j + 1) * c]
                    if iw0 + j < 0 or iw0 + j >= w:
                        for k in range(c):
                            dj[k] = 0
                    else:
                        src = x[ih, iw0 + j]
                        for k in range(c):
                            dj[k] = src[k]


@numba.njit(inline="always")
def _bt4(d0, d1, d2, d3, o0, o1, o2, o3):
    """``o = B^T d`` of Winograd F(2x2, 3x3) over channel vectors (one loop: LLVM vectorises it)."""
    for k in range(d0.shape[0]):
        o0[k] = d0[k] - d2[k]
        o1[k] = d1[k] + d2[k]
        o2[k] = d2[k] - d1[k]
        o3[k] = d1[k] - d3[k]


@numba.njit(inline="always")
def _at4(m0, m1, m2, m3, s0, s1):
    """``s = A^T m`` of Winograd F(2x2, 3x3) over channel vectors."""
    for k in range(m0.shape[0]):
        s0[k] = m0[k] + m1[k] + m2[k]
        s1[k] = m1[k] - m2[k] - m3[k]


@numba.njit(inline="always")
def _padded_patch(x, img, ih0, iw0, size, patch):
    """``patch[a * size + b] = x[img, ih0 + a, iw0 + b]`` over a ``size`` x ``size`` window, zeros outside the image."""
    h, w, c = x.shape[1], x.shape[2], x.shape[3]
    for a in range(size):
        for b in range(size):
            d = patch[a * size + b]
            if ih0 + a < 0 or ih0 + a >= h or iw0 + b < 0 or iw0 + b >= w:
                for k in range(c):
                    d[k] = 0
            else:
                src = x[img, ih0 + a, iw0 + b]
                for k in range(c):
                    d[k] = src[k]


@numba.njit(cache=True, error_model="numpy", boundscheck=False)
def _winograd_input(x, v, ph, pw, th, tw, g0, g1):
    """Winograd F(2x2, 3x3) input transform ``B^T d B`` of the 4x4 patches (zeros for padding) of tile rows
    ``[g0, g1)`` of the channels-last batch ``x (N, H, W, C)`` (tile row ``g``: image ``g // th``, row ``g % th``)
    into ``v (tiles, 16, C)``, vectorised over channels; patches inside the image are read in place."""
    n, h, w, c = x.shape
    patch = np.empty((16, c), np.float32)
    half = np.empty((16, c), np.float32)
    for g in range(g0, g1):
        img, ti = g // th, g % th
        ih0 = 2 * ti - ph
        for tj in range(tw):
            iw0 = 2 * tj - pw
            inside = ih0 >= 0 and ih0 + 4 <= h and iw0 >= 0 and iw0 + 4 <= w
            if not inside:
                _padded_patch(x, img, ih0, iw0, 4, patch)
            for b in range(4):  # B^T down each column of the patch
                if inside:
                    d0, d1, d2, d3 = x[img, ih0, iw0 + b], x[img, ih0 + 1, iw0 + b], x[img, ih0 + 2, iw0 + b], \
                        x[img, ih0 + 3, iw0 + b]
                else:
                    d0, d1, d2, d3 = patch[b], patch[4 + b], patch[8 + b], patch[12 + b]
                _bt4(d0, d1, d2, d3, half[b], half[4 + b], half[8 + b], half[12 + b])
            t = (g - g0) * tw + tj
            for a in range(4):  # then along each row
                _bt4(half[4 * a], half[4 * a + 1], half[4 * a + 2], half[4 * a + 3], v[t, 4 * a], v[t, 4 * a + 1],
                     v[t, 4 * a + 2], v[t, 4 * a + 3])


@numba.njit(inline="always")
def _store_tile(o, y, bias, res, has_res, img, ti, tj, size, code, a, b):
    """``y``'s ``size`` x ``size`` output tile ``(ti, tj)`` of image ``img`` = ``act(o + bias + res)`` (``o`` row-major,
    one channel vector an output), outputs past the edge dropped."""
    ho, wo, m = y.shape[1], y.shape[2], y.shape[3]
    for r in range(min(size, ho - size * ti)):
        for q in range(min(size, wo - size * tj)):
            oh, ow = size * ti + r, size * tj + q
            src, out, rr = o[size * r + q], y[img, oh, ow], res[img, oh, ow]
            if has_res:
                for k in range(m):
                    out[k] = act(src[k] + bias[k] + rr[k], code, a, b)
            else:
                for k in range(m):
                    out[k] = act(src[k] + bias[k], code, a, b)


@numba.njit(cache=True, error_model="numpy", boundscheck=False)
def _winograd_output(mo, y, bias, res, has_res, th, tw, g0, g1, code, a, b):
    """Winograd F(2x2, 3x3) output transform ``A^T m A`` of tile rows ``[g0, g1)`` from ``mo (tiles, 16, M)`` into
    the channels-last ``y (N, ho, wo, M)``, with ``act(... + bias + res)`` (codes 1-3; see :func:`act`), outputs
    past the edge dropped."""
    m = y.shape[3]
    s = np.empty((8, m), np.float32)
    o = np.empty((4, m), np.float32)
    for g in range(g0, g1):
        img, ti = g // th, g % th
        for tj in range(tw):
            t = (g - g0) * tw + tj
            for col in range(4):  # A^T down each column
                _at4(mo[t, col], mo[t, 4 + col], mo[t, 8 + col], mo[t, 12 + col], s[col], s[4 + col])
            for r in range(2):  # then along each row
                _at4(s[4 * r], s[4 * r + 1], s[4 * r + 2], s[4 * r + 3], o[2 * r], o[2 * r + 1])
            _store_tile(o, y, bias, res, has_res, img, ti, tj, 2, code, a, b)


@numba.njit(inline="always")
def _bt6(d0, d1, d2, d3, d4, d5, o0, o1, o2, o3, o4, o5):
    """``o = B^T d`` of Winograd F(4x4, 3x3) over channel vectors."""
    for k in range(d0.shape[0]):
        o0[k] = _FOUR * d0[k] - _FIVE * d2[k] + d4[k]
        o1[k] = d3[k] + d4[k] - _FOUR * (d1[k] + d2[k])
        o2[k] = d4[k] - d3[k] + _FOUR * (d1[k] - d2[k])
        o3[k] = d4[k] - d2[k] + _TWO * (d3[k] - d1[k])
        o4[k] = d4[k] - d2[k] - _TWO * (d3[k] - d1[k])
        o5[k] = _FOUR * d1[k] - _FIVE * d3[k] + d5[k]


@numba.njit(inline="always")
def _at6(m0, m1, m2, m3, m4, m5, s0, s1, s2, s3):
    """``s = A^T m`` of Winograd F(4x4, 3x3) over channel vectors."""
    for k in range(m0.shape[0]):
        p12, d12, p34, d34 = m1[k] + m2[k], m1[k] - m2[k], m3[k] + m4[k], m3[k] - m4[k]
        s0[k] = m0[k] + p12 + p34
        s1[k] = d12 + _TWO * d34
        s2[k] = p12 + _FOUR * p34
        s3[k] = d12 + _EIGHT * d34 + m5[k]


@numba.njit(cache=True, error_model="numpy", boundscheck=False, fastmath={"contract"})
def _winograd4_input(x, v, ph, pw, th, tw, g0, g1):
    """Winograd F(4x4, 3x3) input transform ``B^T d B`` of the 6x6 patches (zeros for padding) of tile rows
    ``[g0, g1)`` of the channels-last batch ``x (N, H, W, C)`` into ``v (tiles, 36, C)`` (see
    :func:`_winograd_input`)."""
    n, h, w, c = x.shape
    patch = np.empty((36, c), np.float32)
    half = np.empty((36, c), np.float32)
    for g in range(g0, g1):
        img, ti = g // th, g % th
        ih0 = 4 * ti - ph
        for tj in range(tw):
            iw0 = 4 * tj - pw
            if ih0 >= 0 and ih0 + 6 <= h and iw0 >= 0 and iw0 + 6 <= w:  # B^T down each column of the patch
                for b in range(6):
                    _bt6(x[img, ih0, iw0 + b], x[img, ih0 + 1, iw0 + b], x[img, ih0 + 2, iw0 + b],
                         x[img, ih0 + 3, iw0 + b], x[img, ih0 + 4, iw0 + b], x[img, ih0 + 5, iw0 + b],
                         half[b], half[6 + b], half[12 + b], half[18 + b], half[24 + b], half[30 + b])
            else:  # of a copy with zeros for padding
                _padded_patch(x, img, ih0, iw0, 6, patch)
                for b in range(6):
                    _bt6(patch[b], patch[6 + b], patch[12 + b], patch[18 + b], patch[24 + b], patch[30 + b],
                         half[b], half[6 + b], half[12 + b], half[18 + b], half[24 + b], half[30 + b])
            t = (g - g0) * tw + tj
            for a in range(6):  # then along each row
                _bt6(half[6 * a], half[6 * a + 1], half[6 * a + 2], half[6 * a + 3], half[6 * a + 4],
                     half[6 * a + 5], v[t, 6 * a], v[t, 6 * a + 1], v[t, 6 * a + 2], v[t, 6 * a + 3],
                     v[t, 6 * a + 4], v[t, 6 * a + 5])


@numba.njit(cache=True, error_model="numpy", boundscheck=False, fastmath={"contract"})
def _winograd4_output(mo, y, bias, res, has_res, th, tw, g0, g1, code, a, b):
    """Winograd F(4x4, 3x3) output transform ``A^T m A`` of tile rows ``[g0, g1)`` from ``mo (tiles, 36, M)`` into
    the channels-last ``y (N, ho, wo, M)``, with ``act(... + bias + res)`` (codes 1-3), outputs past the edge
    dropped."""
    m = y.shape[3]
    s = np.empty((24, m), np.float32)
    o = np.empty((16, m), np.float32)
    for g in range(g0, g1):
        img, ti = g // th, g % th
        for tj in range(tw):
            t = (g - g0) * tw + tj
            for col in range(6):  # A^T down each column
                _at6(mo[t, col], mo[t, 6 + col], mo[t, 12 + col], mo[t, 18 + col], mo[t, 24 + col], mo[t, 30 + col],
                     s[col], s[6 + col], s[12 + col], s[18 + col])
            for r in range(4):  # then along each row
                _at6(s[6 * r], s[6 * r + 1], s[6 * r + 2], s[6 * r + 3], s[6 * r + 4], s[6 * r + 5],
                     o[4 * r], o[4 * r + 1], o[4 * r + 2], o[4 * r + 3])
            _store_tile(o, y, bias, res, has_res, img, ti, tj, 4, code, a, b)


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


def _stem_run(vectors: int, group: int):
    """An intrinsic ``run(x, xo, plane, xr, step, c, kh, kw, y, yo, n, w, bias, lo, hi)``: ``n`` consecutive outputs
    (``16 * vectors`` channels each, at ``y[yo + o*16*vectors]``) of a direct conv over a flat zero-padded NCHW
    image: output ``o``'s window starts at ``x[xo + o*step]``, channels ``plane`` and rows ``xr`` apart; ``w`` is
    ``(c, kh, kw, 16 * vectors)``. Each is ``bias +`` its sums clipped to ``[lo, hi]`` (NaN stays NaN); ``group``
    outputs at a time share each weight vector's load."""
    @intrinsic
    def run(typingctx, x, xo, plane, xr, step, c, kh, kw, y, yo, n, w, bias, lo, hi):
        if not dense_f32(x, y, w, bias):
            return None
        ip, f32 = types.intp, types.float32
        sig = types.void(x, ip, ip, ip, ip, ip, ip, ip, y, ip, ip, w, bias, f32, f32)

        def codegen(context, builder, signature, args):
            xo_, pl_, xr_, step_, c_, kh_, kw_, yo_, n_, lo_, hi_ = (args[i] for i in (1, 2, 3, 4, 5, 6, 7, 9, 10, 13,
                                                                                       14))
            xp, yp, wp, bp = (context.make_array(signature.args[i])(context, builder, args[i]).data
                              for i in (0, 8, 11, 12))
            vec = llir.VectorType(llir.FloatType(), 16)
            fma = fma_of(builder.module, vec)

            def const(v):
                return llir.Constant(xo_.type, v)

            def at(ptr, off):
                return builder.bitcast(builder.gep(ptr, [off]), vec.as_pointer())
            m = const(16 * vectors)
            b = [builder.load(at(bp, const(16 * v)), align=4) for v in range(vectors)]
            low, high = splat(builder, lo_, vec), splat(builder, hi_, vec)
            acc = [[cgutils.alloca_once(builder, vec) for _ in range(vectors)] for _ in range(group)]

            def tap(xt, wt, count):
                wv = [builder.load(at(wp, builder.add(wt, const(16 * v))), align=4) for v in range(vectors)]
                for g in range(count):
                    s = splat(builder, builder.load(builder.gep(xp, [builder.add(xt, builder.mul(step_, const(g)))]),
                                                     align=4), vec)
                    for v in range(vectors):
                        builder.store(builder.call(fma, [s, wv[v], builder.load(acc[g][v])]), acc[g][v])

            def outputs(o, count):
                xb = builder.add(xo_, builder.mul(o, step_))
                for g in range(count):
                    for v in range(vectors):
                        builder.store(b[v], acc[g][v])
                with cgutils.for_range(builder, c_) as chan:
                    with cgutils.for_range(builder, kh_) as row:
                        xr0 = builder.add(builder.add(xb, builder.mul(chan.index, pl_)), builder.mul(row.index, xr_))
                        wr0 = builder.mul(builder.add(builder.mul(chan.index, kh_), row.index), kw_)
                        with cgutils.for_range(builder, kw_) as col:
                            tap(builder.add(xr0, col.index), builder.mul(builder.add(wr0, col.index), m), count)
                for g in range(count):
                    yb = builder.add(yo_, builder.mul(builder.add(o, const(g)), m))
                    for v in range(vectors):
                        s = builder.load(acc[g][v])
                        s = builder.select(builder.fcmp_ordered("<", s, low), low, s)
                        s = builder.select(builder.fcmp_ordered(">", s, high), high, s)
                        builder.store(s, at(yp, builder.add(yb, const(16 * v))), align=4)
            groups = builder.sdiv(n_, const(group))
            with cgutils.for_range(builder, groups) as loop:
                outputs(builder.mul(loop.index, const(group)), group)
            with cgutils.for_range(builder, builder.sub(n_, builder.mul(groups, const(group)))) as loop:
                outputs(builder.add(builder.mul(groups, const(group)), loop.index), 1)
            return context.get_dummy_value()
        return sig, codegen
    return run


_STEM1, _STEM2, _STEM3, _STEM4 = (_stem_run(v + 1, g) for v, g in enumerate(_STEM_GROUPS))


@numba.njit(cache=True)
def _pad_image(x, xp, ph, pw):
    """``xp (C, hp, wp)``: the NCHW image ``x (C, H, W)`` at offset ``(ph, pw)``, zeros around it (cut at ``xp``'s
    size)."""
    c, h, w = x.shape
    hp, wp = xp.shape[1], xp.shape[2]
    lo, hi = min(pw, wp), min(pw + w, wp)
    for k in range(c):
        for i in range(hp):
            row = xp[k, i]
            ih = i - ph
            inner = ih >= 0 and ih < h
            for j in range(0 if inner else wp):
                row[j] = 0
            if not inner:
                continue
            for j in range(lo):
                row[j] = 0
            for j in range(hi, wp):
                row[j] = 0
            inside, src = row[lo:hi], x[k, ih]
            for j in range(hi - lo):
                inside[j] = src[j]


@numba.njit(cache=True)
def _stem_image(xp, w, bias, y, sh, sw, lo, hi):
    """The direct conv of one zero-padded NCHW image ``xp (C, hp, wp)`` with ``w (C, kh, kw, M)`` into ``y (ho, wo,
    M)``, ``M`` a multiple of 16 up to 64, an output row at a time by :func:`_stem_run`."""
    c, hp, wp = xp.shape
    ho, wo, m = y.shape
    xs, ys, ws = xp.reshape(xp.size), y.reshape(y.size), w.reshape(w.size)
    for oh in range(ho):
        args = (xs, oh * sh * wp, hp * wp, wp, sw, c, w.shape[1], w.shape[2], ys, oh * wo * m, wo, ws, bias, lo, hi)
        if m == 16:
            _STEM1(*args)
        elif m == 32:
            _STEM2(*args)
        elif m == 48:
            _STEM3(*args)
        else:
            _STEM4(*args)


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
                    lo, hi = col_range(wo, off, sw, w)
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


@numba.njit(inline="always")
def _max(v, m):
    """``max(v, m)``, NaN when ``v`` is (NaN in ``m`` stays: a NaN compares false)."""
    return v if (v > m or v != v) else m


@numba.njit(inline="always")
def _max3x3(x, acc, ih, iw, dh, dw):
    """``acc`` = the maximum over the 3x3 window at ``(ih, iw)`` (inside the image), in one pass over channels."""
    r0, r1, r2 = x[ih], x[ih + dh], x[ih + 2 * dh]
    a0, a1, a2, b0, b1, b2 = r0[iw], r0[iw + dw], r0[iw + 2 * dw], r1[iw], r1[iw + dw], r1[iw + 2 * dw]
    c0, c1, c2 = r2[iw], r2[iw + dw], r2[iw + 2 * dw]
    for k in range(acc.shape[0]):
        acc[k] = _max(c2[k], _max(c1[k], _max(c0[k], _max(b2[k], _max(b1[k], _max(b0[k], _max(a2[k], _max(
            a1[k], a0[k]))))))))


@numba.njit(cache=True, boundscheck=False)
def _max_pool_nhwc(x, y, kh, kw, sh, sw, dh, dw, ph, pw):
    """Max pooling of one channels-last image ``x (H, W, C)`` into ``y (ho, wo, C)``, vectorised over channels; a 3x3
    window inside the image in one pass (1.4x on ResNet-18's 112x112x64 in cache), others a tap at a time."""
    h, w, c = x.shape
    for oh in range(y.shape[0]):
        ih0 = oh * sh - ph
        for ow in range(y.shape[1]):
            acc = y[oh, ow]
            iw0 = ow * sw - pw
            if kh == kw == 3 and ih0 >= 0 and ih0 + 2 * dh < h and iw0 >= 0 and iw0 + 2 * dw < w:
                _max3x3(x, acc, ih0, iw0, dh, dw)
                continue
            for k in range(c):
                acc[k] = -np.inf
            for i in range(kh):
                ih = ih0 + i * dh
                for j in range(kw):
                    iw = iw0 + j * dw
                    if ih < 0 or ih >= h or iw < 0 or iw >= w:
                        continue
                    src = x[ih, iw]
                    for k in range(c):
                        acc[k] = _max(src[k], acc[k])


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
    """``(strides, dilations, begin pads, output size)`` of a 2-D conv, or None when the fast path does not apply;
    remembered per shapes and attributes (a model's convs ask the same every run)."""
    key = (tuple(spatial), tuple(kernel), auto_pad,
           *(None if v is None else tuple(v) for v in (dilations, pads, strides)))
    if key in _geometries:
        return _geometries[key]
    strides, dilations = tuple(strides or (1, 1)), tuple(dilations or (1, 1))
    begin, end = ref_conv.conv_pads(auto_pad, pads, spatial, kernel, strides, dilations)
    out = tuple((size + b + e - (k - 1) * d - 1) // s + 1
                for size, k, s, d, b, e in zip(spatial, kernel, strides, dilations, begin, end, strict=True))
    geom = None if min(out) <= 0 or min(begin) < 0 or min(end) < 0 else (strides, dilations, tuple(begin), out)
    if len(_geometries) >= 4096:
        _geometries.clear()
    _geometries[key] = geom
    return geom


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


def _columns(xi: np.ndarray, sw: int) -> np.ndarray:
    """A C-contiguous NCHW image as :func:`_im2col_nchw` reads it: split into its ``sw`` column phases."""
    if sw == 1:
        return xi[:, None]
    c, h, w = xi.shape
    phases = scratch(c * sw * h * -(-w // sw), "phases").reshape(c, sw, h, -(-w // sw))
    _split_columns(xi, phases)
    return phases


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
        phases = None if direct else _columns(x[i], sw)
        for oh0 in range(0, ho, rows):
            p0, p1 = oh0 * wo, min(oh0 + rows, ho) * wo
            if direct:
                src = x[i].reshape(c, p)
            else:
                src = scratch(c * kh * kw * (p1 - p0)).reshape(c * kh * kw, p1 - p0)
                _im2col_nchw(phases, src, kh, kw, sh, dh, dw, ph, pw, oh0, oh0 + (p1 - p0) // wo, wo)
            for g in range(group):
                sgemm(w2[g], src[g * k:(g + 1) * k], yi[g * mg:(g + 1) * mg, p0:p1])
        epilogue(yi, bias, res[i].reshape(m, p), z is not None, True, code, np.float32(a), np.float32(bb))
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
    x = x if c < SMALL_CHANNELS and group == 1 else np.ascontiguousarray(x)
    a, bb, has_res = np.float32(a), np.float32(bb), z is not None
    if group > 1:
        wc = np.ascontiguousarray(w).reshape(kh, kw, m)
        for i in range(n):
            depthwise_nhwc(x[i], wc, bias, y[i], res[i], has_res, sh, sw, dh, dw, ph, pw, code, a, bb)
        return y
    if c < SMALL_CHANNELS:
        return _nhwc_few_channels(x, w, bias, y, res, has_res, geom, code, a, bb)
    p, k = ho * wo, kh * kw * c
    w2 = np.ascontiguousarray(w).reshape(k, m)
    if kh == kw == sh == sw == 1 and ph == pw == 0 and (ho, wo) == (h, wd):
        step = max(64, OUT_TILE_ELEMENTS // max(m, 1))  # pixels whose outputs stay in cache for the epilogue
        xs, ys, rs = x.reshape(n * p, c), y.reshape(n * p, m), res.reshape(n * p, m)  # the batch's pixels as one
        for p0 in range(0, n * p, step):
            yt = ys[p0:p0 + step]
            sgemm(xs[p0:p0 + step], w2, yt)
            epilogue(yt, bias, rs[p0:p0 + step], has_res, False, code, a, bb)
        return y
    if kh == kw == 3 and sh == sw == dh == dw == 1 and is_constant(w):
        if c >= WINOGRAD4_CHANNELS and c * m <= WINOGRAD4_WEIGHTS and min(ho, wo) >= WINOGRAD4_SIZE:
            return _nhwc_winograd(x, w, bias, y, res, has_res, (ph, pw), code, a, bb, 4)
        if c >= WINOGRAD_CHANNELS and min(ho, wo) >= WINOGRAD_SIZE and n * -(-ho // 2) * -(-wo // 2) >= WINOGRAD_TILES:
            return _nhwc_winograd(x, w, bias, y, res, has_res, (ph, pw), code, a, bb, 2)
    if p * k <= TILE_ELEMENTS // 2:  # small images: the windows of several images in a tile, one GEMM
        return _nhwc_images(x, w2, bias, y, res, has_res, (kh, kw, sh, sw, dh, dw, ph, pw, ho, wo), code, a, bb)
    if sh == sw == dh == dw == 1:
        return _nhwc_row_windows(x, w, bias, y, res, has_res, (ph, pw, ho, wo), code, a, bb)
    rows = -(-ho // max(1, -(-p * k // TILE_ELEMENTS)))  # equal tiles of output rows, each's windows in a tile
    cols = scratch(rows * wo * k).reshape(rows * wo, k)
    for i in range(n):
        for oh0 in range(0, ho, rows):
            oh1 = min(oh0 + rows, ho)
            tile = cols[:(oh1 - oh0) * wo]
            _im2col_nhwc(x[i], tile, kh, kw, sh, sw, dh, dw, ph, pw, oh0, oh1, wo)
            yt = y[i, oh0:oh1].reshape(-1, m)
            sgemm(tile, w2, yt)
            epilogue(yt, bias, res[i, oh0:oh1].reshape(-1, m), has_res, False, code, a, bb)
    return y


def _nhwc_row_windows(x, w, bias, y, res, has_res, geom, code, a, bb):
    """The channels-last stride-1 conv as ``kh`` GEMMs per tile of output rows over the input rows' ``kw``-wide
    windows (a third of a 3x3 im2col's copying): kernel row ``i`` of output row ``oh`` reads window row
    ``oh + i``, a row block of the same buffer, and its GEMM adds into the output tile."""
    ph, pw, ho, wo = geom
    kh, kw, c, m = w.shape
    wr = np.ascontiguousarray(w).reshape(kh, kw * c, m)
    rows = max(1, TILE_ELEMENTS // (wo * kw * c) - kh + 1)
    rows = -(-ho // -(-ho // rows))  # equal tiles of output rows, each's window rows in a tile
    cols = scratch((rows + kh - 1) * wo * kw * c).reshape(-1, kw * c)
    for i in range(x.shape[0]):
        for oh0 in range(0, ho, rows):
            oh1 = min(oh0 + rows, ho)
            _row_windows(x[i], cols, kw, ph, pw, oh0, oh1 + kh - 1, wo)
            yt = y[i, oh0:oh1].reshape(-1, m)
            for r in range(kh):
                sgemm(cols[r * wo:(r + oh1 - oh0) * wo], wr[r], yt, beta=float(r > 0))
            epilogue(yt, bias, res[i, oh0:oh1].reshape(-1, m), has_res, False, code, a, bb)
    return y


def _winograd_weight(w: np.ndarray, tile: int) -> np.ndarray:
    """The Winograd transform ``G g G^T`` of a constant ``(3, 3, C, M)`` weight for ``tile x tile`` output tiles, as
    ``((tile + 2)**2, C, M)``, made once."""
    key = (id(w), tile)
    u = _winograd_weights.get(key)
    if u is None:
        g = _WINOGRAD_G[tile]
        u = np.einsum("ai,ijcm,bj->abcm", g, w.astype(np.float64), g).reshape(-1, *w.shape[2:]).astype(F32)
        _winograd_weights[key] = u
        weakref.finalize(w, _winograd_weights.pop, key, None)
    return u


def _nhwc_winograd(x, w, bias, y, res, has_res, pads, code, a, bb, tile):
    """The channels-last 3x3 stride-1 conv as Winograd F(2x2, 3x3) or F(4x4, 3x3) (``tile``): per block of tile rows
    (of the whole batch), the input transform, one GEMM ``V[k] @ U[k]`` per transformed position and the output
    transform with the epilogue."""
    u = _winograd_weight(w, tile)
    n, c = x.shape[0], x.shape[3]
    ho, wo, m = y.shape[1:]
    th, tw, parts = -(-ho // tile), -(-wo // tile), (tile + 2) ** 2
    rows = max(1, WINOGRAD_BLOCK // (parts * tw * max(c, m)))
    v = scratch(rows * tw * parts * c, "winograd_in").reshape(rows * tw, parts, c)  # tile-major: a tile's
    mo = scratch(rows * tw * parts * m, "winograd_out").reshape(rows * tw, parts, m)  # transforms in one run
    forward, backward = (_winograd_input, _winograd_output) if tile == 2 else (_winograd4_input, _winograd4_output)
    inline = code if code <= 3 else 0
    for g0 in range(0, n * th, rows):
        g1 = min(g0 + rows, n * th)
        t = (g1 - g0) * tw
        forward(x, v, *pads, th, tw, g0, g1)
        sgemm_batch(v[:t].transpose(1, 0, 2), u, mo[:t].transpose(1, 0, 2))
        backward(mo, y, bias, res, has_res, th, tw, g0, g1, inline, a, bb)
    if code > 3:
        activate(y.reshape(y.size), code, a, bb)
    return y


def _nhwc_few_channels(x, w, bias, y, res, has_res, geom, code, a, bb):
    """The channels-last conv of a few-channel input (an RGB stem): the direct kernel where it applies, else NCHW
    windows (contiguous row copies; NHWC's per-tap runs of 3 values are slow), multiplied transposed into NHWC
    output rows."""
    (sh, sw), (dh, dw), (ph, pw), (ho, wo) = geom
    kh, kw, c, m = w.shape
    k = c * kh * kw
    wc = np.ascontiguousarray(w.transpose(2, 0, 1, 3))  # (c, kh, kw, m) like the windows
    xc = _nchw_array(x.transpose(0, 3, 1, 2))
    if dh == dw == 1 and m % 16 == 0 and m <= 16 * STEM_VECTORS:
        return _nhwc_direct(xc, wc, bias, y, res, has_res, geom, code, a, bb)
    w2 = wc.reshape(k, m)
    rows = -(-ho // max(1, -(-ho * wo * k // TILE_ELEMENTS)))  # equal tiles of output rows
    for i in range(x.shape[0]):
        phases = _columns(xc[i], sw)
        for oh0 in range(0, ho, rows):
            oh1 = min(oh0 + rows, ho)
            cols = scratch(k * (oh1 - oh0) * wo).reshape(k, (oh1 - oh0) * wo)
            _im2col_nchw(phases, cols, kh, kw, sh, dh, dw, ph, pw, oh0, oh1, wo)
            yt = y[i, oh0:oh1].reshape(-1, m)
            sgemm(cols, w2, yt, trans_a=True)
            epilogue(yt, bias, res[i, oh0:oh1].reshape(-1, m), has_res, False, code, a, bb)
    return y


def _nhwc_direct(xc, wc, bias, y, res, has_res, geom, code, a, bb):
    """The few-channel conv by :func:`_stem_image` per image (padded into a scratch copy); Relu and Clip without a
    residual applied by the kernel, else the residual and activation by the epilogue."""
    (sh, sw), _, (ph, pw), (ho, wo) = geom
    c, kh, kw, m = wc.shape
    fused = not has_res and code <= 2
    lo = a if fused and code == 2 else np.float32(0) if fused and code == 1 else np.float32(-np.inf)
    hi = bb if fused and code == 2 else np.float32(np.inf)
    hp, wp = (ho - 1) * sh + kh, (wo - 1) * sw + kw
    xp = scratch(c * hp * wp, "stem").reshape(c, hp, wp)
    for i in range(xc.shape[0]):
        _pad_image(xc[i], xp, ph, pw)
        _stem_image(xp, wc, bias, y[i], sh, sw, lo, hi)
        if not fused:
            epilogue(y[i].reshape(-1, m), np.zeros(m, F32), res[i].reshape(-1, m), has_res, False, code, a, bb)
    return y


def _nhwc_images(x, w2, bias, y, res, has_res, geom, code, a, bb):
    """The channels-last im2col conv for images whose windows fit a tile several times: one GEMM per group."""
    kh, kw, sh, sw, dh, dw, ph, pw, ho, wo = geom
    n, (k, m), p = x.shape[0], w2.shape, ho * wo
    per = min(n, max(1, TILE_ELEMENTS // (p * k)))
    cols = scratch(per * p * k).reshape(per * p, k)
    for i0 in range(0, n, per):
        i1 = min(i0 + per, n)
        for i in range(i0, i1):
            _im2col_nhwc(x[i], cols[(i - i0) * p:(i - i0 + 1) * p], kh, kw, sh, sw, dh, dw, ph, pw, 0, ho, wo)
        tile, yt = cols[:(i1 - i0) * p], y[i0:i1].reshape(-1, m)
        sgemm(tile, w2, yt)
        epilogue(yt, bias, res[i0:i1].reshape(-1, m), has_res, False, code, a, bb)
    return y


def _is_f32(*arrays) -> bool:
    for v in arrays:
        if v is not None and v.dtype != F32:
            return False
    return True


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
    if is_max and not x.flags.c_contiguous and x.transpose(0, 2, 3, 1).flags.c_contiguous:  # a channels-last chain's
        y = np.empty((n, *out, c), dtype=F32)  # value: pooled channels-last, handed on as the same kind of view
        for i in range(n):
            _max_pool_nhwc(x[i].transpose(1, 2, 0), y[i], *kernel_shape, *strides, *dilations, *begin)
        return y.transpose(0, 3, 1, 2)
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


@numba.njit(cache=True, error_model="numpy", boundscheck=False)
def _pixel_mean(x, out):
    """``out[i]``: the mean of the rows of ``x[i]`` for C-contiguous ``x (N, P, C)``, vectorised over channels."""
    n, p, c = x.shape
    for i in range(n):
        o = out[i]
        for k in range(c):
            o[k] = 0
        for r in range(p):
            src = x[i, r]
            for k in range(c):
                o[k] += src[k]
        for k in range(c):
            o[k] /= p


def _nhwc_mean(x: np.ndarray) -> np.ndarray:
    """The ``(N, C)`` mean over H and W of C-contiguous float32 channels-last ``x (N, H, W, C)``."""
    n, h, w, c = x.shape
    out = np.empty((n, c), F32)
    _pixel_mean(x.reshape(n, h * w, c), out)
    return out


@kernel("GlobalAveragePool", "cpu")
def global_average_pool(x):
    if x.dtype != F32 or x.ndim < 3:
        return ref_pool.global_average_pool(x)
    if x.ndim == 4 and not x.flags.c_contiguous and x.transpose(0, 2, 3, 1).flags.c_contiguous and x.size:
        return _nhwc_mean(x.transpose(0, 2, 3, 1)).reshape(*x.shape[:2], 1, 1)  # an NHWC view: its pixels' mean
    flat = np.ascontiguousarray(x).reshape(*x.shape[:2], -1)
    return (np.add.reduce(flat, axis=2) * np.float32(1 / flat.shape[2])).reshape(*x.shape[:2], *[1] * (x.ndim - 2))


@kernel("ReduceMean", "cpu")
def reduce_mean(data, axes=None, *, keepdims=1, noop_with_empty_axes=0):
    """The mean over axes 1 and 2 of C-contiguous float32 4-D data (a channels-last chain's global average pool)
    by :func:`_pixel_mean`; other reductions by the reference kernel."""
    ax = axes.reshape(-1).tolist() if isinstance(axes, np.ndarray) else axes
    if data.dtype == F32 and data.ndim == 4 and data.flags.c_contiguous and data.size and ax is not None \
            and len(ax) == 2 and {int(a) % 4 for a in ax} == {1, 2}:
        out = _nhwc_mean(data)
        return out.reshape(out.shape[0], 1, 1, out.shape[1]) if keepdims else out
    return lookup("ReduceMean", 18).reference(data, axes, keepdims=keepdims,
                                              noop_with_empty_axes=noop_with_empty_axes)
