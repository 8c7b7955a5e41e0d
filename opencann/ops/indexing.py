"""Indexing, selection and sorting (seed layer 2, "NN library").

Gathers (Gather, GatherElements, GatherND), scatters (Scatter, ScatterElements, ScatterND,
TensorScatter), selection (Compress, NonZero), and order statistics (TopK, Unique, ArgMax, ArgMin).
Negative indices count from the end of their axis, as in NumPy.
"""
import numpy as np

from opencann.errors import AclError, ErrorCode
from opencann.ops.registry import op
from opencann.ops.tensor import _axis

_REDUCERS = {"add": np.add, "mul": np.multiply, "max": np.maximum, "min": np.minimum}


def _along_axis(indices: np.ndarray, axis: int) -> tuple:
    """The fancy index that reads ``data[..., indices[i, j, ...], ...]`` at position ``axis``."""
    grid = list(np.ogrid[tuple(slice(n) for n in indices.shape)])
    grid[axis] = indices.astype(np.int64, copy=False)
    return tuple(grid)


def _check_bounds(indices: np.ndarray, dims, where: str) -> None:
    if indices.size and (np.any(indices < -np.asarray(dims)) or np.any(indices >= np.asarray(dims))):
        raise AclError(ErrorCode.INVALID_PARAM, f"{where}: index out of range for dimension(s) {dims}")


def _scatter(out: np.ndarray, index: tuple, updates: np.ndarray, reduction: str, where: str) -> np.ndarray:
    """Write ``updates`` into ``out[index]`` (a copy of the data), combining with ``reduction``."""
    if reduction == "none":
        out[index] = updates
        return out
    if reduction not in _REDUCERS:
        raise AclError(ErrorCode.INVALID_PARAM, f"{where}: unknown reduction '{reduction}'")
    _REDUCERS[reduction].at(out, index, updates)
    return out


# --- gathers --------------------------------------------------------------------------------------

@op("Gather", since=1)
def gather(data, indices, *, axis=0):
    ax = _axis(axis, data.ndim, "Gather")
    _check_bounds(indices, data.shape[ax], "Gather")
    return np.take(data, indices.astype(np.int64, copy=False), axis=ax)


@op("GatherElements", since=11)
def gather_elements(data, indices, *, axis=0):
    ax = _axis(axis, data.ndim, "GatherElements")
    _check_bounds(indices, data.shape[ax], "GatherElements")
    return data[_along_axis(indices, ax)]


@op("GatherND", since=11)
def gather_nd(data, indices, *, batch_dims=0):
    b = batch_dims
    m = indices.shape[-1]
    _check_bounds(indices, data.shape[b:b + m], "GatherND")
    batch = int(np.prod(data.shape[:b], dtype=np.int64))
    flat_data = data.reshape(batch, *data.shape[b:])
    flat_idx = indices.reshape(batch, -1, m).astype(np.int64, copy=False)
    rows = np.arange(batch)[:, None]
    picked = flat_data[(rows, *np.moveaxis(flat_idx, -1, 0))]
    return picked.reshape(*indices.shape[:-1], *data.shape[b + m:])


# --- scatters -------------------------------------------------------------------------------------

@op("Scatter", since=9)
@op("ScatterElements", since=11)
def scatter_elements(data, indices, updates, *, axis=0, reduction="none"):
    ax = _axis(axis, data.ndim, "ScatterElements")
    _check_bounds(indices, data.shape[ax], "ScatterElements")
    return _scatter(data.copy(), _along_axis(indices, ax), updates, reduction, "ScatterElements")


@op("ScatterND", since=11)
def scatter_nd(data, indices, updates, *, reduction="none"):
    m = indices.shape[-1]
    _check_bounds(indices, data.shape[:m], "ScatterND")
    index = tuple(np.moveaxis(indices.astype(np.int64, copy=False), -1, 0))
    return _scatter(data.copy(), index, updates, reduction, "ScatterND")


