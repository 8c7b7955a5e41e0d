"""Loss functions (seed layer 2, NN library): NegativeLogLikelihoodLoss, SoftmaxCrossEntropyLoss.

Both take scores of shape (N, C, d1, ..., dk) and class targets of shape (N, d1, ..., dk). Targets equal
to ``ignore_index`` contribute nothing, and a "mean" reduction divides by the sum of the weights of the
targets that count (their number when no ``weight`` is given).
"""
import numpy as np

from opencann.errors import AclError, ErrorCode
from opencann.ops.common import widen
from opencann.ops.reduce import _log_softmax
from opencann.ops.registry import op

_REDUCTIONS = ("none", "sum", "mean")


def _nll(log_prob: np.ndarray, target: np.ndarray, weight, reduction: str, ignore_index) -> np.ndarray:
    """The loss, computed in ``log_prob``'s dtype (widened for float16/bfloat16)."""
    if reduction not in _REDUCTIONS:
        raise AclError(ErrorCode.INVALID_PARAM, f"reduction must be one of {_REDUCTIONS}, got '{reduction}'")
    if log_prob.ndim < 2 or target.shape != (log_prob.shape[0], *log_prob.shape[2:]):
        raise AclError(ErrorCode.INVALID_PARAM,
                       f"scores {log_prob.shape} need rank >= 2 and targets of shape (N, d1..dk), got {target.shape}")
    classes = log_prob.shape[1]
    counted = target != ignore_index if ignore_index is not None else np.ones(target.shape, dtype=bool)
    index = np.where(counted, target, 0).astype(np.int64)
    if index.size and (index.min() < 0 or index.max() >= classes):
        raise AclError(ErrorCode.INVALID_PARAM, f"target class out of range [0, {classes})")
    scores = widen(log_prob)
    picked = np.take_along_axis(scores, index[:, None], axis=1)[:, 0]
    w = counted.astype(scores.dtype)
    if weight is not None:
        w = w * widen(weight)[index]
    loss = -picked * w
    if reduction == "sum":
        loss = np.sum(loss)
    elif reduction == "mean":
        loss = np.sum(loss) / np.sum(w)
    return np.asarray(loss).astype(log_prob.dtype, copy=False)


@op("NegativeLogLikelihoodLoss", since=12)
def negative_log_likelihood_loss(x, target, weight=None, *, reduction="mean", ignore_index=None):
    return _nll(x, target, weight, reduction, ignore_index)


@op("SoftmaxCrossEntropyLoss", since=12)
def softmax_cross_entropy_loss(scores, labels, weights=None, *, reduction="mean", ignore_index=None):
    """The loss, and the log-probabilities (log-softmax over the class axis) as second output."""
    log_prob = _log_softmax(scores, 1) if scores.ndim >= 2 else scores
    return _nll(log_prob, labels, weights, reduction, ignore_index), log_prob
