"""Operators of TensorFlow that ONNX has no equivalent for (domain ``opencann``), with TensorFlow's
semantics: the gradient ops a traced training step emits (activation gradients, StridedSliceGrad,
BroadcastGradientArgs, ConcatOffset, MirrorPadGrad, DynamicStitch), elementwise math ONNX lacks, and
TensorFlow's own forms of slicing, one-hot, bit casts, diagonals, segment reductions and sorted search.
The stateless random ops are in :mod:`opencann.ops.tf_stateless`."""
import sys
import threading
import weakref

import ml_dtypes
import numpy as np

from opencann.compiler.dtypes import from_onnx
from opencann.errors import AclError, ErrorCode
from opencann.ops.common import compute_dtype
from opencann.ops.registry import op
from opencann.ops.tensor import cumprod as onnx_cumprod

DOMAIN = "opencann"


@op("DivNoNan", domain=DOMAIN)
def div_no_nan(x, y):
    """``x / y``, 0 where ``y`` is 0: a division only where ``y`` is not (no error-state switching); two
    scalars (a loss' mean) divide directly, ~4x faster."""
    if x.ndim == 0 == y.ndim:
        return np.array(x / y if y else 0, x.dtype)
    out = np.zeros(np.broadcast_shapes(x.shape, y.shape), x.dtype)
    np.divide(x, y, out=out, where=y != 0, casting="unsafe")
    return out


@op("FloorDiv", domain=DOMAIN)
def floor_div(x, y):
    return np.floor_divide(x, y).astype(x.dtype, copy=False)


@op("FloorMod", domain=DOMAIN)
def floor_mod(x, y):
    return np.mod(x, y).astype(x.dtype, copy=False)


@op("TruncateDiv", domain=DOMAIN)
def truncate_div(x, y):
    return (np.trunc(x / y) if x.dtype.kind == "f" else np.fix(np.true_divide(x, y))).astype(x.dtype)


@op("TransposeDynamic", domain=DOMAIN)
def transpose_dynamic(x, perm):
    return np.transpose(x, perm.astype(np.int64))


@op("StridedSlice", domain=DOMAIN)
def strided_slice(x, begin, end, strides, *, begin_mask=0, end_mask=0, ellipsis_mask=0, new_axis_mask=0,
                  shrink_axis_mask=0):
    """TensorFlow's strided slice: a NumPy index built from the spec and its masks."""
    return np.array(x[_strided_index(begin, end, strides, begin_mask, end_mask, ellipsis_mask, new_axis_mask,
                                     shrink_axis_mask)], order="C")


def _infer_like_inputs(node):
    """An activation's gradient: the type of its two inputs where they agree (TensorFlow gives them one shape)."""
    types = [getattr(v, "type", None) for v in node.inputs]
    return [types[0] if len(types) == 2 and types[0] is not None and types[0] == types[1] else None]


@op("ReluGrad", domain=DOMAIN, infer=_infer_like_inputs)
def relu_grad(gradients, features):
    return np.where(features > 0, gradients, np.zeros((), gradients.dtype))


def _bias_axis(rank: int, data_format) -> int:
    return 1 if data_format == "NCHW" and rank > 2 else rank - 1


def _infer_bias_add_grad(node):
    """The gradient's channel dimension."""
    from opencann.compiler.ir import TensorType

    t = node.inputs[0].type
    if not isinstance(t, TensorType) or not t.shape:
        return [None]
    return [TensorType(t.dtype, (t.shape[_bias_axis(len(t.shape), node.attrs.get("data_format", "NHWC"))],))]


@op("BiasAddGrad", domain=DOMAIN, infer=_infer_bias_add_grad)
def bias_add_grad(grad, *, data_format="NHWC"):
    axes = tuple(i for i in range(grad.ndim) if i != _bias_axis(grad.ndim, data_format))
    return grad.sum(axis=axes, dtype=compute_dtype(grad.dtype)).astype(grad.dtype)


def _log_softmax(logits):
    z = logits.astype(compute_dtype(logits.dtype))
    z = z - z.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def _infer_sparse_cross_entropy(node):
    """The loss has the logits' shape but the last dimension, the gradient the logits' type."""
    from opencann.compiler.ir import TensorType

    t = node.inputs[0].type
    if not isinstance(t, TensorType) or t.shape is None:
        return [None, None]
    return [TensorType(t.dtype, tuple(t.shape[:-1])), t]


