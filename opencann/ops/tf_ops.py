"""Operators of TensorFlow that ONNX has no equivalent for (domain ``opencann``): the forward ops and
the gradient ops a traced training step emits. Semantics are TensorFlow's."""
import numpy as np

from opencann.ops.common import compute_dtype
from opencann.ops.registry import op

DOMAIN = "opencann"


@op("DivNoNan", domain=DOMAIN)
def div_no_nan(x, y):
    with np.errstate(all="ignore"):
        out = np.where(y == 0, np.zeros((), x.dtype), x / np.where(y == 0, np.ones((), y.dtype), y))
    return out.astype(x.dtype, copy=False)


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
    return np.ascontiguousarray(x[tuple(index)])


@op("ReluGrad", domain=DOMAIN)
def relu_grad(gradients, features):
    return np.where(features > 0, gradients, np.zeros((), gradients.dtype))


@op("BiasAddGrad", domain=DOMAIN)
def bias_add_grad(grad, *, data_format="NHWC"):
    axes = tuple(i for i in range(grad.ndim) if i != (1 if data_format == "NCHW" and grad.ndim > 2 else grad.ndim - 1))
    return grad.sum(axis=axes, dtype=compute_dtype(grad.dtype)).astype(grad.dtype)


def _log_softmax(logits):
    z = logits.astype(compute_dtype(logits.dtype))
    z = z - z.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


@op("SparseSoftmaxCrossEntropyWithLogits", domain=DOMAIN)
def sparse_softmax_cross_entropy(features, labels):
    """(loss per example, gradient w.r.t. the logits)."""
    logp = _log_softmax(features)
    rows = np.arange(features.shape[0])
    loss = -logp[rows, labels.astype(np.int64)]
    grad = np.exp(logp)
    grad[rows, labels.astype(np.int64)] -= 1
    return loss.astype(features.dtype), grad.astype(features.dtype)


@op("SoftmaxCrossEntropyWithLogits", domain=DOMAIN)
def softmax_cross_entropy(features, labels):
    logp = _log_softmax(features)
    labels = labels.astype(logp.dtype)
    loss = -(labels * logp).sum(axis=-1)
    grad = np.exp(logp) * labels.sum(axis=-1, keepdims=True) - labels
    return loss.astype(features.dtype), grad.astype(features.dtype)
