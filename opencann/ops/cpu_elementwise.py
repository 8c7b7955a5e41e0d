"""Cheaper CPU kernels for the small, frequent operators: Add/Sub/Mul/Div and Gather.

The reference kernels compute in a widened type under ``np.errstate`` and cast back (about 2 us a call);
for two float arrays of one dtype the ufunc alone gives the same values (0.4 us), written into the
executor's planned ``out`` buffer when it has the result's shape and dtype. Gather lets ``np.take``
check the index range (it accepts ``-dim <= i < dim``, as ONNX does) instead of two reductions.
Anything else goes to the reference kernel.
"""
from __future__ import annotations

import numpy as np

from opencann.errors import AclError, ErrorCode
from opencann.ops import elementwise as ref
from opencann.ops import indexing as ref_indexing
from opencann.ops.registry import kernel


def output_buffer(out, shape: tuple[int, ...], dtype=np.float32) -> np.ndarray:
    """``out`` (the executor's planned buffer) if it is a C-contiguous ``dtype`` array of ``shape``, else a new one."""
    if out is not None and out.shape == shape and out.dtype == dtype and out.flags.c_contiguous:
        return out
    return np.empty(shape, dtype)


def _fits(out, a: np.ndarray, b: np.ndarray) -> bool:
    """``out`` may take ``a op b``: its dtype, and the shape of one operand (NumPy rejects a smaller one)."""
    return out is not None and out.dtype == a.dtype and (out.shape == a.shape or out.shape == b.shape)


def _binary(name: str, ufunc, ref_fn):
    reference = ref._arith(ref_fn)  # the reference kernel of every version

    def fast(a, b, *, broadcast=0, axis=None, consumed_inputs=None, out=None):
        if type(a) is not np.ndarray or type(b) is not np.ndarray or a.dtype != b.dtype or a.dtype.kind != "f" \
                or broadcast:
            return reference(a, b, broadcast=broadcast, axis=axis, consumed_inputs=consumed_inputs)
        if _fits(out, a, b):
            try:
                return ufunc(a, b, out=out)
            except ValueError:  # out is A's (dying) buffer and B broadcasts A to a larger shape
                pass
        return ufunc(a, b)

    fast.__name__ = f"{name.lower()}_cpu"
    return fast


def _divide(a, b, out=None):
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.divide(a, b, out=out)


for _name, _ufunc, _ref in (("Add", np.add, np.add), ("Sub", np.subtract, np.subtract),
                            ("Mul", np.multiply, np.multiply), ("Div", _divide, ref._divide)):
    kernel(_name, "cpu")(_binary(_name, _ufunc, _ref))


@kernel("Gather", "cpu")
def gather_cpu(data, indices, *, axis=0):
    """``np.take``, which checks the range (no ``out``: checking, it would copy through a buffer anyway)."""
    ax = ref_indexing._axis(axis, data.ndim, "Gather")
    if type(data) is not np.ndarray or type(indices) is not np.ndarray or indices.dtype.kind not in "iu":
        return ref_indexing.gather(data, indices, axis=axis)
    try:
        return np.take(data, indices, axis=ax)
    except IndexError:
        raise AclError(ErrorCode.INVALID_PARAM,
                       f"Gather: index out of range for dimension(s) {data.shape[ax]}") from None