@op("TensorScatter", since=24)
def tensor_scatter(past_cache, update, write_indices=None, *, axis=-2, mode="linear"):
    """Write ``update`` into the cache along ``axis`` from each batch row's write index on."""
    ax = _axis(axis, past_cache.ndim, "TensorScatter")
    if ax == 0:
        raise AclError(ErrorCode.INVALID_PARAM, "TensorScatter: axis must not be the batch axis 0")
    out = past_cache.copy()
    cache, new = np.moveaxis(out, ax, 1), np.moveaxis(update, ax, 1)       # [B, S, ...] views
    batch, max_len, length = cache.shape[0], cache.shape[1], new.shape[1]
    start = np.zeros(batch, np.int64) if write_indices is None else write_indices.astype(np.int64)
    pos = start[:, None] + np.arange(length)
    if mode == "circular":
        pos %= max_len
    elif mode != "linear":
        raise AclError(ErrorCode.INVALID_PARAM, f"TensorScatter: unknown mode '{mode}'")
    if pos.size and (pos.min() < 0 or pos.max() >= max_len):
        raise AclError(ErrorCode.INVALID_PARAM, "TensorScatter: write past the end of the cache")
    cache[np.arange(batch)[:, None], pos] = new
    return out


# --- selection ------------------------------------------------------------------------------------

@op("Compress", since=9)
def compress(x, condition, *, axis=None):
    cond = np.asarray(condition, dtype=bool).reshape(-1)
    if axis is None:
        return np.compress(cond, x.reshape(-1))
    ax = _axis(axis, x.ndim, "Compress")
    if cond.size > x.shape[ax]:
        raise AclError(ErrorCode.INVALID_PARAM, f"Compress: condition longer than axis {ax}")
    return np.compress(cond, x, axis=ax)


@op("NonZero", since=9)
def nonzero(x):
    if x.ndim == 0:
        return np.zeros((0, int(bool(x))), dtype=np.int64)
    return np.array(np.nonzero(x), dtype=np.int64).reshape(x.ndim, -1)


# --- order statistics -----------------------------------------------------------------------------

@op("TopK", since=1)
@op("TopK", since=10)
def top_k(x, k=None, *, axis=-1, largest=1, sorted=1):
    """The k largest (or smallest) along ``axis``; equal values keep ascending index order."""
    ax = _axis(axis, x.ndim, "TopK")
    count = int(np.asarray(k).reshape(-1)[0])
    if not 0 <= count <= x.shape[ax]:
        raise AclError(ErrorCode.INVALID_PARAM, f"TopK: k={count} out of range for axis of {x.shape[ax]}")
    if largest:
        rev = np.flip(x, ax)
        order = np.flip(np.argsort(rev, axis=ax, kind="stable"), ax)
        order = x.shape[ax] - 1 - order
    else:
        order = np.argsort(x, axis=ax, kind="stable")
    idx = np.take(order, np.arange(count), axis=ax)
    return np.take_along_axis(x, idx, axis=ax), idx.astype(np.int64, copy=False)


@op("Unique", since=11)
def unique(x, *, axis=None, sorted=1):
    ax = None if axis is None else _axis(axis, x.ndim, "Unique")
    y, first, inverse, counts = np.unique(x if ax is not None else x.reshape(-1), return_index=True,
                                          return_inverse=True, return_counts=True, axis=ax)
    inverse = inverse.reshape(-1)
    if not sorted:
        perm = np.argsort(first, kind="stable")
        y = np.take(y, perm, axis=0 if ax is None else ax)
        first, counts = first[perm], counts[perm]
        inverse = np.argsort(perm)[inverse]
    return y, *(a.astype(np.int64, copy=False) for a in (first, inverse, counts))


def _arg(fn, data, axis: int, keepdims: int, select_last_index: int, where: str):
    ax = _axis(axis, data.ndim, where)
    if select_last_index:
        idx = data.shape[ax] - 1 - fn(np.flip(data, ax), axis=ax)
    else:
        idx = fn(data, axis=ax)
    idx = idx.astype(np.int64)
    return np.expand_dims(idx, ax) if keepdims else idx


@op("ArgMax", since=1)
def arg_max(data, *, axis=0, keepdims=1, select_last_index=0):
    return _arg(np.argmax, data, axis, keepdims, select_last_index, "ArgMax")


@op("ArgMin", since=1)
def arg_min(data, *, axis=0, keepdims=1, select_last_index=0):
    return _arg(np.argmin, data, axis, keepdims, select_last_index, "ArgMin")
