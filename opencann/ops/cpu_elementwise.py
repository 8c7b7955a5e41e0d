"""Cheaper CPU kernels for the small, frequent operators: arithmetic, Sum, comparisons and logic, Sigmoid,
Tanh, Gather and the scatter-adds.

The reference kernels compute in a widened type under ``np.errstate`` and cast back (2-25 us a call);
for operands of one plain NumPy type the ufunc alone gives the same values (0.4 us), written into the
executor's planned ``out`` buffer when it has the result's shape and dtype. Sigmoid runs the reference's
overflow-free formula as NumPy's SIMD ``exp`` between two vectorized Numba loops (the same bits). Gather
lets ``np.take`` check the index range (it accepts ``-dim <= i < dim``, as ONNX does) instead of two
reductions. ScatterND(reduction="add") and TensorFlow's UnsortedSegmentSum add rows in one Numba loop
that checks each index (``np.add.at`` costs ~0.5 ms). ReduceSum over the leading axes of a contiguous float32
array (a bias gradient: (32, 32, 4, 16) -> (1, 1, 4, 16) in ~6 us instead of ~35 us) adds the rows in one vectorized
Numba loop, in NumPy's order (the same bits). Anything else goes to the reference kernel.
"""
from __future__ import annotations

import functools
import math

import numba
import numpy as np

from opencann.errors import AclError, ErrorCode
from opencann.ops import activation as ref_activation
from opencann.ops import elementwise as ref
from opencann.ops import indexing as ref_indexing
from opencann.ops import reduce as ref_reduce
from opencann.ops import registry
from opencann.ops import tf_sparse as ref_sparse
from opencann.ops.registry import kernel

# Plain NumPy types (no ml_dtypes): a ufunc on these needs neither widening nor a cast back.
_PLAIN = frozenset(np.dtype(t) for t in (np.bool_, np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint16,
                                         np.uint32, np.uint64, np.float32, np.float64))
_FLOATS = frozenset((np.dtype(np.float32), np.dtype(np.float64)))
_F32 = np.dtype(np.float32)


def output_buffer(out, shape: tuple[int, ...], dtype=np.float32) -> np.ndarray:
    """``out`` (the executor's planned buffer) if it is a C-contiguous ``dtype`` array of ``shape``, else a new one."""
    if out is not None and out.shape == shape and out.dtype == dtype and out.flags.c_contiguous:
        return out
    return np.empty(shape, dtype)


def _fits(out, a: np.ndarray, b: np.ndarray) -> bool:
    """``out`` may take ``a op b``: its dtype, and the shape of one operand (NumPy rejects a smaller one)."""
    return out is not None and out.dtype == a.dtype and (out.shape == a.shape or out.shape == b.shape)


def _binary(name: str, ufunc, ref_fn, kinds: str):
    reference = ref._arith(ref_fn)  # the reference kernel of every version

    def fast(a, b, *, broadcast=0, axis=None, consumed_inputs=None, out=None):
        if type(a) is not np.ndarray or type(b) is not np.ndarray or a.dtype != b.dtype or a.dtype.kind not in kinds \
                or broadcast or (a.dtype.kind != "f" and a.dtype not in _PLAIN):
            return reference(a, b, broadcast=broadcast, axis=axis, consumed_inputs=consumed_inputs)
        if _fits(out, a, b):
            try:
                return ufunc(a, b, out=out)
            except ValueError:  # out is A's (dying) buffer and B broadcasts A to a larger shape
                pass
        result = ufunc(a, b)
        return result if type(result) is np.ndarray else np.asarray(result)  # 0-d operands give a scalar

    fast.__name__ = f"{name.lower()}_cpu"
    return fast


def _divide(a, b, out=None):
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.divide(a, b, out=out)


# Integers wrap around in NumPy's loops as in the reference; integer Div truncates toward zero (reference).
for _name, _ufunc, _ref, _kinds in (("Add", np.add, np.add, "fiu"), ("Sub", np.subtract, np.subtract, "fiu"),
                                    ("Mul", np.multiply, np.multiply, "fiu"), ("Div", _divide, ref._divide, "f")):
    kernel(_name, "cpu")(_binary(_name, _ufunc, _ref, _kinds))


def _predicate(name: str, ufunc):
    """Logic and comparisons on one plain type: the ufunc alone (no errstate: NaN compares quietly)."""
    reference = ref._predicate(ufunc)

    def fast(a, b, *, broadcast=0, axis=None):
        if type(a) is not np.ndarray or type(b) is not np.ndarray or a.dtype != b.dtype or a.dtype not in _PLAIN \
                or broadcast:
            return reference(a, b, broadcast=broadcast, axis=axis)
        result = ufunc(a, b)
        return result if type(result) is np.ndarray else np.asarray(result)

    fast.__name__ = f"{name.lower()}_cpu"
    return fast


