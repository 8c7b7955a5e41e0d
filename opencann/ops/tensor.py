"""Tensor creation and shape manipulation (seed layer 2, "NN library").

Creation (Constant, ConstantOfShape, Range, EyeLike, OneHot, Trilu), shape (Shape, Size, Identity,
Reshape, Flatten, Squeeze, Unsqueeze, Transpose, Expand, Tile), joining (Concat, Split), windows (Slice,
Pad, CenterCropPad), rearrangement (DepthToSpace, SpaceToDepth, Col2Im, ReverseSequence), scans (CumSum,
CumProd) and Einsum. Old operator versions that take an input as an attribute share the kernel: the
attribute arrives under the input's parameter name.
"""
import math

import numpy as np

from opencann.compiler import dtypes
from opencann.errors import AclError, ErrorCode
from opencann.ops.common import LOW_FLOATS, compute_dtype
from opencann.ops.registry import op


def _ints(v) -> list[int]:
    """A shape-like input or attribute (array, list, scalar) as a list of Python ints."""
    if type(v) is np.ndarray and v.dtype.kind in "iu":
        return (v if v.ndim == 1 else v.reshape(-1)).tolist()  # the usual 1-D shape input: no reshape (~0.6 us)
    return [int(i) for i in np.asarray(v).reshape(-1)]


def _axis(axis, rank: int, where: str) -> int:
    a = int(axis)
    if not -rank <= a < max(rank, 1):
        raise AclError(ErrorCode.INVALID_PARAM, f"{where}: axis {a} out of range for rank {rank}")
    return a % rank if rank else 0



# --- creation -------------------------------------------------------------------------------------

@op("Constant", since=1)
def constant(*, value=None, sparse_value=None, value_float=None, value_floats=None, value_int=None,
             value_ints=None, value_string=None, value_strings=None):
    if value is not None:
        return value
    if sparse_value is not None:
        return sparse_value
    if value_float is not None:
        return np.array(value_float, np.float32)
    if value_floats is not None:
        return np.array(value_floats, np.float32)
    if value_int is not None:
        return np.array(value_int, np.int64)
    if value_ints is not None:
        return np.array(value_ints, np.int64)
    if value_string is not None:
        return np.array(value_string, object)
    if value_strings is not None:
        return np.array(value_strings, object)
    raise AclError(ErrorCode.INVALID_PARAM, "Constant: no value attribute")


@op("ConstantOfShape", since=9)
def constant_of_shape(shape, *, value=None):
    fill = np.zeros(1, np.float32) if value is None else np.asarray(value)
    return np.full(_ints(shape), fill.reshape(-1)[0], dtype=fill.dtype)


@op("Range", since=11)
def range_(start, limit, delta, *, stash_type=1):
    """``start + i * delta`` below ``limit``; the bounds are scalars (or 1-element tensors)."""
    dt = start.dtype
    work = np.dtype(np.float32) if dt in LOW_FLOATS and stash_type else dt
    s, lim, d = (np.asarray(v).reshape(-1)[0].astype(work) for v in (start, limit, delta))
    if not d:
        raise AclError(ErrorCode.INVALID_PARAM, "Range: delta must not be 0")
    if dt.kind in "iu":
        return np.arange(int(s), int(lim), int(d), dtype=np.int64).astype(dt)
    n = max(math.ceil((float(lim) - float(s)) / float(d)), 0)
    return (s + np.arange(n, dtype=work) * d).astype(dt)


@op("EyeLike", since=9)
def eye_like(x, *, dtype=None, k=0):
    out = dtypes.from_onnx(dtype) if dtype is not None else x.dtype
    if x.ndim != 2:
        raise AclError(ErrorCode.INVALID_PARAM, f"EyeLike: input must be 2-D, got shape {x.shape}")
    return np.eye(*x.shape, k=k, dtype=out)


@op("OneHot", since=9)
def one_hot(indices, depth, values, *, axis=-1):
    d = int(np.asarray(depth).reshape(-1)[0])
    idx = np.asarray(indices).astype(np.int64)
    idx = np.where(idx < 0, idx + d, idx)
    ax = _axis(axis, idx.ndim + 1, "OneHot")
    positions = np.arange(d).reshape([d if i == ax else 1 for i in range(idx.ndim + 1)])
    mask = np.expand_dims(idx, ax) == positions
    return np.where(mask, values[1], values[0]).astype(values.dtype, copy=False)


