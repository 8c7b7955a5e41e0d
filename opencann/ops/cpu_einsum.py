"""Fast CPU Einsum: a float32 contraction of two operands as one batched matrix product, without copies.

An equation such as attention's ``BTNH,BSNH->BNTS`` splits its letters into batch (in both operands and the
result), contracted (in both operands only) and free ones (in one operand and the result). The operands are
viewed, by transposing and reshaping, as ``(batch..., M, K)`` and ``(batch..., K, N)`` stacks and the result as a
``(batch..., M, N)`` view of the planned output buffer, so that ``np.matmul`` multiplies each matrix with one BLAS
call straight from the operands' strided memory (a transposed matrix through the BLAS transpose flag) into
place. When the result wants the second operand's free letters first, the product is taken as ``B^T A^T``.
Where NumPy's BLAS is slow, a stack whose second matrix is read transposed (attention's scores ``Q K^T``), one
``nogil`` Numba call multiplies it through MKL's ``cblas_sgemm`` by address instead (:func:`opencann.ops.blas.gemm`;
each batch's matrix offsets computed once per layout): 128 (32 x 32 x 16) products ~70 us instead of ~90 us,
BERT-base's (128 x 128 x 64 x 12 heads) ~190 us instead of ~255 us. For C-contiguous operands, all that
depends on the equation and the shapes only (views' permutations and shapes, the MKL calls' arguments) is worked
out once (:func:`_plan`): ~3 us a call instead of ~10. Other layouts take the general path.
Anything else (one operand, ellipses, repeated or summed-out letters, sizes that differ, other dtypes) runs the
reference kernel.
"""
from __future__ import annotations

import math
from functools import lru_cache

import numba
import numpy as np

from opencann.ops import blas
from opencann.ops.registry import kernel
from opencann.ops.tensor import einsum

F32 = np.dtype(np.float32)
_ZERO, _ONE = np.float32(0.0), np.float32(1.0)
STACKED_MIN = 1 << 18  # multiply-adds from which a stack with a transposed second operand goes through MKL


@lru_cache(maxsize=256)
def contraction(equation: str) -> tuple[bool, str, str, str, str, str, str, str] | None:
    """How a two-operand equation multiplies: (swap, first term, second term, batch, free letters of the first,
    free letters of the second, contracted, result), where the first operand's free letters are the result's
    earlier ones (``swap``: the first is the equation's second operand); None if it is not a plain contraction."""
    lhs, arrow, out = equation.replace(" ", "").partition("->")
    terms = lhs.split(",")
    if not arrow or len(terms) != 2 or "." in equation:
        return None
    a, b = terms
    if any(len(set(t)) != len(t) for t in (a, b, out)) or not set(out) <= set(a + b) or not set(a) | set(b) <= \
            set(out) | (set(a) & set(b)):
        return None
    free_a = "".join(c for c in out if c in a and c not in b)
    free_b = "".join(c for c in out if c in b and c not in a)
    swap = bool(free_a and free_b and out.index(free_a[0]) > out.index(free_b[0]))
    if swap:
        a, b, free_a, free_b = b, a, free_b, free_a
    batch = "".join(c for c in out if c in a and c in b)
    contracted = "".join(c for c in a if c not in out)
    return swap, a, b, batch, free_a, free_b, contracted, out


def _stack(x: np.ndarray, letters: str, rows: str, cols: str, batch: str, sizes: dict) -> np.ndarray:
    """``x`` (labelled ``letters``) as a ``(batch..., prod(rows), prod(cols))`` array (a view when it can be)."""
    t = x.transpose([letters.index(c) for c in batch + rows + cols])
    return t.reshape(*(sizes[c] for c in batch), _size(rows, sizes), _size(cols, sizes))


def _size(letters: str, sizes: dict) -> int:
    n = 1
    for c in letters:
        n *= sizes[c]
    return n