for _name, _ufunc in (("And", np.logical_and), ("Or", np.logical_or), ("Xor", np.logical_xor),
                      ("Equal", np.equal), ("Greater", np.greater), ("Less", np.less),
                      ("GreaterOrEqual", np.greater_equal), ("LessOrEqual", np.less_equal)):
    kernel(_name, "cpu")(_predicate(_name, _ufunc))


@kernel("Sum", "cpu")
def sum_cpu(*inputs, consumed_inputs=None, out=None):
    """Two float32/float64 arrays of one type and shape: their ufunc sum, into ``out`` when it fits."""
    if len(inputs) == 2:
        a, b = inputs
        if type(a) is np.ndarray and type(b) is np.ndarray and a.dtype == b.dtype and a.dtype in _FLOATS \
                and a.shape == b.shape and a.ndim:
            return np.add(a, b, out=out if out is not None and out.shape == a.shape and out.dtype == a.dtype else None)
    return ref.sum_(*inputs)


# --- Sigmoid, Tanh --------------------------------------------------------------------------------

@numba.njit(cache=True, error_model="numpy")
def _negative_abs(x, out):
    for i in range(x.size):
        out[i] = -abs(x[i])


@numba.njit(cache=True, error_model="numpy")
def _sigmoid_from_exp(x, e):
    """The reference's formula on ``e = exp(-|x|)``, in place: 1 / (1 + e) for x >= 0, else e / (1 + e)."""
    one = np.float32(1.0)
    for i in range(x.size):
        v = e[i]
        e[i] = (one if x[i] >= 0 else v) / (one + v)


def _sigmoid(x: np.ndarray, out: np.ndarray) -> np.ndarray:
    """Bit for bit the reference's values: NumPy's SIMD ``exp`` between two vectorized Numba loops."""
    flat_x, flat = np.ascontiguousarray(x).reshape(-1), out.reshape(-1)
    _negative_abs(flat_x, flat)
    np.exp(flat, out=flat)
    _sigmoid_from_exp(flat_x, flat)
    return out


def _unary(fn, reference, in_place: bool):
    """float32/float64 through ``fn(x, out)`` into ``out`` when it fits (X itself if ``in_place``); else the
    reference."""
    def fast(x, *, consumed_inputs=None, out=None):
        if type(x) is not np.ndarray or x.dtype not in _FLOATS:
            return reference(x)
        if out is None or (out is x and not in_place) or out.shape != x.shape or out.dtype != x.dtype \
                or not out.flags.c_contiguous:
            out = np.empty(x.shape, x.dtype)
        return fn(x, out)
    return fast


kernel("Sigmoid", "cpu")(_unary(_sigmoid, ref_activation.sigmoid, in_place=False))
kernel("Tanh", "cpu")(_unary(lambda x, out: np.tanh(x, out=out), ref_activation.tanh, in_place=True))


# --- ReduceSum ------------------------------------------------------------------------------------

@numba.njit(cache=True, nogil=True)
def _sum_rows(x, y):
    """``y = x.sum(axis=0)`` for a 2-D float32 ``x``, row after row (NumPy's order for an outer reduction)."""
    y[:] = x[0]
    for i in range(1, x.shape[0]):
        row = x[i]
        for j in range(y.shape[0]):
            y[j] += row[j]


@kernel("ReduceSum", "cpu")
def reduce_sum_cpu(data, axes=None, *, keepdims=1, noop_with_empty_axes=0):
    """float32, C-contiguous, reduced over its leading axes (not all): one Numba loop; else the reference."""
    if type(data) is np.ndarray and data.dtype == _F32 and data.size and data.flags.c_contiguous:
        ax = ref_reduce._axes(data, axes, noop_with_empty_axes)
        lead = len(ax)
        if 0 < lead < data.ndim and ax[-1] == lead - 1:
            y = np.empty((1,) * lead * bool(keepdims) + data.shape[lead:], _F32)
            _sum_rows(data.reshape(math.prod(data.shape[:lead]), -1), y.reshape(-1))
            return y
    return _reduce_sum_reference()(data, axes, keepdims=keepdims, noop_with_empty_axes=noop_with_empty_axes)


