"""Linear algebra (seed layer 2, NN and BLAS library): MatMul, Gemm, Det.

Products go to BLAS through ``np.matmul``; float16 and bfloat16 operands are multiplied in float32
(so they accumulate in float32) and the result is rounded back once.
"""
import numpy as np

from opencann.errors import AclError, ErrorCode
from opencann.ops.common import compute_dtype
from opencann.ops.registry import op


def _matmul(a: np.ndarray, b: np.ndarray, ct: np.dtype) -> np.ndarray:
    """``a @ b`` computed in ``ct``."""
    try:
        return np.matmul(a.astype(ct, copy=False), b.astype(ct, copy=False))
    except ValueError as exc:
        raise AclError(ErrorCode.INVALID_PARAM, f"MatMul shapes {a.shape} and {b.shape}: {exc}") from None


@op("MatMul", since=1)
def matmul(a, b):
    """N-D batched product with NumPy's (and ONNX's) 1-D promotion rules."""
    return _matmul(a, b, compute_dtype(a.dtype)).astype(a.dtype, copy=False)


@op("Gemm", since=1)
def gemm(a, b, c=None, *, alpha=1.0, beta=1.0, transA=0, transB=0, broadcast=1):
    """``alpha * A' @ B' + beta * C``; C broadcasts to the result (opsets < 7 needed ``broadcast=1``)."""
    if a.ndim != 2 or b.ndim != 2:
        raise AclError(ErrorCode.INVALID_PARAM, f"Gemm needs 2-D A and B, got {a.shape} and {b.shape}")
    if not broadcast and c is not None and c.shape != (a.shape[transA], b.shape[1 - transB]):
        raise AclError(ErrorCode.INVALID_PARAM, f"Gemm C shape {c.shape} needs broadcast=1")
    ct = compute_dtype(a.dtype)
    y = _matmul(a.T if transA else a, b.T if transB else b, ct)
    if alpha != 1.0:
        y = y * alpha
    if c is not None and beta != 0.0:
        y = y + c.astype(ct, copy=False) * beta
    return y.astype(a.dtype, copy=False)


@op("Det", since=11)
def det(x):
    """Determinant of the last two dimensions (batched over the leading ones)."""
    if x.ndim < 2 or x.shape[-1] != x.shape[-2]:
        raise AclError(ErrorCode.INVALID_PARAM, f"Det needs square matrices in the last two dims, got {x.shape}")
    return np.linalg.det(x.astype(compute_dtype(x.dtype), copy=False)).astype(x.dtype, copy=False)
