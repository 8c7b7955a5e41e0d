"""Elementwise and activation kernels: dtypes, shapes and opsets ONNX's node suite does not cover.

Each case runs one node through the ONNX backend; the oracle is NumPy (in float32 for low-precision
floats), Python's math module, or onnxruntime where it implements the case.
"""
import functools
import math

import ml_dtypes
import numpy as np
import pytest

from opencann.errors import AclError
from opencann.ops.elementwise import erf
from tests.ops.single_node import check_node, run_node

RNG = np.random.default_rng(0)
BF16 = ml_dtypes.bfloat16


run = functools.partial(run_node, opset=25)
check_ort = functools.partial(check_node, exact=True)


def _randn(*shape, dtype=np.float32):
    return RNG.standard_normal(shape).astype(dtype)


# --- unary math -----------------------------------------------------------------------------------

def test_erf_matches_math_erf():
    x = np.concatenate([np.linspace(-8, 8, 4001), [0.0, -0.0, 1e-300, -5e-324, 1.9999999, 2.0, 26.0]])
    want = np.array([math.erf(v) for v in x])
    np.testing.assert_allclose(erf(x), want, rtol=4e-15, atol=0)
    np.testing.assert_array_equal(erf(np.array([np.inf, -np.inf, np.nan])), [1.0, -1.0, np.nan])
    assert np.signbit(erf(np.array(-0.0)))


@pytest.mark.parametrize("dtype", [np.float16, BF16, np.float64])
@pytest.mark.parametrize("op, fn", [("Exp", np.exp), ("Sqrt", np.sqrt), ("Sin", np.sin), ("Atan", np.arctan),
                                    ("Erf", erf), ("Round", np.rint), ("Tanh", np.tanh)])
def test_unary_low_and_double_precision(op, fn, dtype):
    x = (np.abs(_randn(3, 5)) * 2).astype(dtype)
    got = run(op, x)
    assert got.dtype == np.dtype(dtype) and got.shape == x.shape
    want = fn(x.astype(np.float64 if dtype == np.float64 else np.float32)).astype(dtype)
    np.testing.assert_array_equal(got.astype(np.float64), want.astype(np.float64))


def test_round_halves_to_even_and_keeps_specials():
    x = np.array([0.5, 1.5, 2.5, -0.5, -2.5, -0.0, np.inf, np.nan], np.float32)
    got = run("Round", x)
    np.testing.assert_array_equal(got, [0.0, 2.0, 2.0, -0.0, -2.0, -0.0, np.inf, np.nan])
    assert np.signbit(got[5])


@pytest.mark.parametrize("dtype", [np.int8, np.int32, np.int64])
def test_neg_abs_sign_on_integers(dtype):
    x = np.array([-5, 0, 7], dtype)
    for op in ("Neg", "Abs", "Sign"):
        check_ort(op, x)


def test_isinf_isnan_low_precision():
    x = np.array([-np.inf, np.inf, np.nan, 1.0], BF16)
    np.testing.assert_array_equal(run("IsInf", x, detect_negative=0), [False, True, False, False])
    np.testing.assert_array_equal(run("IsInf", x.astype(np.float16), detect_positive=0), [True, False, False, False])
    np.testing.assert_array_equal(run("IsNaN", x), [False, False, True, False])


def test_unary_zero_size_and_scalar():
    assert run("Exp", np.zeros((0, 3), np.float32)).shape == (0, 3)
    got = run("Neg", np.array(2, np.int16))
    assert got.shape == () and got.dtype == np.int16 and got == -2


# --- binary arithmetic ----------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [np.int8, np.int32, np.int64])
def test_integer_division_truncates(dtype):
    a = np.array([-7, 7, -7, 7, -6, 0], dtype)
    b = np.array([2, -2, -2, 2, 3, -3], dtype)
    check_ort("Div", a, b)


@pytest.mark.parametrize("dtype", [np.int8, np.uint16, np.int64])
@pytest.mark.parametrize("op", ["Add", "Sub", "Mul"])
def test_integer_arithmetic_wraps_and_keeps_type(op, dtype):
    info = np.iinfo(dtype)
    a = np.array([info.max, info.min, 3], dtype)
    b = np.array([1, 1, 2], dtype)
    check_ort(op, a, b)