@functools.cache
def _reduce_sum_reference():
    """The reference ReduceSum (one kernel for every version; looked up once, after the library has loaded)."""
    return registry.lookup("ReduceSum", 13).reference


# --- Gather, scatter-adds -------------------------------------------------------------------------

@kernel("Gather", "cpu")
def gather_cpu(data, indices, *, axis=0):
    """``np.take``, which checks the range (no ``out``: checking, it would copy through a buffer anyway)."""
    ax = 0 if axis == 0 and data.ndim else ref_indexing._axis(axis, data.ndim, "Gather")  # the usual axis: cheaper
    if type(data) is not np.ndarray or type(indices) is not np.ndarray or indices.dtype.kind not in "iu":
        return ref_indexing.gather(data, indices, axis=axis)
    try:
        return np.take(data, indices, axis=ax)
    except IndexError:
        raise AclError(ErrorCode.INVALID_PARAM,
                       f"Gather: index out of range for dimension(s) {data.shape[ax]}") from None


@numba.njit(cache=True)
def _add_rows(out, index, dims, rows, skip_negative):
    """``out[flat(index[r])] += rows[r]`` in order; -1 when done, else the first row whose index is out of
    range (``-dims <= i < dims``; with ``skip_negative`` a negative first index skips its row)."""
    for r in range(index.shape[0]):
        flat = 0
        skip = False
        for j in range(index.shape[1]):
            i = index[r, j]
            if i < 0:
                if skip_negative:
                    skip = True
                    break
                i += dims[j]
            if i < 0 or i >= dims[j]:
                return r
            flat = flat * dims[j] + i
        if not skip:
            for c in range(rows.shape[1]):
                out[flat, c] += rows[r, c]
    return -1


def _scatter_add(out: np.ndarray, index: np.ndarray, updates: np.ndarray, skip_negative: bool) -> int:
    """Add ``updates`` (one row per index tuple of ``index``) into ``out`` (C-contiguous) in place."""
    m = index.shape[-1]
    dims = np.array(out.shape[:m], np.int64)
    index = np.ascontiguousarray(index.reshape(-1, m), np.int64)
    flat_out = out.reshape(math.prod(out.shape[:m]), math.prod(out.shape[m:]))
    rows = np.ascontiguousarray(updates).reshape(index.shape[0], flat_out.shape[1])
    return _add_rows(flat_out, index, dims, rows, skip_negative)


def _scatterable(data, indices, updates) -> bool:
    return (type(data) is np.ndarray and type(indices) is np.ndarray and type(updates) is np.ndarray
            and data.dtype in _FLOATS and updates.dtype == data.dtype and indices.dtype.kind in "iu"
            and indices.ndim >= 1 and 0 < indices.shape[-1] <= data.ndim
            and updates.shape == indices.shape[:-1] + data.shape[indices.shape[-1]:])


@kernel("ScatterND", "cpu")
def scatter_nd_cpu(data, indices, updates, *, reduction="none"):
    """reduction="add" on float32/float64 through :func:`_add_rows`; anything else as the reference."""
    if reduction != "add" or not _scatterable(data, indices, updates) or not data.size:
        return ref_indexing.scatter_nd(data, indices, updates, reduction=reduction)
    out = np.array(data, order="C")
    if _scatter_add(out, indices, updates, False) >= 0:
        raise AclError(ErrorCode.INVALID_PARAM,
                       f"ScatterND: index out of range for dimension(s) {data.shape[:indices.shape[-1]]}")
    return out


@kernel("UnsortedSegmentSum", "cpu", domain=ref_sparse.DOMAIN)
def unsorted_segment_sum_cpu(data, segment_ids, num_segments):
    """float32/float64 rows through :func:`_add_rows` (negative ids dropped, ids >= num_segments an error)."""
    n = int(np.asarray(num_segments).reshape(-1)[0])
    if type(data) is not np.ndarray or data.dtype not in _FLOATS or type(segment_ids) is not np.ndarray \
            or segment_ids.dtype.kind not in "iu" or data.shape[:segment_ids.ndim] != segment_ids.shape or n <= 0:
        return ref_sparse.unsorted_segment_sum(data, segment_ids, num_segments)
    out = np.zeros((n, *data.shape[segment_ids.ndim:]), data.dtype)
    bad = _scatter_add(out, segment_ids.reshape(-1, 1), data, True)
    if bad >= 0:
        raise AclError(ErrorCode.INVALID_PARAM, f"UnsortedSegmentSum: segment id "
                       f"{int(segment_ids.reshape(-1)[bad])} is out of range for {n} segments")
    return out