@op("Trilu", since=14)
def trilu(x, k=None, *, upper=1):
    diag = 0 if k is None else int(np.asarray(k).reshape(-1)[0])
    return np.triu(x, diag) if upper else np.tril(x, diag)


# --- shape ----------------------------------------------------------------------------------------

@op("Shape", since=1)
def shape(data, *, start=0, end=None):
    return np.array(data.shape[start:end], dtype=np.int64)


@op("Size", since=1)
def size(data):
    return np.array(data.size, dtype=np.int64)


@op("Identity", since=1)
def identity(x):
    """Tensors, sequences and optionals pass through unchanged."""
    return list(x) if isinstance(x, list) else x


@op("Reshape", since=1)
@op("Reshape", since=5)
def reshape(data, shape=None, *, allowzero=0, consumed_inputs=None):
    """Reshape-1 takes ``shape`` as an attribute (and a legacy ``consumed_inputs``, ignored)."""
    dims = _ints(shape)
    if not allowzero and 0 in dims:
        dims = [data.shape[i] if d == 0 else d for i, d in enumerate(dims)]
    try:
        return data.reshape(dims)
    except ValueError:
        raise AclError(ErrorCode.INVALID_PARAM,
                       f"Reshape: cannot reshape {data.shape} to {_ints(shape)}") from None


@op("Flatten", since=1)
def flatten(x, *, axis=1):
    ax = axis + x.ndim if axis < 0 else axis
    if not 0 <= ax <= x.ndim:
        raise AclError(ErrorCode.INVALID_PARAM, f"Flatten: axis {axis} out of range for rank {x.ndim}")
    return x.reshape(math.prod(x.shape[:ax]), math.prod(x.shape[ax:]))


@op("Squeeze", since=1)
@op("Squeeze", since=13)
def squeeze(data, axes=None):
    if axes is None:
        return np.squeeze(data)
    return np.squeeze(data, axis=tuple(_axis(a, data.ndim, "Squeeze") for a in _ints(axes)))


@op("Unsqueeze", since=1)
@op("Unsqueeze", since=13)
def unsqueeze(data, axes=None):
    rank = data.ndim + len(_ints(axes))
    return np.expand_dims(data, tuple(_axis(a, rank, "Unsqueeze") for a in _ints(axes)))


@op("Transpose", since=1)
def transpose(data, *, perm=None):
    return np.transpose(data, perm)


@op("Expand", since=8)
def expand(x, shape):
    return np.array(np.broadcast_to(x, np.broadcast_shapes(x.shape, tuple(_ints(shape)))))


@op("Tile", since=1)
@op("Tile", since=6)
def tile(x, repeats, axis=None):
    """Tile-1 repeats ``repeats`` times along one ``axis`` input; Tile-6 takes one count per axis."""
    reps = _ints(repeats)
    if axis is not None:
        reps, ax = [1] * x.ndim, _axis(np.asarray(axis).reshape(-1)[0], x.ndim, "Tile")
        reps[ax] = _ints(repeats)[0]
    return np.tile(x, reps)


# --- joining and splitting ------------------------------------------------------------------------

@op("Concat", since=1)
def concat(*inputs, axis=1):
    return np.concatenate(inputs, axis=_axis(axis, inputs[0].ndim, "Concat"))