def test_bfloat16_arithmetic_broadcasts():
    a, b = _randn(2, 3, 4).astype(BF16), _randn(4).astype(BF16)
    got = run("Mul", a, b)
    assert got.dtype == BF16 and got.shape == (2, 3, 4)
    np.testing.assert_array_equal(got, (a.astype(np.float32) * b.astype(np.float32)).astype(BF16))


def test_binary_zero_size_broadcast():
    got = run("Add", np.zeros((0, 3), np.float32), np.ones((1, 3), np.float32))
    assert got.shape == (0, 3) and got.dtype == np.float32


def test_legacy_broadcast_with_axis():
    a, b, c = _randn(2, 3, 4, 5), _randn(3, 4), _randn(5)
    np.testing.assert_array_equal(run("Add", a, b, opset=6, broadcast=1, axis=1), a + b[None, :, :, None])
    np.testing.assert_array_equal(run("Sub", a, c, opset=6, broadcast=1), a - c)


@pytest.mark.parametrize("fmod", [0, 1])
@pytest.mark.parametrize("dtype", [np.int8, np.int32, np.float32, np.float64])
def test_mod_signs(fmod, dtype):
    if fmod == 0 and dtype in (np.float32, np.float64):
        pytest.skip("onnxruntime rejects fmod=0 for floats")
    a = np.array([-7, 7, -7, 7, 5, -4], dtype)
    b = np.array([3, -3, -3, 3, 8, 2], dtype)
    check_ort("Mod", a, b, fmod=fmod)


def test_mod_float_floor_semantics():
    a = np.array([-7.5, 7.5, 1.0, -0.0], np.float16)
    b = np.array([2.0, -2.0, np.inf, 3.0], np.float16)
    got = run("Mod", a, b, opset=28)
    assert got.dtype == np.float16
    np.testing.assert_array_equal(got, np.mod(a, b))


def test_pow_types_follow_the_base():
    check_ort("Pow", np.array([1, 2, 3, 10], np.int32), np.array([0.5, 2.0, 3.0, 2.0], np.float32))
    check_ort("Pow", np.array([1.5, 2.0, -3.0], np.float32), np.array([2, 3, 3], np.int64), exact=False)
    got = run("Pow", np.array([1.5, 2.0], np.float16), np.array([2, 10], np.int32))
    assert got.dtype == np.float16
    np.testing.assert_array_equal(got, [2.25, 1024.0])


def test_pow_integer_negative_exponent():
    x = np.array([1, -1, -1, 2, 3, 5], np.int64)
    y = np.array([-3, -2, -3, -1, 2, 0], np.int64)
    got = run("Pow", x, y)
    assert got.dtype == np.int64
    np.testing.assert_array_equal(got, [1, 1, -1, 0, 9, 1])


# --- variadic -------------------------------------------------------------------------------------

@pytest.mark.parametrize("op", ["Max", "Min", "Sum", "Mean"])
def test_variadic_three_inputs_broadcast(op):
    check_ort(op, _randn(2, 1, 4), _randn(3, 1), _randn(4), exact=op != "Mean")


@pytest.mark.parametrize("op", ["Max", "Min"])
def test_variadic_integers(op):
    check_ort(op, np.array([[1, -5, 3]], np.int32), np.array([[2], [-7]], np.int32))


def test_mean_float16_and_max_nan():
    a, b, c = (_randn(5, dtype=np.float16) for _ in range(3))
    got = run("Mean", a, b, c)
    assert got.dtype == np.float16
    np.testing.assert_array_equal(got, ((a.astype(np.float32) + b + c) / 3).astype(np.float16))
    assert np.isnan(run("Max", np.array([np.nan, 1.0], np.float32), np.array([0.0, 2.0], np.float32))[0])


# --- logic and comparisons ------------------------------------------------------------------------

@pytest.mark.parametrize("op", ["Equal", "Greater", "Less", "GreaterOrEqual", "LessOrEqual"])
@pytest.mark.parametrize("dtype", [np.uint64, np.int8, np.float16])
def test_comparisons(op, dtype):
    a = np.array([[1, 2, 3], [4, 5, 6]], dtype)
    check_ort(op, a, np.array([3, 2, 1], dtype))


