"""Fast CPU kernel of ``opencann::Attention`` (float32, MKL): one Numba call for all batches and heads.

Per (batch, head): MKL's ``cblas_sgemm`` (called from Numba by address: :func:`opencann.ops.blas.gemm`) writes
``scale * q @ k^T`` into a reused (Sq, Sk) scratch straight from the strided head views (their rows' stride is
the leading dimension: no transpose is materialised); the mask is added and the rows
softmaxed in place (a vectorizing float32 ``exp``: Cody-Waite reduction, degree-6 polynomial, the power of two
built in the exponent bits); a second ``cblas_sgemm`` multiplies by ``v`` into the output's head slice. With
``low`` (float16 or bfloat16), the inputs are rounded first and the probabilities in the loop (bit arithmetic,
round to nearest even). Other dtypes, views whose last axis is not contiguous, or no MKL: the reference kernel.
"""
from __future__ import annotations

import numba
import numpy as np

from opencann.compiler.dtypes import from_onnx
from opencann.ops import blas
from opencann.ops.attention import fused_attention, head_view
from opencann.ops.registry import OPENCANN_DOMAIN, kernel

F32 = np.dtype(np.float32)
_LOG2E, _LN2_HI, _LN2_LO = np.float32(1.4426950408889634), np.float32(0.693359375), np.float32(-2.12194440e-4)
_ZERO, _ONE = np.float32(0.0), np.float32(1.0)
_ROUNDING = {0: 0, 10: 1, 16: 2}  # ONNX dtype of ``low`` (none, FLOAT16, BFLOAT16) -> _round_row's code
_HALF_TINY, _HALF_QUANTUM = np.float32(2.0 ** -14), np.float32(2.0 ** 24)  # float16: subnormals below, their step


@numba.njit(cache=True, inline="always", error_model="numpy")
def _round_row(row, code):
    """Round a row of non-negative float32 values to float16 (``code`` 1) or bfloat16 (2), nearest even."""
    bits = row.view(np.int32)
    for j in range(row.shape[0]):
        b = bits[j]
        if code == 2:
            bits[j] = (b + 0x7FFF + ((b >> 16) & 1)) & ~0xFFFF
        elif row[j] < _HALF_TINY:
            row[j] = np.rint(row[j] * _HALF_QUANTUM) / _HALF_QUANTUM
        else:
            bits[j] = (b + 0xFFF + ((b >> 13) & 1)) & ~0x1FFF


@numba.njit(cache=True, inline="always", fastmath={"reassoc", "contract"}, error_model="numpy")
def _row_max(row):
    """The maximum of a float32 row, over eight running maxima (a single one is latency-bound)."""
    n = row.shape[0]
    a0 = a1 = a2 = a3 = a4 = a5 = a6 = a7 = row[0]
    for j in range(0, n - 7, 8):
        a0, a1, a2, a3 = max(a0, row[j]), max(a1, row[j + 1]), max(a2, row[j + 2]), max(a3, row[j + 3])
        a4, a5, a6, a7 = max(a4, row[j + 4]), max(a5, row[j + 5]), max(a6, row[j + 6]), max(a7, row[j + 7])
    top = max(max(max(a0, a1), max(a2, a3)), max(max(a4, a5), max(a6, a7)))
    for j in range(n - n % 8, n):
        top = max(top, row[j])
    return top


@numba.njit(cache=True, inline="always", fastmath={"reassoc", "contract"}, error_model="numpy")
def _softmax_row(row, mask, m0, ms, bits, zero_nan):
    """``row = softmax(row + mask[m0 + j * ms])`` in place (``ms < 0``: no mask), zeros instead of NaN with
    ``zero_nan``; ``bits``: int32 scratch."""
    n = row.shape[0]
    if ms >= 0:
        for j in range(n):
            row[j] += mask[m0 + j * ms]
    top = _row_max(row)
    if top == -np.inf:
        row[:] = 0.0 if zero_nan else np.nan  # as Softmax of an all -inf row
        return
    for j in range(n):
        d = max(row[j] - top, np.float32(-87.5))
        k = np.floor(d * _LOG2E + np.float32(0.5))
        r = d - k * _LN2_HI - k * _LN2_LO
        p = np.float32(1 / 720) * r + np.float32(1 / 120)
        p = p * r + np.float32(1 / 24)
        p = p * r + np.float32(1 / 6)
        p = p * r + np.float32(0.5)
        p = p * r + _ONE
        row[j] = p * r + _ONE
        bits[j] = (np.int32(k) + np.int32(127)) << np.int32(23)
    scale = bits.view(np.float32)
    total = np.float32(0.0)
    for j in range(n):
        row[j] *= scale[j]
        total += row[j]
    if zero_nan and total != total:  # a NaN or +inf input
        row[:] = 0.0
        return
    inv = _ONE / total
    for j in range(n):
        row[j] *= inv