@op("Split", since=1)
@op("Split", since=13)
@op("Split", since=18)
def split_(x, split=None, *, axis=0, num_outputs=None, n_outputs):
    ax = _axis(axis, x.ndim, "Split")
    dim = x.shape[ax]
    if split is not None and np.asarray(split).size:
        sizes = _ints(split)
    else:
        count = num_outputs or n_outputs
        chunk = -(-dim // count)
        sizes = [min(chunk, max(dim - i * chunk, 0)) for i in range(count)]
    if sum(sizes) != dim or min(sizes, default=0) < 0:
        raise AclError(ErrorCode.INVALID_PARAM, f"Split: sizes {sizes} do not add up to dimension {dim}")
    lead, start, parts = (slice(None),) * ax, 0, []
    for size in sizes:  # views, as np.split gives them (at a tenth of its cost)
        parts.append(x[(*lead, slice(start, start + size))])
        start += size
    return tuple(parts)


# --- windows --------------------------------------------------------------------------------------

@op("Slice", since=1)
@op("Slice", since=10)
def slice_(data, starts=None, ends=None, axes=None, steps=None):
    begin, end = _ints(starts), _ints(ends)
    ax = list(range(len(begin))) if axes is None else [_axis(a, data.ndim, "Slice") for a in _ints(axes)]
    step = [1] * len(begin) if steps is None else _ints(steps)
    if 0 in step:
        raise AclError(ErrorCode.INVALID_PARAM, "Slice: step must not be 0")
    index = [slice(None)] * data.ndim
    for a, b, e, s in zip(ax, begin, end, step, strict=True):
        index[a] = slice(b, e, s)
    return data[tuple(index)]


@op("Pad", since=1)
@op("Pad", since=2)
@op("Pad", since=11)
@op("Pad", since=18)
def pad(data, pads=None, constant_value=None, axes=None, *, mode="constant", value=0.0, paddings=None):
    """Pad-1/2 carry ``paddings``/``pads`` and ``value`` as attributes; negative pads crop."""
    raw = _ints(pads if pads is not None else paddings)
    ax = range(data.ndim) if axes is None else [_axis(a, data.ndim, "Pad") for a in _ints(axes)]
    n = len(raw) // 2
    widths = [[0, 0] for _ in range(data.ndim)]
    for i, a in enumerate(ax):
        widths[a] = [raw[i], raw[i + n]]
    crop = tuple(slice(max(-b, 0), d - max(-e, 0)) for (b, e), d in zip(widths, data.shape, strict=True))
    data = data[crop]
    widths = [(max(b, 0), max(e, 0)) for b, e in widths]
    if mode == "constant":
        fill = value if constant_value is None else np.asarray(constant_value).reshape(-1)[0]
        return np.pad(data, widths, mode="constant", constant_values=np.asarray(fill).astype(data.dtype))
    if mode not in ("reflect", "edge", "wrap"):
        raise AclError(ErrorCode.INVALID_PARAM, f"Pad: unknown mode '{mode}'")
    return np.pad(data, widths, mode=mode)


@op("CenterCropPad", since=18)
def center_crop_pad(input_data, shape, *, axes=None):
    ax = range(input_data.ndim) if axes is None else [_axis(a, input_data.ndim, "CenterCropPad")
                                                       for a in axes]
    out_shape = list(input_data.shape)
    src = [slice(None)] * input_data.ndim
    dst = [slice(None)] * input_data.ndim
    for a, want in zip(ax, _ints(shape), strict=True):
        have = input_data.shape[a]
        out_shape[a] = want
        if have > want:
            src[a] = slice((have - want) // 2, (have - want) // 2 + want)
        elif want > have:
            dst[a] = slice((want - have) // 2, (want - have) // 2 + have)
    out = np.zeros(out_shape, dtype=input_data.dtype)
    out[tuple(dst)] = input_data[tuple(src)]
    return out


# --- rearrangement --------------------------------------------------------------------------------

@op("DepthToSpace", since=1)
def depth_to_space(x, *, blocksize, mode="DCR"):
    b, c, h, w = x.shape
    bs = blocksize
    if mode == "DCR":
        tmp = x.reshape(b, bs, bs, c // bs**2, h, w).transpose(0, 3, 4, 1, 5, 2)
    else:
        tmp = x.reshape(b, c // bs**2, bs, bs, h, w).transpose(0, 1, 4, 2, 5, 3)
    return tmp.reshape(b, c // bs**2, h * bs, w * bs)


@op("SpaceToDepth", since=1)
def space_to_depth(x, *, blocksize, mode="DCR"):
    b, c, h, w = x.shape
    bs = blocksize
    tmp = x.reshape(b, c, h // bs, bs, w // bs, bs)
    tmp = tmp.transpose(0, 3, 5, 1, 2, 4) if mode == "DCR" else tmp.transpose(0, 1, 3, 5, 2, 4)
    return tmp.reshape(b, c * bs**2, h // bs, w // bs)


@op("Col2Im", since=18)
def col2im(x, image_shape, block_shape, *, dilations=None, pads=None, strides=None):
    """Sum the columns of ``x`` [N, C*prod(block), L] back into images [N, C, *image_shape]."""
    img, block = _ints(image_shape), _ints(block_shape)
    nd = len(img)
    dil = dilations or [1] * nd
    stride = strides or [1] * nd
    pad = pads or [0] * (2 * nd)
    padded = [img[i] + pad[i] + pad[i + nd] for i in range(nd)]
    grid = [(padded[i] - dil[i] * (block[i] - 1) - 1) // stride[i] + 1 for i in range(nd)]
    k_pos = np.indices(block).reshape(nd, -1, 1)          # kernel offset per (k, 1)
    l_pos = np.indices(grid).reshape(nd, 1, -1)           # block origin per (1, l)
    coord = [l_pos[i] * stride[i] + k_pos[i] * dil[i] for i in range(nd)]
    flat = np.ravel_multi_index(coord, padded).reshape(-1)
    n, ckl, length = x.shape
    kk = math.prod(block)
    if ckl % kk or length != math.prod(grid):
        raise AclError(ErrorCode.INVALID_PARAM, f"Col2Im: input shape {x.shape} does not match blocks")
    cols = x.reshape(n, ckl // kk, kk * length)
    work = compute_dtype(x.dtype)
    out = np.zeros((n, ckl // kk, math.prod(padded)), dtype=work)
    np.add.at(out, (slice(None), slice(None), flat), cols.astype(work, copy=False))
    out = out.reshape(n, ckl // kk, *padded)
    crop = tuple(slice(pad[i], pad[i] + img[i]) for i in range(nd))
    return out[(slice(None), slice(None), *crop)].astype(x.dtype, copy=False)


@op("ReverseSequence", since=10)
def reverse_sequence(x, sequence_lens, *, batch_axis=1, time_axis=0):
    y = np.moveaxis(x, (time_axis, batch_axis), (0, 1))            # [T, B, ...]
    t = np.arange(y.shape[0])[:, None]
    lens = np.asarray(sequence_lens, dtype=np.int64)[None, :]
    src = np.where(t < lens, lens - 1 - t, t).reshape(*t.shape[:1], -1, *[1] * (x.ndim - 2))
    return np.moveaxis(np.take_along_axis(y, src, axis=0), (0, 1), (time_axis, batch_axis))


# --- scans and Einsum -----------------------------------------------------------------------------

def _scan(ufunc, x, axis, exclusive: int, reverse: int, identity_value):
    ax = _axis(np.asarray(axis).reshape(-1)[0], x.ndim, ufunc.__name__)
    work = compute_dtype(x.dtype)
    y = np.moveaxis(x.astype(work, copy=False), ax, 0)
    if reverse:
        y = y[::-1]
    if exclusive:
        y = np.concatenate([np.full_like(y[:1], identity_value), y[:-1]])[: y.shape[0]]
    y = ufunc.accumulate(y, axis=0, dtype=work)
    if reverse:
        y = y[::-1]
    return np.ascontiguousarray(np.moveaxis(y, 0, ax)).astype(x.dtype, copy=False)


@op("CumSum", since=11)
def cumsum(x, axis, *, exclusive=0, reverse=0):
    return _scan(np.add, x, axis, exclusive, reverse, 0)


@op("CumProd", since=26)
def cumprod(x, axis, *, exclusive=0, reverse=0):
    return _scan(np.multiply, x, axis, exclusive, reverse, 1)


@op("Einsum", since=12)
def einsum(*inputs, equation):
    """Contracted through BLAS where NumPy's optimizer finds a matrix product."""
    work = [x.astype(compute_dtype(x.dtype), copy=False) for x in inputs]
    out = np.einsum(equation.replace(" ", ""), *work, optimize=True)
    return np.asarray(out).astype(inputs[0].dtype, copy=False)