def test_comparisons_bfloat16_and_strings():
    a = np.array([1.0, np.nan, -2.0], BF16)
    np.testing.assert_array_equal(run("Less", a, np.array([2.0], BF16)), [True, False, True])
    s = np.array([["a", "bb"], ["c", "a"]], dtype=object)
    got = run("Equal", s, np.array(["a"], dtype=object))
    assert got.dtype == np.bool_
    np.testing.assert_array_equal(got, [[True, False], [False, True]])


def test_logic_broadcast_and_not():
    a = RNG.random((2, 3, 4)) > 0.5
    b = RNG.random(4) > 0.5
    for op in ("And", "Or", "Xor"):
        check_ort(op, a, b)
    check_ort("Not", a)


def test_where_strings_and_zero_size():
    cond = np.array([True, False])
    got = run("Where", cond, np.array(["x", "y"], dtype=object), np.array(["z"], dtype=object))
    np.testing.assert_array_equal(got, np.array(["x", "z"], dtype=object))
    got = run("Where", np.zeros((0, 2), bool), np.ones((1, 2), np.int8), np.zeros(2, np.int8))
    assert got.shape == (0, 2) and got.dtype == np.int8


# --- Clip -----------------------------------------------------------------------------------------

def test_clip_attributes_before_opset_11():
    x = _randn(3, 4)
    np.testing.assert_array_equal(run("Clip", x, opset=6, min=-0.5, max=0.25), np.clip(x, -0.5, 0.25))
    np.testing.assert_array_equal(run("Clip", x, opset=6, max=0.0), np.minimum(x, 0.0))


def test_clip_inputs_integers_and_omitted_min():
    x = np.array([-100, 0, 100], np.int8)
    check_ort("Clip", x, None, np.array(50, np.int8))
    check_ort("Clip", x, np.array(-3, np.int8), np.array(-5, np.int8))  # min > max: every value is max
    got = run("Clip", np.array([1.0, 9.0], BF16), np.array(2.0, BF16), np.array(5.0, BF16))
    assert got.dtype == BF16
    np.testing.assert_array_equal(got, np.array([2.0, 5.0], BF16))


# --- bitwise --------------------------------------------------------------------------------------

def test_bitshift_uint64_keeps_every_bit():
    x = np.array([2**64 - 1, 2**63 + 1, 1], np.uint64)
    y = np.array([1, 0, 63], np.uint64)
    np.testing.assert_array_equal(run("BitShift", x, y, direction="RIGHT"), [2**63 - 1, 2**63 + 1, 0])
    np.testing.assert_array_equal(run("BitShift", x, y, direction="LEFT"), [2**64 - 2, 2**63 + 1, 2**63])
    with pytest.raises(AclError):
        run("BitShift", x, y, direction="UP")


def test_bitshift_signed_out_of_range_and_broadcast():
    x = np.array([[-8], [8]], np.int16)
    y = np.array([1, 16, -1, 15], np.int16)
    got = run("BitShift", x, y, direction="RIGHT", opset=28)
    assert got.dtype == np.int16
    np.testing.assert_array_equal(got, [[-4, -1, -1, -1], [4, 0, 0, 0]])


@pytest.mark.parametrize("dtype", [np.uint8, np.int16, np.uint64])
def test_bitwise(dtype):
    a = np.array([[0b1100, 0b1010, 7]], dtype)
    b = np.array([[0b1010], [0b0001]], dtype)
    for op in ("BitwiseAnd", "BitwiseOr", "BitwiseXor"):
        check_ort(op, a, b, opset=18)
    check_ort("BitwiseNot", a, opset=18)


# --- activations ----------------------------------------------------------------------------------

def _hsig(x):
    return np.clip(0.2 * x + 0.5, 0, 1)


