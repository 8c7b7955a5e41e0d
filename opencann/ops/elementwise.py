"""Elementwise math, logic, comparison and bitwise operators (seed layer 2: NN library).

Binary operators broadcast NumPy-style, as ONNX does from opset 7; opsets 1 and 6 line ``B`` up with
``A`` from the legacy ``axis`` attribute when ``broadcast`` is set. float16, bfloat16 and float8 inputs
compute in float32 and round back to their own type, as ONNX's reference does.
"""
import functools
import math
from functools import reduce

import numba
import numpy as np

from opencann.errors import AclError, ErrorCode
from opencann.ops.common import widen
from opencann.ops.registry import op


def _legacy_b(a, b, broadcast, axis):
    """Opset < 7 broadcasting: with ``axis``, B's dimensions line up with A's from ``axis`` on."""
    if not broadcast or axis is None or b.ndim == 0:
        return b
    return b.reshape(b.shape + (1,) * (a.ndim - axis % max(a.ndim, 1) - b.ndim))


# --- unary math -----------------------------------------------------------------------------------


def _erf_scalar(x):
    return math.erf(x)


@functools.cache
def _erf_ufunc():
    return numba.vectorize(["float32(float32)", "float64(float64)"], cache=True)(_erf_scalar)


def erf(x):
    """The error function: libm's, compiled by Numba into a NumPy ufunc on first use (keeps imports fast)."""
    return _erf_ufunc()(x)


def _unary(fn):
    """A kernel applying ``fn`` in a wide enough type; opset 1's ``consumed_inputs`` hint is ignored."""
    def kernel(x, *, consumed_inputs=None):
        with np.errstate(all="ignore"):
            return np.asarray(fn(widen(x))).astype(x.dtype, copy=False)
    kernel.__name__ = fn.__name__
    return kernel


for _name, _fn, _sinces in (
    ("Neg", np.negative, (1, 6, 13)), ("Abs", np.abs, (1, 6, 13)), ("Sign", np.sign, (9, 13)),
    ("Reciprocal", np.reciprocal, (1, 6, 13)), ("Sqrt", np.sqrt, (1, 6, 13)),
    ("Exp", np.exp, (1, 6, 13)), ("Log", np.log, (1, 6, 13)), ("Erf", erf, (9, 13)),
    ("Ceil", np.ceil, (1, 6, 13)), ("Floor", np.floor, (1, 6, 13)),
    ("Round", np.rint, (11, 22)),  # rint rounds halves to even, as ONNX asks
    ("Sin", np.sin, (7, 22)), ("Cos", np.cos, (7, 22)), ("Tan", np.tan, (7, 22)),
    ("Asin", np.arcsin, (7, 22)), ("Acos", np.arccos, (7, 22)), ("Atan", np.arctan, (7, 22)),
    ("Sinh", np.sinh, (9, 22)), ("Cosh", np.cosh, (9, 22)), ("Asinh", np.arcsinh, (9, 22)),
    ("Acosh", np.arccosh, (9, 22)), ("Atanh", np.arctanh, (9, 22)),
):
    op(_name, since=tuple(_sinces))(_unary(_fn))


@op("IsNaN", since=(9, 13, 20))
def isnan(x):
    return np.isnan(widen(x))


@op("IsInf", since=(10, 20))
def isinf(x, *, detect_negative=1, detect_positive=1):
    x = widen(x)
    return np.isinf(x) & (((x > 0) & bool(detect_positive)) | ((x < 0) & bool(detect_negative)))


# --- binary arithmetic ----------------------------------------------------------------------------

def _divide(a, b):
    """True division for floats; integer division truncates toward zero."""
    if a.dtype.kind not in "iu":
        return a / b
    q = a // b
    if a.dtype.kind == "i":
        q = q + ((a % b != 0) & ((a < 0) != (b < 0)))
    return q


def _arith(fn):
    """A binary kernel computing ``fn`` in a wide enough type and returning A's type."""
    def kernel(a, b, *, broadcast=0, axis=None, consumed_inputs=None):
        b = _legacy_b(a, b, broadcast, axis)
        with np.errstate(all="ignore"):
            return np.asarray(fn(widen(a), widen(b))).astype(a.dtype, copy=False)
    kernel.__name__ = fn.__name__
    return kernel


for _name, _fn in (("Add", np.add), ("Sub", np.subtract), ("Mul", np.multiply), ("Div", _divide)):
    op(_name, since=(1, 6, 7, 13, 14))(_arith(_fn))


@op("Mod", since=(10, 13, 28))
def mod(a, b, *, fmod=0):
    """``fmod=0``: the remainder takes B's sign (floor); ``fmod=1``: A's sign (C's fmod)."""
    with np.errstate(all="ignore"):
        return (np.fmod if fmod else np.mod)(widen(a), widen(b)).astype(a.dtype, copy=False)