def _sizes(a: np.ndarray, b: np.ndarray, ta: str, tb: str) -> dict | None:
    """Each letter's size (None when the operands' ranks or a letter's sizes disagree)."""
    if len(ta) != a.ndim or len(tb) != b.ndim:
        return None
    sizes = dict(zip(ta, a.shape, strict=True))
    for c, n in zip(tb, b.shape, strict=True):
        if sizes.setdefault(c, n) != n:
            return None
    return sizes


@numba.njit(cache=True, nogil=True)
def _gemm_stack(fn, a, b, y, ta, tb, m, n, k, lda, ldb, ldc, offsets):
    """``y[o2] = op(a[o0]) @ op(b[o1])`` (m x n) for each row (o0, o1, o2) of ``offsets``, from flat arrays."""
    for i in range(offsets.shape[0]):
        blas.gemm(fn, ta, tb, m, n, k, _ONE, a, offsets[i, 0], lda, b, offsets[i, 1], ldb, _ZERO, y, offsets[i, 2], ldc)


def _matrix(x: np.ndarray) -> tuple[bool, int] | None:
    """(transposed, leading dimension) of the last two axes of ``x`` as BLAS reads them (None: neither axis has
    unit stride)."""
    rows, cols = x.shape[-2:]
    r, c = x.strides[-2] // 4, x.strides[-1] // 4
    if (c == 1 or cols == 1) and (rows == 1 or r >= cols):
        return False, r if rows > 1 else cols
    if (r == 1 or rows == 1) and (cols == 1 or c >= rows):
        return True, c if cols > 1 else rows
    return None