ACTIVATIONS = {  # op: (float32 oracle, attributes)
    "Relu": (lambda x: np.maximum(x, 0), {}),
    "LeakyRelu": (lambda x: np.where(x < 0, 0.1 * x, x), {"alpha": 0.1}),
    "Elu": (lambda x: np.where(x < 0, 0.5 * np.expm1(x), x), {"alpha": 0.5}),
    "Selu": (lambda x: 1.0507009873554805 * np.where(x <= 0, 1.6732632423543772 * np.expm1(x), x), {}),
    "Celu": (lambda x: np.maximum(x, 0) + np.minimum(0, 2 * np.expm1(x / 2)), {"alpha": 2.0}),
    "Sigmoid": (lambda x: 1 / (1 + np.exp(-x)), {}),
    "HardSigmoid": (_hsig, {}),
    "HardSwish": (lambda x: x * np.clip(x / 6 + 0.5, 0, 1), {}),
    "Softplus": (lambda x: np.log1p(np.exp(x)), {}),
    "Softsign": (lambda x: x / (1 + np.abs(x)), {}),
    "ThresholdedRelu": (lambda x: np.where(x > 0.5, x, 0), {"alpha": 0.5}),
    "Shrink": (lambda x: np.where(x < -0.5, x + 0.1, np.where(x > 0.5, x - 0.1, 0)), {"bias": 0.1}),
    "Mish": (lambda x: x * np.tanh(np.log1p(np.exp(x))), {}),
    "Gelu": (lambda x: 0.5 * x * (1 + erf(x / np.sqrt(2))), {}),
    "Swish": (lambda x: x / (1 + np.exp(-1.5 * x)), {"alpha": 1.5}),
}


@pytest.mark.parametrize("dtype", [np.float32, np.float16, BF16, np.float64])
@pytest.mark.parametrize("op", sorted(ACTIVATIONS))
def test_activations_keep_dtype(op, dtype):
    fn, attrs = ACTIVATIONS[op]
    x = (_randn(4, 5) * 3).astype(dtype)
    got = run(op, x, opset=28, **attrs)
    assert got.dtype == np.dtype(dtype) and got.shape == x.shape
    want = fn(x.astype(np.float64)).astype(dtype)
    tol = {np.float32: 1e-5, np.float64: 1e-7}.get(dtype, 1e-2)  # attributes are float32
    np.testing.assert_allclose(got.astype(np.float64), want.astype(np.float64), rtol=tol, atol=tol)


def test_activations_on_extremes():
    x = np.array([-1000.0, -50.0, 0.0, 50.0, 1000.0, np.nan], np.float32)
    np.testing.assert_allclose(run("Sigmoid", x), [0.0, 1.9287499e-22, 0.5, 1.0, 1.0, np.nan], rtol=1e-6, atol=0)
    np.testing.assert_array_equal(run("Softplus", x)[[0, 4]], [0.0, 1000.0])
    np.testing.assert_array_equal(run("Relu", x)[[0, 4, 5]], [0.0, 1000.0, np.nan])


def test_integer_activations():
    x = np.array([-3, -1, 0, 2, 5], np.int8)
    for dtype in (np.int8, np.int32):
        check_ort("Relu", x.astype(dtype), opset=14)
        check_ort("Shrink", x.astype(dtype), opset=9, lambd=1.0, bias=1.0)
    for dtype in (np.int32, np.int64):
        check_ort("PRelu", x.astype(dtype), np.array([2], dtype), opset=16)


def test_prelu_slope_broadcasts_per_channel():
    x, slope = _randn(2, 3, 4, 4), _randn(3, 1, 1)
    check_ort("PRelu", x, slope, opset=16)


def test_gelu_tanh_and_float16():
    x = _randn(3, 7, dtype=np.float16)
    got = run("Gelu", x, opset=20, approximate="tanh")
    x32 = x.astype(np.float32)
    want = 0.5 * x32 * (1 + np.tanh(np.sqrt(2 / np.pi) * (x32 + 0.044715 * x32 ** 3)))
    assert got.dtype == np.float16
    np.testing.assert_allclose(got, want.astype(np.float16), rtol=1e-3, atol=1e-3)
    with pytest.raises(AclError):
        run("Gelu", x, opset=20, approximate="fast")


def test_swiglu_bfloat16_and_shape_check():
    a, b = _randn(2, 6).astype(BF16), _randn(2, 6).astype(BF16)
    got = run("SwiGLU", a, b, opset=28, alpha=1.702)
    a32, b32 = a.astype(np.float32), b.astype(np.float32)
    assert got.dtype == BF16
    np.testing.assert_allclose(got.astype(np.float32), a32 / (1 + np.exp(-1.702 * a32)) * b32, rtol=1e-2, atol=1e-2)
    with pytest.raises(AclError):
        run("SwiGLU", a, b[:, :3], opset=28)
