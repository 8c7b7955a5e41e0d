"""Helpers the operator modules share (no operators live here)."""
import ml_dtypes
import numpy as np

LOW_FLOATS = frozenset(np.dtype(t) for t in (
    np.float16, ml_dtypes.bfloat16, ml_dtypes.float8_e4m3fn, ml_dtypes.float8_e4m3fnuz,
    ml_dtypes.float8_e5m2, ml_dtypes.float8_e5m2fnuz, ml_dtypes.float8_e8m0fnu, ml_dtypes.float4_e2m1fn))
ML_INTS = frozenset(np.dtype(t) for t in (ml_dtypes.int4, ml_dtypes.uint4, ml_dtypes.int2, ml_dtypes.uint2))


def widen(x: np.ndarray) -> np.ndarray:
    """``x`` in a type NumPy computes with exactly and accurately: low-precision floats as float32,
    4- and 2-bit integers as int64; other types unchanged."""
    if x.dtype in LOW_FLOATS:
        return x.astype(np.float32)
    return x.astype(np.int64) if x.dtype in ML_INTS else x


def compute_dtype(dtype) -> np.dtype:
    """The dtype to compute in: float32 for low-precision floats, the dtype itself otherwise."""
    dt = np.dtype(dtype)
    return np.dtype(np.float32) if dt in LOW_FLOATS else dt