@lru_cache(maxsize=64)
def _offsets(shape: tuple[int, ...], strides: tuple[tuple[int, ...], ...]) -> np.ndarray:
    """Element offsets (count, 3) of each batch's matrix in the three operands, given their batch strides (bytes)."""
    index = np.stack(np.unravel_index(np.arange(math.prod(shape)), shape), axis=1) if shape else np.zeros((1, 0), int)
    offsets = np.ascontiguousarray(index.astype(np.int64) @ (np.array(strides, np.int64).reshape(3, -1).T // 4))
    offsets.flags.writeable = False
    return offsets


def _stack_args(a3: np.ndarray, b3: np.ndarray, y3: np.ndarray) -> tuple | None:
    """How :func:`_gemm_stack` multiplies the stacks into ``y3`` (views of C-contiguous arrays): (whether ``b``
    comes first, its arguments after the three arrays); None where NumPy's BLAS is as fast (without a transposed
    second matrix, attention's stacks take ~45 us, MKL's ~64 us), costs less to set up (small products) or the
    layouts do not allow it."""
    ma, mb, my = _matrix(a3), _matrix(b3), _matrix(y3)
    if a3.size * b3.shape[-1] < STACKED_MIN or ma is None or mb is None or my is None \
            or not (not ma[0] if my[0] else mb[0]):  # y^T = op(b)^T op(a)^T reads a as its second matrix
        return None
    (ta, lda), (tb, ldb), (_, ldy) = ma, mb, my
    m, k, n = *a3.shape[-2:], b3.shape[-1]
    batch = a3.ndim - 2
    sa, sb, sy = a3.strides[:batch], b3.strides[:batch], y3.strides[:batch]
    if my[0]:
        return True, (not tb, not ta, n, m, k, ldb, lda, ldy, _offsets(a3.shape[:batch], (sb, sa, sy)))
    return False, (ta, tb, m, n, k, lda, ldb, ldy, _offsets(a3.shape[:batch], (sa, sb, sy)))


@lru_cache(maxsize=256)
def _plan(equation: str, shape_a: tuple[int, ...], shape_b: tuple[int, ...]) -> tuple | None:
    """For C-contiguous float32 operands of these shapes: (swap, result shape, (permutation, shape) of the three
    stack views, :func:`_stack_args` or None); None where the general path runs (not a plain contraction, sizes
    that differ, empty operands, a result that is no view of the product)."""
    spec = contraction(equation)
    if spec is None:
        return None
    swap, ta, tb, batch, free_a, free_b, contracted, result = spec
    a, b = np.empty(shape_b if swap else shape_a, F32), np.empty(shape_a if swap else shape_b, F32)  # layouts
    sizes = _sizes(a, b, ta, tb)
    if sizes is None or not a.size or not b.size:
        return None
    y = np.empty(tuple(sizes[c] for c in result), F32)
    parts = ((a, ta, free_a, contracted), (b, tb, contracted, free_b), (y, result, free_a, free_b))
    stacks = [_stack(x, letters, rows, cols, batch, sizes) for x, letters, rows, cols in parts]
    if not all(np.may_share_memory(s, x) for s, (x, *_) in zip(stacks, parts, strict=True)):
        return None
    views = tuple(([letters.index(c) for c in batch + rows + cols], s.shape)
                  for s, (_, letters, rows, cols) in zip(stacks, parts, strict=True))
    return swap, y.shape, views, _stack_args(*stacks)


def _planned(plan: tuple, a: np.ndarray, b: np.ndarray, out) -> np.ndarray:
    """The product of C-contiguous ``a`` and ``b`` by their :func:`_plan`, into ``out`` when it fits."""
    swap, shape, views, stacked = plan
    a, b = (b, a) if swap else (a, b)
    y = out if type(out) is np.ndarray and out.shape == shape and out.dtype == F32 and out.flags.c_contiguous and \
        not np.may_share_memory(out, a) and not np.may_share_memory(out, b) else np.empty(shape, F32)
    fn = blas.sgemm_address() if stacked is not None else 0
    if fn:
        fa, fb = (b, a) if stacked[0] else (a, b)
        _gemm_stack(fn, fa.reshape(-1), fb.reshape(-1), y.reshape(-1), *stacked[1])
        return y
    (pa, sa), (pb, sb), (py, sy) = views
    np.matmul(a.transpose(pa).reshape(sa), b.transpose(pb).reshape(sb), out=y.transpose(py).reshape(sy))
    return y


@kernel("Einsum", "cpu", since=12)
def einsum_cpu(*inputs, equation, out=None):
    if len(inputs) == 2:
        a, b = inputs
        if type(a) is np.ndarray and type(b) is np.ndarray and a.dtype == F32 and b.dtype == F32 \
                and a.flags.c_contiguous and b.flags.c_contiguous:
            plan = _plan(equation, a.shape, b.shape)
            if plan is not None:
                return _planned(plan, a, b, out)
    return _general(inputs, equation, out)


def _general(inputs: tuple, equation: str, out) -> np.ndarray:
    """Any layout: the stacks through np.matmul (scattered into the result when they are no view of it), or the
    reference kernel."""
    spec = contraction(equation) if len(inputs) == 2 else None
    if spec is None or inputs[0].dtype != F32 or inputs[1].dtype != F32:
        return einsum(*inputs, equation=equation)
    swap, ta, tb, batch, free_a, free_b, contracted, result = spec
    a, b = inputs[::-1] if swap else inputs
    sizes = _sizes(a, b, ta, tb)
    if sizes is None or not a.size or not b.size:
        return einsum(*inputs, equation=equation)
    shape = tuple(sizes[c] for c in result)
    y = out if out is not None and out.shape == shape and out.dtype == F32 and out.flags.c_contiguous and \
        not np.may_share_memory(out, a) and not np.may_share_memory(out, b) else np.empty(shape, F32)
    y3 = _stack(y, result, free_a, free_b, batch, sizes)
    a3 = _stack(a, ta, free_a, contracted, batch, sizes)
    b3 = _stack(b, tb, contracted, free_b, batch, sizes)
    if np.may_share_memory(y3, y):
        np.matmul(a3, b3, out=y3)
    else:  # the result's letters do not group into a view of it: multiply, then scatter
        order = batch + free_a + free_b
        y[...] = np.matmul(a3, b3).reshape([sizes[c] for c in order]).transpose([order.index(c) for c in result])
    return y