@numba.njit(cache=True, error_model="numpy")
def _attend(fn, q, qv, k, kv, v, vv, mask, mv, y, yv, scale, zero_nan, rounding):
    """Attention over flat float32 sources; ``*v``: int64 views [offset, N1, N2, S, D, 4 strides] (``mv``: the
    mask's offset and 4 strides, stride -1 for none); D strides are 1."""
    n1, n2, sq, d = qv[1], qv[2], qv[3], qv[4]
    sk, dv = kv[3], vv[4]
    scores = np.empty((sq, sk), np.float32)
    bits = np.empty(sk, np.int32)
    for a in range(n1):
        for h in range(n2):
            qo = qv[0] + a * qv[5] + h * qv[6]
            ko = kv[0] + a * kv[5] + h * kv[6]
            vo = vv[0] + a * vv[5] + h * vv[6]
            yo = yv[0] + a * yv[5] + h * yv[6]
            blas.gemm(fn, False, True, sq, sk, d, scale, q, qo, qv[7], k, ko, kv[7], _ZERO, scores, 0, sk)
            for i in range(sq):
                m0 = mv[0] + a * mv[1] + h * mv[2] + i * mv[3]
                _softmax_row(scores[i], mask, m0, mv[4], bits, zero_nan)
                if rounding:
                    _round_row(scores[i], rounding)
            blas.gemm(fn, False, False, sq, dv, sk, _ONE, scores, 0, sk, v, vo, vv[7], _ZERO, y, yo, yv[7])


def _spec(view: np.ndarray, base: np.ndarray) -> np.ndarray | None:
    """[offset, sizes, strides] (elements) of a 4-D view of flat float32 ``base``; None unless its D stride is 1
    (or D is 1) and its rows' stride covers D."""
    strides = [s // 4 for s in view.strides]
    if view.shape[2] == 1:
        strides[2] = view.shape[3]  # any leading dimension >= D serves a one-row matrix
    if view.shape[3] > 1 and strides[3] != 1 or view.shape[2] > 1 and strides[2] < view.shape[3]:
        return None
    offset = (view.__array_interface__["data"][0] - base.__array_interface__["data"][0]) // 4
    return np.array([offset, *view.shape, *strides[:3], 1], np.int64)


def _mask_spec(mask, shape):
    """(flat float32 mask, [offset, 4 strides]) broadcast to the scores' ``shape``, or None to fall back."""
    if mask is None:
        return np.zeros(1, F32), np.array([0, 0, 0, 0, -1], np.int64)
    if mask.dtype == bool:
        mask = np.where(mask, _ZERO, np.float32(-np.inf))
    if mask.dtype != F32 or mask.ndim > 4:
        return None
    mask = _writable(mask)
    try:
        full = np.broadcast_to(mask, shape)
    except ValueError:
        return None
    return mask.reshape(-1), np.array([0, *(s // 4 for s in full.strides)], np.int64)


def _rounded_copies(arrays, low: np.dtype) -> list[np.ndarray]:
    done = {}
    for x in arrays:
        if id(x) not in done:
            done[id(x)] = x.astype(low).astype(F32)
    return [done[id(x)] for x in arrays]


def _writable(x: np.ndarray) -> np.ndarray:
    return x if x.flags.c_contiguous and x.flags.writeable else np.array(x, order="C")


@kernel("Attention", "cpu", domain=OPENCANN_DOMAIN)
def fused_attention_cpu(q, k, v, mask=None, *, q_view, k_view, v_view, y_view, y_shape, scale=1.0, low=0,
                        zero_nan_rows=0, out=None):
    fn = blas.sgemm_address()
    if not fn or low not in _ROUNDING or q.dtype != F32 or k.dtype != F32 or v.dtype != F32:
        return fused_attention(q, k, v, mask, q_view=q_view, k_view=k_view, v_view=v_view, y_view=y_view,
                               y_shape=y_shape, scale=scale, low=low, zero_nan_rows=zero_nan_rows)
    q, k, v = _writable(q), _writable(k), _writable(v)
    if low:  # round each distinct input once (they are often one packed tensor)
        q, k, v = _rounded_copies((q, k, v), from_onnx(low))
    y = out if out is not None and out.shape == tuple(y_shape) and out.dtype == F32 and out.flags.c_contiguous \
        and not any(np.may_share_memory(out, x) for x in (q, k, v)) else np.empty(tuple(y_shape), F32)
    views = [head_view(x, s, n) for x, s, n in ((q, q_view, "Q"), (k, k_view, "K"), (v, v_view, "V"),
                                                (y, y_view, "Y"))]
    specs = [_spec(view, x.reshape(-1)) for view, x in zip(views, (q, k, v, y), strict=True)]
    qh, kh, vh, yh = views
    shapes_ok = qh.shape[:2] == kh.shape[:2] and kh.shape[:3] == vh.shape[:3] and qh.shape[3] == kh.shape[3] \
        and yh.shape == (*qh.shape[:3], vh.shape[3]) and yh.size == y.size
    masked = _mask_spec(mask, (*qh.shape[:3], kh.shape[2])) if shapes_ok else None
    if masked is None or any(s is None for s in specs):
        return fused_attention(q, k, v, mask, q_view=q_view, k_view=k_view, v_view=v_view, y_view=y_view,
                               y_shape=y_shape, scale=scale, low=low, zero_nan_rows=zero_nan_rows)
    flat = [x.reshape(-1) for x in (q, k, v)]
    _attend(fn, flat[0], specs[0], flat[1], specs[1], flat[2], specs[2], *masked, y.reshape(-1),
            specs[3], np.float32(scale), bool(zero_nan_rows), _ROUNDING[low])
    return y
