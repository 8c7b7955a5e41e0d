"""TensorFlow dtypes as NumPy dtypes (and as ONNX codes, for Cast)."""
from __future__ import annotations

import ml_dtypes
import numpy as np

from opencann.compiler import dtypes
from opencann.errors import AclError, ErrorCode


def np_dtype(tf_dtype) -> np.dtype:
    name = tf_dtype.name
    if name == "bfloat16":
        return np.dtype(ml_dtypes.bfloat16)
    if name == "string":
        return np.dtype(object)
    try:
        return np.dtype(tf_dtype.as_numpy_dtype)
    except TypeError:
        raise AclError(ErrorCode.UNSUPPORTED_DATA_TYPE, f"TensorFlow dtype {name} is not supported") from None


def onnx_code(tf_dtype) -> int:
    return dtypes.to_onnx(np_dtype(tf_dtype))
