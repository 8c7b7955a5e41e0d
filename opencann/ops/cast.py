"""Type conversion (seed layer 2 "NN library"): Cast, CastLike and BitCast.

Conversions follow ONNX's rules: float8 targets saturate to the format's largest finite value unless
``saturate=0``; float8e8m0 rounds its exponent by ``round_mode``; strings parse and format ONNX's
literals ("NaN", "INF", "-INF"). The low-precision dtypes (bfloat16, float8, float4, int4, int2) are
ml_dtypes'; NumPy cannot cast between two of them directly, so sources of those types are widened first.
"""
from __future__ import annotations

import ml_dtypes
import numpy as np
from onnx import TensorProto

from opencann.compiler import dtypes
from opencann.errors import AclError, ErrorCode
from opencann.ops.common import widen
from opencann.ops.registry import op

FLOAT8 = frozenset(np.dtype(t) for t in (ml_dtypes.float8_e4m3fn, ml_dtypes.float8_e4m3fnuz,
                                         ml_dtypes.float8_e5m2, ml_dtypes.float8_e5m2fnuz))
_E8M0 = np.dtype(ml_dtypes.float8_e8m0fnu)
_SUB_BYTE_BITS = {np.dtype(ml_dtypes.int4): 4, np.dtype(ml_dtypes.uint4): 4, np.dtype(ml_dtypes.float4_e2m1fn): 4,
                  np.dtype(ml_dtypes.int2): 2, np.dtype(ml_dtypes.uint2): 2}


def is_string(dt: np.dtype) -> bool:
    return dt.kind in "OUS"




def convert(x: np.ndarray, dtype: np.dtype, saturate: int = 1, round_mode: str = "up") -> np.ndarray:
    """``x`` converted to ``dtype`` by ONNX Cast's rules."""
    x = np.asarray(x)
    if is_string(dtype):
        return _format(x)
    if is_string(x.dtype):
        x = _parse(x, dtype)
    if dtype in FLOAT8:
        return to_float8(x, dtype, saturate)
    if dtype == _E8M0:
        return _to_e8m0(x, saturate, round_mode)
    if x.dtype == dtype:
        return x
    with np.errstate(invalid="ignore", over="ignore"):
        return widen(x).astype(dtype)


def to_float8(x: np.ndarray, dtype: np.dtype, saturate: int = 1) -> np.ndarray:
    """Round to nearest even; out-of-range values (and infinities) clamp to +-max when saturating."""
    x = widen(x)
    if x.dtype.kind != "f":
        x = x.astype(np.float64)
    if saturate:
        limit = float(ml_dtypes.finfo(dtype).max)
        x = np.clip(x, -limit, limit)
    return x.astype(dtype)


def _to_e8m0(x: np.ndarray, saturate: int, round_mode: str) -> np.ndarray:
    """float8e8m0 keeps the float32 exponent, rounded by the discarded mantissa (the sign is ignored)."""
    bits = widen(x).astype(np.float32).view(np.uint32)
    exp = (bits >> 23) & 0xFF
    special = exp == 0xFF
    if round_mode == "up":
        up = (bits & 0x7FFFFF) != 0
    elif round_mode == "nearest":
        up = ((bits & 0x400000) != 0) & (((bits & 0x3FFFFF) != 0) | (exp > 0))
    elif round_mode == "down":
        up = np.zeros(bits.shape, dtype=bool)
    else:
        raise AclError(ErrorCode.INVALID_PARAM, f"Cast: unknown round_mode '{round_mode}'")
    up &= ~special
    if saturate:
        up &= exp != 0xFE
        special_code = np.where((bits & 0x7FFFFF) == 0, 0xFE, 0xFF)  # +-inf saturates, NaN stays NaN
    else:
        special_code = 0xFF
    return np.where(special, special_code, exp + up).astype(np.uint8).view(_E8M0)


def _parse(x: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """Numbers from strings: integers read exactly where they can be, everything else as float64."""
    text = np.char.strip(x.astype(np.str_))
    if dtype.kind in "iu":
        try:
            return text.astype(dtype)
        except (ValueError, OverflowError):
            pass
    return text.astype(np.float64)


def _format(x: np.ndarray) -> np.ndarray:
    """Strings from numbers: shortest round-trip decimals, with ONNX's NaN/INF/-INF literals."""
    if is_string(x.dtype):
        return x.astype(object)
    if x.dtype == np.bool_:
        return np.where(x, "1", "0").astype(object)
    x = widen(x)
    out = x.astype(np.str_).astype(object)
    if x.dtype.kind == "f":
        out[np.isnan(x)] = "NaN"
        out[np.isposinf(x)] = "INF"
        out[np.isneginf(x)] = "-INF"
    return out


def _target(to: int | str) -> np.dtype:
    """The dtype a ``to`` attribute names: an ONNX type code, or (Cast-1) a type name such as "FLOAT"."""
    if isinstance(to, str):
        try:
            to = TensorProto.DataType.Value(to.upper())
        except ValueError:
            raise AclError(ErrorCode.INVALID_PARAM, f"Cast: unknown type name to='{to}'") from None
    return dtypes.from_onnx(to)


@op("Cast", since=(1, 6, 9, 13, 19, 21, 23, 24, 25, 28))
def cast(x, *, to, saturate=1, round_mode="up"):
    return convert(x, _target(to), saturate, round_mode)


@op("CastLike", since=(15, 19, 21, 23, 24, 25))
def cast_like(x, target_type, *, saturate=1, round_mode="up"):
    return convert(x, target_type.dtype, saturate, round_mode)


def _bit_width(dt: np.dtype) -> int:
    return _SUB_BYTE_BITS.get(dt, 8 * dt.itemsize)


@op("BitCast", since=(26,))
def bitcast(x, *, to):
    dt = dtypes.from_onnx(to)
    if is_string(x.dtype) or is_string(dt) or _bit_width(x.dtype) != _bit_width(dt):
        raise AclError(ErrorCode.INVALID_PARAM, f"BitCast: cannot reinterpret {dtypes.name(x.dtype)} "
                                                f"as {dtypes.name(dt)} (bit widths differ or string)")
    y = np.asarray(x, order="C")
    if x.dtype in _SUB_BYTE_BITS:  # ml_dtypes keeps a 4/2-bit value in a byte's low bits
        y = y.view(np.uint8) & ((1 << _bit_width(x.dtype)) - 1)
    return y.view(dt)
