"""Fast CPU Einsum: a float32 contraction of two operands as one batched matrix product, without copies.

An equation such as attention's ``BTNH,BSNH->BNTS`` splits its letters into batch (in both operands and the
result), contracted (in both operands only) and free ones (in one operand and the result). The operands are
viewed, by transposing and reshaping, as ``(batch..., M, K)`` and ``(batch..., K, N)`` stacks and the result as a
``(batch..., M, N)`` view of the planned output buffer, so that ``np.matmul`` multiplies each matrix with one BLAS
call straight from the operands' strided memory (a transposed matrix through the BLAS transpose flag) into
place. When the result wants the second operand's free letters first, the product is taken as ``B^T A^T``.
Anything else (one operand, ellipses, repeated or summed-out letters, sizes that differ, other dtypes) runs the
reference kernel.
"""
from __future__ import annotations

from functools import lru_cache

import numpy as np

from opencann.ops.registry import kernel
from opencann.ops.tensor import einsum

F32 = np.dtype(np.float32)


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


@kernel("Einsum", "cpu", since=12)
def einsum_cpu(*inputs, equation, out=None):
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