@op("SparseSoftmaxCrossEntropyWithLogits", domain=DOMAIN, infer=_infer_sparse_cross_entropy)
def sparse_softmax_cross_entropy(features, labels):
    """(loss per example, gradient w.r.t. the logits). A label outside ``[0, classes)`` is an error, as in
    TensorFlow."""
    classes = features.shape[-1]
    if labels.size and (labels.min() < 0 or labels.max() >= classes):
        bad_label(labels.min() if labels.min() < 0 else labels.max(), classes)
    logp = _log_softmax(features)
    rows = np.arange(features.shape[0])
    loss = -logp[rows, labels.astype(np.int64)]
    grad = np.exp(logp)
    grad[rows, labels.astype(np.int64)] -= 1
    return loss.astype(features.dtype), grad.astype(features.dtype)


def bad_label(label, classes: int):
    raise AclError(ErrorCode.INVALID_PARAM, f"SparseSoftmaxCrossEntropyWithLogits: label {label} is outside the "
                   f"valid range [0, {classes})")


@op("SoftmaxCrossEntropyWithLogits", domain=DOMAIN)
def softmax_cross_entropy(features, labels):
    logp = _log_softmax(features)
    labels = labels.astype(logp.dtype)
    loss = -(labels * logp).sum(axis=-1)
    grad = np.exp(logp) * labels.sum(axis=-1, keepdims=True) - labels
    return loss.astype(features.dtype), grad.astype(features.dtype)


# --- gradients of elementwise functions (TensorFlow's formulas, in its operand order) -------------

def _zero(x):
    return np.zeros((), x.dtype)


@op("TanhGrad", domain=DOMAIN, infer=_infer_like_inputs)
def tanh_grad(y, dy):
    return (dy * (1 - y * y)).astype(y.dtype, copy=False)


@op("SigmoidGrad", domain=DOMAIN, infer=_infer_like_inputs)
def sigmoid_grad(y, dy):
    return (dy * y * (1 - y)).astype(y.dtype, copy=False)


@op("SqrtGrad", domain=DOMAIN, infer=_infer_like_inputs)
def sqrt_grad(y, dy):
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(dy == 0, _zero(y), np.asarray(0.5, y.dtype) * dy / y).astype(y.dtype, copy=False)


@op("RsqrtGrad", domain=DOMAIN, infer=_infer_like_inputs)
def rsqrt_grad(y, dy):
    return np.where(dy == 0, _zero(y), np.asarray(-0.5, y.dtype) * (dy * y) * (y * y)).astype(y.dtype, copy=False)


@op("ReciprocalGrad", domain=DOMAIN, infer=_infer_like_inputs)
def reciprocal_grad(y, dy):
    return (-dy * y * y).astype(y.dtype, copy=False)


@op("SoftplusGrad", domain=DOMAIN, infer=_infer_like_inputs)
def softplus_grad(dy, x):
    return (dy / (1 + np.exp(-x))).astype(x.dtype, copy=False)


@op("SoftsignGrad", domain=DOMAIN, infer=_infer_like_inputs)
def softsign_grad(dy, x):
    d = 1 + np.abs(x)
    return (dy / (d * d)).astype(x.dtype, copy=False)


@op("EluGrad", domain=DOMAIN, infer=_infer_like_inputs)
def elu_grad(dy, y):
    return np.where(y < 0, dy * (y + 1), dy).astype(y.dtype, copy=False)


@op("SeluGrad", domain=DOMAIN, infer=_infer_like_inputs)
def selu_grad(dy, y):
    scale, alpha = 1.0507009873554804934193349852946, 1.6732632423543772848170429916717
    return np.where(y < 0, dy * (y + np.asarray(scale * alpha, y.dtype)), dy * np.asarray(scale, y.dtype)).astype(
        y.dtype, copy=False)


@op("LeakyReluGrad", domain=DOMAIN, infer=_infer_like_inputs)
def leaky_relu_grad(dy, x, *, alpha=0.2):
    return np.where(x > 0, dy, dy * np.asarray(alpha, dy.dtype)).astype(dy.dtype, copy=False)


@op("Relu6Grad", domain=DOMAIN, infer=_infer_like_inputs)
def relu6_grad(dy, x):
    return np.where((x > 0) & (x < 6), dy, _zero(dy))


# --- elementwise math ONNX lacks ------------------------------------------------------------------

@op("Log1p", domain=DOMAIN)
def log1p(x):
    return np.log1p(x).astype(x.dtype, copy=False)


