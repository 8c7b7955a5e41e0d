"""Element types: the NumPy dtypes opencann computes with, and their ONNX codes.

opencann's dtype is a plain ``numpy.dtype``; the low-precision float and 4-bit integer types come from
``ml_dtypes``. This module is the one place that maps them to ONNX ``TensorProto`` codes and back.
"""
from __future__ import annotations

import ml_dtypes
import numpy as np
from onnx import TensorProto

from opencann.errors import AclError, ErrorCode

_ONNX_TO_NP: dict[int, np.dtype] = {
    TensorProto.FLOAT: np.dtype(np.float32),
    TensorProto.UINT8: np.dtype(np.uint8),
    TensorProto.INT8: np.dtype(np.int8),
    TensorProto.UINT16: np.dtype(np.uint16),
    TensorProto.INT16: np.dtype(np.int16),
    TensorProto.INT32: np.dtype(np.int32),
    TensorProto.INT64: np.dtype(np.int64),
    TensorProto.STRING: np.dtype(object),
    TensorProto.BOOL: np.dtype(np.bool_),
    TensorProto.FLOAT16: np.dtype(np.float16),
    TensorProto.DOUBLE: np.dtype(np.float64),
    TensorProto.UINT32: np.dtype(np.uint32),
    TensorProto.UINT64: np.dtype(np.uint64),
    TensorProto.COMPLEX64: np.dtype(np.complex64),
    TensorProto.COMPLEX128: np.dtype(np.complex128),
    TensorProto.BFLOAT16: np.dtype(ml_dtypes.bfloat16),
    TensorProto.FLOAT8E4M3FN: np.dtype(ml_dtypes.float8_e4m3fn),
    TensorProto.FLOAT8E4M3FNUZ: np.dtype(ml_dtypes.float8_e4m3fnuz),
    TensorProto.FLOAT8E5M2: np.dtype(ml_dtypes.float8_e5m2),
    TensorProto.FLOAT8E5M2FNUZ: np.dtype(ml_dtypes.float8_e5m2fnuz),
    TensorProto.UINT4: np.dtype(ml_dtypes.uint4),
    TensorProto.INT4: np.dtype(ml_dtypes.int4),
}
for _name, _ml in (("FLOAT4E2M1", "float4_e2m1fn"), ("FLOAT8E8M0", "float8_e8m0fnu"),
                   ("UINT2", "uint2"), ("INT2", "int2")):
    if hasattr(TensorProto, _name) and hasattr(ml_dtypes, _ml):
        _ONNX_TO_NP[getattr(TensorProto, _name)] = np.dtype(getattr(ml_dtypes, _ml))
_NP_TO_ONNX = {v: k for k, v in _ONNX_TO_NP.items()}

FLOAT_TYPES = frozenset(np.dtype(t) for t in (np.float16, np.float32, np.float64, ml_dtypes.bfloat16))


def from_onnx(code: int) -> np.dtype:
    """The NumPy dtype of an ONNX ``TensorProto`` element type code."""
    try:
        return _ONNX_TO_NP[code]
    except KeyError:
        raise AclError(ErrorCode.UNSUPPORTED_DATA_TYPE, f"unsupported ONNX element type {code}") from None


def to_onnx(dtype: np.dtype | type) -> int:
    """The ONNX ``TensorProto`` element type code of a NumPy dtype."""
    dt = np.dtype(dtype)
    if dt.kind in "US":
        return TensorProto.STRING
    try:
        return _NP_TO_ONNX[dt]
    except KeyError:
        raise AclError(ErrorCode.UNSUPPORTED_DATA_TYPE, f"dtype {dt} has no ONNX element type") from None


def name(dtype: np.dtype) -> str:
    """A short readable name: float32, bfloat16, string, ..."""
    dt = np.dtype(dtype)
    return "string" if dt == np.dtype(object) else dt.name