def _int_pow(x, y):
    """Integer powers; a negative exponent gives 1/x^-y truncated (0 unless |x| is 1)."""
    x, y = np.broadcast_arrays(x, y)
    neg = y < 0
    with np.errstate(all="ignore"):
        r = np.power(x, np.where(neg, 0, y).astype(np.int64 if x.dtype.kind == "i" else np.uint64))
    return np.where(neg, np.where(np.abs(x) == 1, np.where(y % 2 == 0, 1, x), 0), r).astype(x.dtype)


@op("Pow", since=(1, 7, 12, 13, 15))
def pow_(x, y, *, broadcast=0, axis=None):
    """The output has the base's type, whatever the exponent's."""
    y = _legacy_b(x, y, broadcast, axis)
    if x.dtype.kind in "iu" and y.dtype.kind in "iu":
        return _int_pow(x, y)
    with np.errstate(all="ignore"):
        return np.power(widen(x), widen(y)).astype(x.dtype, copy=False)


# --- variadic -------------------------------------------------------------------------------------

def _variadic(name, fn, sinces, mean=False):
    """Register ``name`` as ``fn`` folded over any number of broadcast inputs."""
    def kernel(*inputs, consumed_inputs=None):
        if not inputs:
            raise AclError(ErrorCode.INVALID_PARAM, f"{name}: needs at least one input")
        out = reduce(fn, (widen(x) for x in inputs))
        if mean:
            out = out / len(inputs)
        return np.asarray(out).astype(inputs[0].dtype, copy=False)
    return op(name, since=tuple(sinces))(kernel)


_variadic("Max", np.maximum, (1, 6, 8, 12, 13))
_variadic("Min", np.minimum, (1, 6, 8, 12, 13))
sum_ = _variadic("Sum", np.add, (1, 6, 8, 13))
_variadic("Mean", np.add, (1, 6, 8, 13), mean=True)


# --- logic and comparisons ------------------------------------------------------------------------

def _predicate(fn):
    """A binary kernel returning bool (logic and comparisons)."""
    def kernel(a, b, *, broadcast=0, axis=None):
        with np.errstate(invalid="ignore"):
            return np.asarray(fn(a, _legacy_b(a, b, broadcast, axis))).astype(np.bool_, copy=False)
    kernel.__name__ = fn.__name__
    return kernel


for _name, _fn, _sinces in (
    ("And", np.logical_and, (1, 7)), ("Or", np.logical_or, (1, 7)), ("Xor", np.logical_xor, (1, 7)),
    ("Equal", np.equal, (1, 7, 11, 13, 19)), ("Greater", np.greater, (1, 7, 9, 13)),
    ("Less", np.less, (1, 7, 9, 13)), ("GreaterOrEqual", np.greater_equal, (12, 16)),
    ("LessOrEqual", np.less_equal, (12, 16)),
):
    op(_name, since=tuple(_sinces))(_predicate(_fn))


@op("Not", since=1)
def not_(x):
    return np.logical_not(x)


@op("Where", since=(9, 16))
def where(condition, x, y):
    return np.where(condition, x, y)


@op("Clip", since=(1, 6, 11, 12, 13))
def clip(x, lo=None, hi=None, *, min=None, max=None, consumed_inputs=None):
    """Bounds are attributes before opset 11, optional inputs after; min > max gives max everywhere."""
    lo, hi = (min if lo is None else lo), (max if hi is None else hi)
    y = widen(x)
    with np.errstate(all="ignore"):
        if lo is not None:
            y = np.maximum(y, widen(np.asarray(lo)))
        if hi is not None:
            y = np.minimum(y, widen(np.asarray(hi)))
    return y.astype(x.dtype, copy=False)


# --- bitwise --------------------------------------------------------------------------------------

@op("BitShift", since=(11, 28))
def bitshift(x, y, *, direction):
    """Right shifts of signed types are arithmetic; shifts < 0 or >= the bit width leave only the fill."""
    if direction not in ("LEFT", "RIGHT"):
        raise AclError(ErrorCode.INVALID_PARAM, f"BitShift: direction must be LEFT or RIGHT, got {direction!r}")
    bits = 8 * x.dtype.itemsize
    y = y.astype(np.int64)
    out = (y < 0) | (y >= bits)
    s = np.where(out, 0, y).astype(x.dtype)
    if direction == "LEFT":
        return np.where(out, x.dtype.type(0), np.left_shift(x, s))
    fill = np.right_shift(x, bits - 1) if x.dtype.kind == "i" else np.zeros_like(x)
    return np.where(out, fill, np.right_shift(x, s))


def _bitwise(fn):
    def kernel(a, b):
        return fn(a, b)
    kernel.__name__ = fn.__name__
    return kernel


for _name, _fn in (("BitwiseAnd", np.bitwise_and), ("BitwiseOr", np.bitwise_or),
                   ("BitwiseXor", np.bitwise_xor)):
    op(_name, since=18)(_bitwise(_fn))


@op("BitwiseNot", since=18)
def bitwise_not(x):
    return np.invert(x)