@op("Expm1", domain=DOMAIN)
def expm1(x):
    return np.expm1(x).astype(x.dtype, copy=False)


@op("Xlogy", domain=DOMAIN)
def xlogy(x, y):
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(x == 0, _zero(x), x * np.log(y)).astype(x.dtype, copy=False)


@op("Xdivy", domain=DOMAIN)
def xdivy(x, y):
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(x == 0, _zero(x), x / y).astype(x.dtype, copy=False)


@op("MulNoNan", domain=DOMAIN)
def mul_no_nan(x, y):
    with np.errstate(invalid="ignore"):
        return np.where(y == 0, _zero(x), x * y).astype(x.dtype, copy=False)


@op("Bitcast", domain=DOMAIN)
def bitcast(x, *, to):
    """TensorFlow's Bitcast: a wider type eats the last dimension, a narrower one adds a dimension."""
    dt = from_onnx(to)
    x = np.ascontiguousarray(x)
    if dt.itemsize < x.dtype.itemsize:
        return x.view(dt).reshape(*x.shape, x.dtype.itemsize // dt.itemsize)
    return x.view(dt).reshape(x.shape[:-1] if dt.itemsize > x.dtype.itemsize else x.shape)


# --- shapes, slicing and their gradients ----------------------------------------------------------

@op("BroadcastGradientArgs", domain=DOMAIN)
def broadcast_gradient_args(s0, s1):
    """The axes to sum each operand's gradient over (TF's BCast: none when the shapes are equal)."""
    return tuple(np.asarray(r, s0.dtype) for r in broadcast_reduce_axes(s0.tolist(), s1.tolist()))


def broadcast_reduce_axes(s0: list[int], s1: list[int]) -> tuple[list[int], list[int]]:
    if s0 == s1:
        return [], []
    rank = max(len(s0), len(s1))
    padded = ([1] * (rank - len(s0)) + s0, [1] * (rank - len(s1)) + s1)
    return tuple([i for i, d in enumerate(p) if d == 1] for p in padded)


@op("ConcatOffset", domain=DOMAIN)
def concat_offset(concat_dim, *shapes):
    axis = int(concat_dim) % len(shapes[0])
    starts = np.cumsum([0] + [int(s[axis]) for s in shapes[:-1]])
    out = []
    for start, s in zip(starts, shapes):
        offset = np.zeros_like(s)
        offset[axis] = start
        out.append(offset)
    return tuple(out)


def _strided_index(begin, end, strides, begin_mask, end_mask, ellipsis_mask, new_axis_mask, shrink_axis_mask):
    index = []
    for i, (b, e, s) in enumerate(zip(begin.tolist(), end.tolist(), strides.tolist())):
        bit = 1 << i
        if ellipsis_mask & bit:
            index.append(Ellipsis)
        elif new_axis_mask & bit:
            index.append(None)
        elif shrink_axis_mask & bit:
            index.append(int(b))
        else:
            index.append(slice(None if begin_mask & bit else int(b), None if end_mask & bit else int(e), int(s)))
    return tuple(index)


@op("StridedSliceGrad", domain=DOMAIN)
def strided_slice_grad(shape, begin, end, strides, dy, *, begin_mask=0, end_mask=0, ellipsis_mask=0,
                       new_axis_mask=0, shrink_axis_mask=0):
    """The gradient of StridedSlice: ``dy`` scattered into zeros of the input's shape."""
    out = np.zeros([int(d) for d in shape], dy.dtype)
    view = out[_strided_index(begin, end, strides, begin_mask, end_mask, ellipsis_mask, new_axis_mask,
                              shrink_axis_mask)]
    view[...] = dy.reshape(view.shape)
    return out


@op("OneHot", domain=DOMAIN)
def one_hot(indices, depth, on_value, off_value, *, axis=-1):
    """TensorFlow's OneHot: indices outside [0, depth) give all-off rows (no wrapping of negatives)."""
    n = int(depth)
    hot = indices[..., None] == np.arange(n, dtype=indices.dtype)
    out = np.where(hot, on_value, off_value).astype(on_value.dtype, copy=False)
    return np.ascontiguousarray(np.moveaxis(out, -1, axis))


@op("ListDiff", domain=DOMAIN)
def list_diff(x, y, *, out_idx=7):
    """The values of ``x`` not in ``y`` (in order), and their positions in ``x``."""
    keep = np.flatnonzero(~np.isin(x, y))
    return x[keep], keep.astype(from_onnx(out_idx))


def _mirror_sources(n: int, before: int, after: int, mode: str) -> np.ndarray:
    """For each position of a mirror-padded axis, the input position it copies."""
    shift = 1 if mode == "REFLECT" else 0
    head = np.arange(before, 0, -1) - 1 + shift
    tail = n - 1 - shift - np.arange(after)
    return np.concatenate([head, np.arange(n), tail])


@op("MirrorPad", domain=DOMAIN)
def mirror_pad(x, paddings, *, mode="REFLECT"):
    return np.pad(x, np.asarray(paddings, np.int64).tolist(), mode="reflect" if mode == "REFLECT" else "symmetric")


@op("MirrorPadGrad", domain=DOMAIN)
def mirror_pad_grad(grad, paddings, *, mode="REFLECT"):
    """The gradient of MirrorPad: each padded position's gradient added back onto its source."""
    out = grad
    for axis, (before, after) in enumerate(np.asarray(paddings, np.int64).tolist()):
        n = out.shape[axis] - before - after
        summed = np.zeros((*out.shape[:axis], n, *out.shape[axis + 1:]), grad.dtype)
        np.add.at(np.moveaxis(summed, axis, 0), _mirror_sources(n, before, after, mode), np.moveaxis(out, axis, 0))
        out = summed
    return out


@op("Cumprod", domain=DOMAIN)
def cumprod(x, axis, *, exclusive=0, reverse=0):
    """TensorFlow's Cumprod (ONNX has CumProd only from opset 26)."""
    return onnx_cumprod(x, axis, exclusive=exclusive, reverse=reverse)


@op("DynamicStitch", domain=DOMAIN)
def dynamic_stitch(*indices_then_data):
    """``merged[indices[m][i]] = data[m][i]``; where indices repeat, the later slice wins."""
    n = len(indices_then_data) // 2
    indices, data = indices_then_data[:n], indices_then_data[n:]
    tail = data[0].shape[np.ndim(indices[0]):]
    flat = np.concatenate([np.reshape(i, -1) for i in indices]).astype(np.int64)
    rows = np.concatenate([d.reshape(-1, *tail) for d in data])
    out = np.zeros((int(flat.max()) + 1 if flat.size else 0, *tail), data[0].dtype)
    targets, last = np.unique(flat[::-1], return_index=True)
    out[targets] = rows[flat.size - 1 - last]
    return out


@op("Atan2", domain=DOMAIN)
def atan2(y, x):
    return np.arctan2(y, x).astype(y.dtype, copy=False)


@op("Roll", domain=DOMAIN)
def roll(x, shift, axis):
    """Elements shifted cyclically; shifts of a repeated axis add up (as NumPy's and TensorFlow's do)."""
    return np.roll(x, np.asarray(shift).tolist(), np.asarray(axis).tolist())


@op("MatrixBandPart", domain=DOMAIN)
def matrix_band_part(x, num_lower, num_upper):
    """Keeps ``num_lower`` sub- and ``num_upper`` super-diagonals of the last two axes (negative: all)."""
    rows, cols = np.arange(x.shape[-2])[:, None], np.arange(x.shape[-1])[None, :]
    lower, upper = int(num_lower), int(num_upper)
    keep = ((lower < 0) | (rows - cols <= lower)) & ((upper < 0) | (cols - rows <= upper))
    return np.where(keep, x, np.zeros((), x.dtype))


def _one_diagonal(k) -> int:
    ks = np.asarray(k).reshape(-1)
    if ks.size != 1 and ks[0] != ks[-1]:
        raise AclError(ErrorCode.FEATURE_UNSUPPORTED, "matrix diagonals: only one diagonal (scalar k) is supported")
    return int(ks[0])


@op("MatrixDiagPartV3", domain=DOMAIN)
def matrix_diag_part(x, k, padding_value):
    """Diagonal ``k`` of the last two axes."""
    d = _one_diagonal(k)
    return np.ascontiguousarray(np.diagonal(x, offset=d, axis1=-2, axis2=-1))


@op("MatrixDiagV3", domain=DOMAIN)
def matrix_diag(diagonal, k, num_rows, num_cols, padding_value):
    """Matrices with ``diagonal`` on diagonal ``k`` and ``padding_value`` elsewhere."""
    d, n = _one_diagonal(k), diagonal.shape[-1]
    rows = int(num_rows) if int(num_rows) >= 0 else n + max(-d, 0)
    cols = int(num_cols) if int(num_cols) >= 0 else n + max(d, 0)
    out = np.full((*diagonal.shape[:-1], rows, cols), np.asarray(padding_value).astype(diagonal.dtype))
    i = np.arange(n)
    out[..., i + max(-d, 0), i + max(d, 0)] = diagonal
    return out


@op("MatrixSetDiagV3", domain=DOMAIN)
def matrix_set_diag(x, diagonal, k):
    """``x`` with diagonal ``k`` of its last two axes replaced by ``diagonal``."""
    d = _one_diagonal(k)
    out = x.copy()
    i = np.arange(diagonal.shape[-1])
    out[..., i + max(-d, 0), i + max(d, 0)] = diagonal
    return out


@op("SearchSorted", domain=DOMAIN)
def search_sorted(sorted_inputs, values, *, side="left", out_type=6):
    """LowerBound (side left) / UpperBound (right), row by row of the leading axis."""
    found = [np.searchsorted(s, v, side=side) for s, v in zip(sorted_inputs, values)]
    return np.asarray(found, from_onnx(out_type)).reshape(values.shape)


SEGMENT_UFUNCS = {"sum": np.add, "prod": np.multiply, "max": np.maximum, "min": np.minimum, "mean": np.add}


@op("SegmentReduce", domain=DOMAIN)
def segment_reduce(data, segment_ids, num_segments=None, *, reduction="sum"):
    """Rows of ``data`` reduced per segment id (negative ids dropped). Without ``num_segments`` the ids
    are TensorFlow's sorted Segment* ones and empty segments give 0; with it (UnsortedSegment*) they give
    the reduction's identity (the dtype's lowest value for max, highest for min)."""
    ids = segment_ids.astype(np.int64).reshape(-1)
    rows = data.reshape(ids.size, *data.shape[segment_ids.ndim:])
    keep = ids >= 0
    ids, rows = ids[keep], rows[keep]
    n = int(num_segments) if num_segments is not None else (int(ids.max()) + 1 if ids.size else 0)
    info = np.iinfo(data.dtype) if data.dtype.kind in "iu" else ml_dtypes.finfo(data.dtype)
    identity = {"max": info.min, "min": info.max, "prod": 1}.get(reduction, 0)
    out = np.full((n, *rows.shape[1:]), identity, data.dtype)
    SEGMENT_UFUNCS[reduction].at(out, ids, rows)
    if reduction == "mean":
        counts = np.bincount(ids, minlength=n).reshape(-1, *[1] * (out.ndim - 1))
        out = (out / np.maximum(counts, 1)).astype(data.dtype)
    if num_segments is None:
        out[np.bincount(ids, minlength=n) == 0] = 0
    return out


@op("InTopK", domain=DOMAIN)
def in_top_k(predictions, targets, k):
    """Whether each row's target class is among its ``k`` largest predictions (ties count as in)."""
    t = targets.astype(np.int64)
    valid = (t >= 0) & (t < predictions.shape[1])
    target = predictions[np.arange(t.size), np.clip(t, 0, predictions.shape[1] - 1)]
    better = (predictions > target[:, None]).sum(axis=1)
    return valid & np.isfinite(target) & (better < int(k))


# --- new variable values for TensorFlow ------------------------------------------------------------------------

ALIGNMENT = 64  # bytes: TensorFlow adopts a NumPy buffer aligned this way instead of copying it


def aligned_empty(shape: tuple, dtype) -> np.ndarray:
    """An uninitialized array whose data starts on an :data:`ALIGNMENT` boundary: a view of a fresh byte array
    at most that much longer."""
    dtype = np.dtype(dtype)
    nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    raw = np.empty(nbytes + ALIGNMENT, np.uint8)
    start = -raw.ctypes.data % ALIGNMENT
    return raw[start:start + nbytes].view(dtype).reshape(shape)


POOLED: weakref.WeakValueDictionary = weakref.WeakValueDictionary()  # id -> buffer of an UpdatePool


class UpdatePool:
    """Aligned buffers for one FusedUpdate node's new variable values, reused across steps. TensorFlow adopts a
    buffer (the adapter's ``handoff``) and holds it while the variable has that value; once TF drops it (the next
    step assigned a newer one) and nothing else refers to it, only the pool does, and the next step writes into
    it again: no fresh pages (~20% of a large Adam update's time). A buffer TF, a user's tensor or any view still
    holds is never handed out. At most ``depth`` buffers per shape and dtype are kept: two per output (the
    variable's value and the next one) cost no more memory than a step's peak."""

    def __init__(self, depth: int):
        self.depth = depth
        self.kept: dict[tuple, list[np.ndarray]] = {}
        self.lock = threading.Lock()

    def empty(self, shape: tuple, dtype) -> np.ndarray:
        dtype = np.dtype(dtype)
        with self.lock:
            kept = self.kept.setdefault((shape, dtype), [])
            for buf in kept:  # free: referred to by ``kept``, ``buf`` and getrefcount's argument; its base by buf
                if sys.getrefcount(buf) == 3 and sys.getrefcount(buf.base) == 2:
                    return buf
            buf = aligned_empty(shape, dtype)
            if len(kept) < self.depth:
                kept.append(buf)
                POOLED[id(buf)] = buf
            return buf


def pooled(value) -> bool:
    """Whether ``value`` is an :class:`UpdatePool` buffer (the pool's reference is then not another holder)."""
    return POOLED.get(id(value)) is value


_SPLIT: dict[int, list] = {}  # id of a block split into views -> [weak reference to it, views alive, their refs]


def split_views(block: np.ndarray, views: list) -> list:
    """Records ``views``: disjoint views of ``block`` (an array that owns its data) that will be its only holders
    (see :func:`sole_split_view`). ``elementwise_chains`` splits its results this way: the adapter hands them to
    TF without copying them."""
    if block.base is None:
        key = id(block)
        entry = _SPLIT[key] = [weakref.ref(block, lambda _: _SPLIT.pop(key, None)), len(views), None]

        def gone(_):
            entry[1] -= 1

        entry[2] = [weakref.ref(v, gone) for v in views]
    return views


def sole_split_view(value: np.ndarray) -> bool:
    """Whether ``value`` is one of :func:`split_views`' views and only those views refer to their block: no
    other view can overlap it then."""
    base = value.base
    entry = _SPLIT.get(id(base))
    if entry is None or entry[0]() is not base:
        return False
    return sys.getrefcount(base) <= entry[1] + 2  # the views', ``base`` and getrefcount's argument


_pools: dict[int, UpdatePool] = {}
_pools_lock = threading.Lock()


def _pool_for(body) -> UpdatePool:
    pool = _pools.get(id(body))
    if pool is None:
        with _pools_lock:
            pool = _pools.get(id(body))
            if pool is None:
                pool = _pools[id(body)] = UpdatePool(2 * len(body.outputs))
                weakref.finalize(body, _pools.pop, id(body), None)
    return pool


def _infer_fused_update(node):
    from opencann.tbe.fusion import _infer

    return _infer(node)


@op("FusedUpdate", domain=DOMAIN, infer=_infer_fused_update, graph_data=True)
def fused_update(*inputs, body):
    """``opencann::FusedElementwise`` whose results are new values of TensorFlow variables: the same TBE
    kernel, writing into aligned buffers of the node's :class:`UpdatePool`, which the TF adapter hands over
    without a copy."""
    from opencann.tbe.fusion import kernel_for

    return kernel_for(body)(*(np.asarray(x) for x in inputs), empty=_pool_for(body).empty)


CHAIN_UFUNCS = {"Add": np.add, "Sub": np.subtract, "Mul": np.multiply, "Div": np.divide, "Sqrt": np.sqrt,
                "Neg": np.negative, "Abs": np.absolute, "Pow": np.power}


def _infer_chain(node):
    from opencann.compiler.ir import TensorType

    types = [v.type for v in node.inputs]
    ops, operands = node.attrs["ops"], node.attrs["operands"]
    for k in range(len(ops)):
        args = [types[i] for i in operands[2 * k:2 * k + 2] if i >= 0]
        if any(t is None or t.shape is None for t in args):
            return [None] * len(node.outputs)
        types.append(TensorType(args[0].dtype, np.broadcast_shapes(*(t.shape for t in args))))
    return [types[i] for i in node.attrs["results"]]


@op("ElementwiseChain", domain=DOMAIN, infer=_infer_chain)
def elementwise_chain(*inputs, ops, operands, results):
    """ONNX elementwise ops (:data:`CHAIN_UFUNCS`) run in order as their NumPy ufuncs: op ``k`` reads slots
    ``operands[2k]`` and ``operands[2k+1]`` (-1: unary) of the inputs followed by the results so far;
    returns the slots ``results`` (made by :mod:`opencann.compiler.passes.fuse_training`)."""
    return _bind_chain(ops=ops, operands=operands, results=results)(*inputs)


def _bind_chain(*, ops, operands, results):
    """:func:`elementwise_chain` with its attributes bound: each op's ufunc and operand slots looked up once."""
    steps = [(CHAIN_UFUNCS[name], operands[2 * k], operands[2 * k + 1]) for k, name in enumerate(ops)]
    results = list(results)
    single = results[0] if len(results) == 1 else None

    def run(*inputs):
        slots = list(inputs)
        with np.errstate(all="ignore"):
            for ufunc, a, b in steps:
                slots.append(ufunc(slots[a]) if b < 0 else ufunc(slots[a], slots[b]))
        return slots[single] if single is not None else tuple(slots[i] for i in results)

    return run


elementwise_chain.bind_attrs = _bind_chain


CHAIN_CODES = {name: k for k, name in enumerate(("Add", "Sub", "Mul", "Div", "Sqrt", "Neg", "Abs"))}  # _run_chains
_LANES = 16  # float32 elements in ALIGNMENT bytes
_ZEROS = np.zeros(_LANES, np.float32)
_CHAIN_BLOCK = 256  # elements per pass over the ops: a block's rows stay in L1 (512 spilled at 15 ops: 18% slower)


_chain_kernel = None


def _chain_jit():
    """:func:`_run_chains`' compiled kernel (Numba imported at the first merged chain)."""
    global _chain_kernel
    if _chain_kernel is None:
        import numba

        _chain_kernel = numba.njit(cache=True, nogil=True, error_model="numpy")(_run_chains)
    return _chain_kernel


def _compile_chains(layout: tuple) -> None:
    """Compile (or load) :func:`_run_chains` for float32 data and ``layout``'s arrays now, not at the first step:
    Numba keeps the tracebacks of typing attempts, and with them the frames of the first call's caller, whose
    result block would then look held by someone else (:func:`sole_split_view`) and be copied."""
    from numba import typeof, types

    rows = types.float32[:, ::1]
    _chain_jit().compile((rows, types.float32[::1], *(typeof(a) for a in layout), rows))


def _run_chains(x, s, codes, operands, results, out):
    """The ops ``codes`` over the columns of ``x`` (one row per chain input) in blocks; operand ``j`` of op ``k``
    is ``operands[k, j]``: a row of ``x`` (< ``len(x)``), an op's result (``len(x)`` + op), or a scalar
    ``s[-1 - operand]`` (< 0). Rows ``results`` of the op results go to the rows of ``out``. The same IEEE
    operations, element by element, as the NumPy ufuncs of :data:`CHAIN_UFUNCS` (NumPy's error model: x / 0
    is inf or nan)."""
    (n_in, n), n_ops, block = x.shape, len(codes), _CHAIN_BLOCK
    rows = np.empty((n_in + n_ops + len(s), block), x.dtype)  # a block of x, the ops' results, the scalars
    for j in range(len(s)):
        rows[n_in + n_ops + j, :] = s[j]
    refs = np.where(operands < 0, n_in + n_ops - 1 - operands, operands)
    for start in range(0, n, block):
        m = min(block, n - start)
        for j in range(n_in):  # explicit loops: Numba's 2-D slice copies do not vectorize (~2x slower here)
            src, dst = x[j, start:start + m], rows[j]
            for i in range(m):
                dst[i] = src[i]
        for k in range(n_ops):
            av, bv, dst, code = rows[refs[k, 0]], rows[refs[k, 1]], rows[n_in + k], codes[k]
            if code == 0:
                for i in range(m):
                    dst[i] = av[i] + bv[i]
            elif code == 1:
                for i in range(m):
                    dst[i] = av[i] - bv[i]
            elif code == 2:
                for i in range(m):
                    dst[i] = av[i] * bv[i]
            elif code == 3:
                for i in range(m):
                    dst[i] = av[i] / bv[i]
            elif code == 4:
                for i in range(m):
                    dst[i] = np.sqrt(av[i])
            elif code == 5:
                for i in range(m):
                    dst[i] = -av[i]
            else:
                for i in range(m):
                    dst[i] = abs(av[i])
        for r in range(len(results)):
            src, dst = rows[n_in + results[r]], out[r, start:start + m]
            for i in range(m):
                dst[i] = src[i]


def _infer_chains(node):
    """Each piece's results have its first input's type."""
    pieces, results = node.attrs["pieces"], len(node.attrs["results"])
    per = (len(node.inputs) - len(node.attrs["shared"])) // pieces
    return [node.inputs[p * per].type for p in range(pieces) for _ in range(results)]


@op("ElementwiseChains", domain=DOMAIN, infer=_infer_chains)
def elementwise_chains(*inputs, ops, operands, results, shared, pieces, n_inputs):
    """One :func:`elementwise_chain` (``ops``, ``operands``, ``results``) run over ``pieces`` same-shaped
    variables at once (made by :func:`opencann.compiler.passes.fuse_training.merge_chains`): the inputs are each
    piece's own inputs (the chain's ``n_inputs`` inputs but those at ``shared``), piece after piece, then the
    ``shared`` ones (scalars); returns each piece's results, piece after piece. Float32 runs in one compiled
    kernel over the pieces side by side, in blocks (:func:`_run_chains`), its results 64-byte aligned views of
    one block (:func:`split_views`: TF adopts them); other dtypes piece by piece."""
    return _bind_chains(ops=ops, operands=operands, results=results, shared=shared, pieces=pieces,
                        n_inputs=n_inputs)(*inputs)


def _bind_chains(*, ops, operands, results, shared, pieces, n_inputs):
    """:func:`elementwise_chains` with its attributes bound (the compiled kernel's operand layout made once)."""
    n_shared, layout = len(shared), _chain_layout(ops, operands, results, shared, n_inputs)
    _compile_chains(layout)

    def run(*inputs):
        n_own = len(inputs) - n_shared
        per, dtype = n_own // pieces, inputs[0].dtype
        if dtype != np.float32:
            common = inputs[n_own:]
            return tuple(y for p in range(pieces)
                         for y in _chain_piece(inputs[p * per:(p + 1) * per], common, shared, ops, operands, results))
        sizes = [inputs[p * per].size for p in range(pieces)]
        pads = [(p + 1, _ZEROS[:-size % _LANES]) for p, size in enumerate(sizes) if size % _LANES][::-1]
        x = np.empty((per, sum(sizes) + sum(pad.size for _, pad in pads)), dtype)
        for j in range(per):  # each piece's columns start 64-byte aligned: zeros after a piece that needs them
            row = list(inputs[j:n_own:per])
            for at, pad in pads:
                row.insert(at, pad)
            np.concatenate(row, axis=None, out=x[j])
        raw = np.empty(len(results) * x.shape[1] + _LANES, dtype)
        first = -raw.__array_interface__["data"][0] % ALIGNMENT // dtype.itemsize
        out = raw[first:first + len(results) * x.shape[1]].reshape(len(results), x.shape[1])
        _chain_jit()(x, np.array(inputs[n_own:], dtype), *layout, out)
        outs, start = [], 0
        for p in range(pieces):
            end = start + sizes[p]
            outs.extend(out[:, start:end].reshape((len(results), *inputs[p * per].shape)))  # aligned, contiguous
            start = end + -end % _LANES
        return tuple(split_views(raw, outs))  # TF adopts them as they are

    return run


elementwise_chains.bind_attrs = _bind_chains


def _chain_piece(piece, common, shared, ops, operands, results):
    """One piece's results by :func:`elementwise_chain` (its inputs put back in the chain's order)."""
    own, shared_at = iter(piece), dict(zip(shared, common))
    args = [shared_at[i] if i in shared_at else next(own) for i in range(len(piece) + len(common))]
    out = elementwise_chain(*args, ops=ops, operands=operands, results=results)
    return list(out) if isinstance(out, tuple) else [out]


def _chain_layout(ops, operands, results, shared, n_inputs):
    """:func:`_run_chains`' ``codes``, ``operands`` and ``results`` for a chain of ``n_inputs`` inputs whose
    inputs at ``shared`` are scalars and the others rows of ``x``."""
    row, scalar = {}, {}
    for i in range(n_inputs):
        if i in shared:
            scalar[i] = -1 - len(scalar)
        else:
            row[i] = len(row)
    per = len(row)
    refs = [0 if i < 0 else row.get(i, scalar.get(i)) if i < n_inputs else per + i - n_inputs for i in operands]
    codes = np.array([CHAIN_CODES[name] for name in ops], np.int64)
    return codes, np.array(refs, np.int64).reshape(-1, 2), np.array([i - n_inputs for i in results], np.int64)
