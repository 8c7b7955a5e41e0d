"""Quantization (seed layer 2 "NN library"): QuantizeLinear, DequantizeLinear, DynamicQuantizeLinear,
MatMulInteger, ConvInteger, QLinearMatMul and QLinearConv.

Scales and zero points are per tensor (scalar), per axis (1-D) or blocked (``block_size``). Integer
targets round half to even and saturate to the type's range; float8/float4 targets convert as Cast does.
Integer products are accumulated exactly (in float64, which holds every int8 dot product below 2**53)
and wrap to int32 as ONNX allows; ConvInteger and QLinearConv use Conv's im2col (:mod:`opencann.ops.conv`).
"""
from __future__ import annotations

import ml_dtypes
import numpy as np

from opencann.compiler import dtypes
from opencann.errors import AclError, ErrorCode
from opencann.ops.cast import FLOAT8, to_float8
from opencann.ops.common import compute_dtype, widen
from opencann.ops.conv import conv_pads, gemm_windows, windows
from opencann.ops.registry import op

_QUANT_VERSIONS = (10, 13, 19, 21, 23, 24, 25, 28)


# --- scales and zero points ------------------------------------------------------------------------

def _expand(param: np.ndarray | None, shape: tuple[int, ...], axis: int, block_size: int, op: str):
    """A scale or zero point reshaped (blocked: repeated) to broadcast against an input of ``shape``."""
    if param is None:
        return None
    param = np.asarray(param)
    if block_size > 0:
        ax = _axis(axis, len(shape), op)
        blocks = -(-shape[ax] // block_size)
        if param.shape != shape[:ax] + (blocks,) + shape[ax + 1:]:
            raise AclError(ErrorCode.INVALID_PARAM, f"{op}: blocked scale shape {param.shape} does not fit "
                                                    f"input {shape} with axis={axis}, block_size={block_size}")
        return np.repeat(param, block_size, axis=ax).take(np.arange(shape[ax]), axis=ax)
    if param.size == 1 and param.ndim <= 1:
        return param.reshape(())
    if param.ndim == 1:
        ax = _axis(axis, len(shape), op)
        if param.shape[0] != shape[ax]:
            raise AclError(ErrorCode.INVALID_PARAM, f"{op}: {param.shape[0]} scales for axis {axis} of "
                                                    f"length {shape[ax]}")
        return param.reshape((-1,) + (1,) * (len(shape) - ax - 1))
    return param


def _axis(axis: int, rank: int, op: str) -> int:
    if not -rank <= axis < rank:
        raise AclError(ErrorCode.INVALID_PARAM, f"{op}: axis {axis} out of range for rank {rank}")
    return axis % rank


def _saturate(q: np.ndarray, zero_point: np.ndarray | None, dtype: np.dtype, saturate: int = 1) -> np.ndarray:
    """``q + zero_point`` as ``dtype``: integers rounded half to even and clamped; floats converted."""
    if dtype in FLOAT8 or dtype == ml_dtypes.float4_e2m1fn:
        if zero_point is not None:
            q = q + widen(zero_point).astype(q.dtype)
        return to_float8(q, dtype, saturate) if dtype in FLOAT8 else q.astype(dtype)
    q = np.rint(q)
    if zero_point is not None:
        q = q + widen(zero_point)
    info = ml_dtypes.iinfo(dtype)
    with np.errstate(invalid="ignore"):
        return np.clip(q, info.min, info.max).astype(dtype)


def _centered(x: np.ndarray, zero_point: np.ndarray | None) -> np.ndarray:
    """``x - zero_point`` exactly: in int64 for integers, float32 for low-precision floats."""
    x = widen(x)
    if x.dtype.kind in "iub":
        x = x.astype(np.int64)
    if zero_point is None:
        return x
    return x - widen(zero_point).astype(x.dtype)


# --- QuantizeLinear / DequantizeLinear ---------------------------------------------------------------

@op("QuantizeLinear", since=_QUANT_VERSIONS)
def quantize_linear(x, y_scale, y_zero_point=None, *, axis=1, block_size=0, output_dtype=0, saturate=1,
                    precision=0):
    out = dtypes.from_onnx(output_dtype) if output_dtype else np.dtype(np.uint8)
    if y_zero_point is not None:
        if output_dtype and y_zero_point.dtype != out:
            raise AclError(ErrorCode.INVALID_PARAM, f"QuantizeLinear: output_dtype {dtypes.name(out)} differs "
                                                    f"from the zero point's {dtypes.name(y_zero_point.dtype)}")
        out = y_zero_point.dtype
    scale = _expand(y_scale, x.shape, axis, block_size, "QuantizeLinear")
    zero_point = _expand(y_zero_point, x.shape, axis, block_size, "QuantizeLinear")
    return _saturate(_divide(x, scale, precision), zero_point, out, saturate)


def _divide(x: np.ndarray, scale: np.ndarray, precision: int) -> np.ndarray:
    """``x / scale`` rounded to the precision type (``precision``, else the scale's float type)."""
    p = dtypes.from_onnx(precision) if precision else scale.dtype
    if p not in dtypes.FLOAT_TYPES:
        p = np.dtype(np.float32)
    wide = compute_dtype(p)
    q = widen(x).astype(p).astype(wide) / widen(scale).astype(p).astype(wide)
    return q.astype(p).astype(wide)


@op("DequantizeLinear", since=_QUANT_VERSIONS)
def dequantize_linear(x, x_scale, x_zero_point=None, *, axis=1, block_size=0, output_dtype=0):
    out = dtypes.from_onnx(output_dtype) if output_dtype else x_scale.dtype
    if out not in dtypes.FLOAT_TYPES:
        out = np.dtype(np.float32)
    wide = compute_dtype(out)
    scale = _expand(x_scale, x.shape, axis, block_size, "DequantizeLinear")
    zero_point = _expand(x_zero_point, x.shape, axis, block_size, "DequantizeLinear")
    return (_centered(x, zero_point).astype(wide) * widen(scale).astype(wide)).astype(out)


@op("DynamicQuantizeLinear", since=(11,))
def dynamic_quantize_linear(x):
    """uint8 quantization over [min(0, x), max(0, x)]: returns (y, scale, zero_point)."""
    x = x.astype(np.float32, copy=False)
    lo, hi = np.min(x, initial=np.float32(0)), np.max(x, initial=np.float32(0))
    scale = (hi - lo) / np.float32(255)
    if scale == 0:
        return np.zeros(x.shape, np.uint8), np.asarray(scale), np.asarray(0, np.uint8)
    zero_point = np.clip(np.rint(-lo / scale), 0, 255)
    y = np.clip(np.rint(x / scale) + zero_point, 0, 255).astype(np.uint8)
    return y, np.asarray(scale), np.asarray(zero_point, np.uint8)


# --- integer products --------------------------------------------------------------------------------

def _to_int32(acc: np.ndarray) -> np.ndarray:
    """Exact float64 sums as int32, wrapping on overflow."""
    return acc.astype(np.int64).astype(np.int32)


def _operand_param(p: np.ndarray | None, row: bool) -> np.ndarray | None:
    """A matmul operand's scale or zero point: a scalar per tensor, else per row of the left operand
    (a length-M vector becomes an (M, 1) column) or per column of the right one."""
    if p is None or p.ndim != 1:
        return p
    if p.size == 1:
        return p.reshape(())
    return p.reshape(-1, 1) if row else p


def _matmul(a, a_zero_point, b, b_zero_point) -> np.ndarray:
    """(a - a_zero_point) @ (b - b_zero_point), exact, in float64."""
    a = _centered(a, _operand_param(a_zero_point, row=True)).astype(np.float64)
    b = _centered(b, _operand_param(b_zero_point, row=False)).astype(np.float64)
    return np.matmul(a, b)


@op("MatMulInteger", since=(10,))
def matmul_integer(a, b, a_zero_point=None, b_zero_point=None):
    return _to_int32(_matmul(a, a_zero_point, b, b_zero_point))


@op("QLinearMatMul", since=(10, 21))
def qlinear_matmul(a, a_scale, a_zero_point, b, b_scale, b_zero_point, y_scale, y_zero_point):
    acc = _matmul(a, a_zero_point, b, b_zero_point)
    scale = (_operand_param(a_scale, row=True).astype(np.float32)
             * _operand_param(b_scale, row=False).astype(np.float32)) / y_scale.astype(np.float32).reshape(())
    return _saturate(acc.astype(np.float32) * scale, _operand_param(y_zero_point, row=False), y_zero_point.dtype)


# --- integer convolution -----------------------------------------------------------------------------

def _conv(x, w, auto_pad, dilations, group, kernel_shape, pads, strides):
    """N-d grouped convolution of float64 ``x`` (N, C, ...) by ``w`` (M, C/group, ...): Conv's im2col
    (:func:`~opencann.ops.conv.windows` and :func:`~opencann.ops.conv.gemm_windows`), exact in float64."""
    nd = x.ndim - 2
    kernel = w.shape[2:]
    if kernel_shape is not None and tuple(kernel_shape) != kernel:
        raise AclError(ErrorCode.INVALID_PARAM, f"conv: kernel_shape {kernel_shape} differs from weight {w.shape}")
    strides = list(strides or [1] * nd)
    dilations = list(dilations or [1] * nd)
    begin, end = conv_pads(auto_pad, pads, x.shape[2:], kernel, strides, dilations)
    padded = (*x.shape[:2], *(n + b + e for n, b, e in zip(x.shape[2:], begin, end, strict=True)))
    if any(p < (k - 1) * d + 1 for p, k, d in zip(padded[2:], kernel, dilations, strict=True)):
        raise AclError(ErrorCode.INVALID_PARAM, f"conv: kernel {kernel} larger than padded input {padded}")
    last = np.ascontiguousarray(np.moveaxis(x, 1, -1))
    return gemm_windows(windows(last, kernel, strides, dilations, begin, end, first=1), w, group)


def _channel_param(p: np.ndarray | None, rank: int) -> np.ndarray | None:
    """A per-output-channel (1-D) weight scale or zero point shaped to broadcast over (M, ...)."""
    if p is None or p.size == 1:
        return None if p is None else p.reshape(())
    return p.reshape((-1,) + (1,) * (rank - 1))


@op("ConvInteger", since=(10,))
def conv_integer(x, w, x_zero_point=None, w_zero_point=None, *, auto_pad="NOTSET", dilations=None, group=1,
                 kernel_shape=None, pads=None, strides=None):
    xc = _centered(x, None if x_zero_point is None else x_zero_point.reshape(())).astype(np.float64)
    wc = _centered(w, _channel_param(w_zero_point, w.ndim)).astype(np.float64)
    return _to_int32(_conv(xc, wc, auto_pad, dilations, group, kernel_shape, pads, strides))


@op("QLinearConv", since=(10,))
def qlinear_conv(x, x_scale, x_zero_point, w, w_scale, w_zero_point, y_scale, y_zero_point, B=None, *,
                 auto_pad="NOTSET", dilations=None, group=1, kernel_shape=None, pads=None, strides=None):
    acc = conv_integer(x, w, x_zero_point, w_zero_point, auto_pad=auto_pad, dilations=dilations, group=group,
                       kernel_shape=kernel_shape, pads=pads, strides=strides)
    if B is not None:
        acc = acc + B.astype(np.int32).reshape((-1,) + (1,) * (acc.ndim - 2))
    w_scale = _channel_param(w_scale, acc.ndim - 1).astype(np.float32)
    scale = (x_scale.astype(np.float32).reshape(()) * w_scale) / y_scale.astype(np.float32).reshape(())
    return _saturate(acc.astype(np.float32) * scale, y_zero_point.reshape(()), y_zero_point.dtype)
