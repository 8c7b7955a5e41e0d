"""Cast and quantization kernels: dtypes, attributes and shapes ONNX's node suite does not cover.

Each case runs one node through the ONNX backend; the oracle is NumPy/ml_dtypes, or onnxruntime where
it implements the case.
"""
import functools

import ml_dtypes
import numpy as np
import pytest
from onnx import TensorProto, helper

from opencann.compiler import dtypes
from opencann.errors import AclError
from opencann.frontends.onnx.backend import OpencannBackend
from tests.ops.single_node import check_node, run_node

RNG = np.random.default_rng(0)
E4M3 = ml_dtypes.float8_e4m3fn
E8M0 = ml_dtypes.float8_e8m0fnu


run = functools.partial(run_node, opset=25)
check_ort = functools.partial(check_node, exact=True)


# --- Cast ------------------------------------------------------------------------------------------

def test_cast_strings_to_numbers():
    s = np.array([" 3.5", "+INF", "-inf", "NaN", "1e-5", "1E8"], dtype=object)
    got = run("Cast", s, to=TensorProto.FLOAT)
    np.testing.assert_array_equal(got, np.array([3.5, np.inf, -np.inf, np.nan, 1e-5, 1e8], np.float32))
    assert got.dtype == np.float32
    big = np.array(["9007199254740993", "-7"], dtype=object)
    np.testing.assert_array_equal(run("Cast", big, to=TensorProto.INT64), [9007199254740993, -7])
    np.testing.assert_array_equal(run("Cast", np.array(["100.5"], dtype=object), to=TensorProto.INT32), [100])


def test_cast_numbers_to_strings_round_trip():
    x = np.array([0.1, -2.5, np.nan, np.inf, -np.inf, 1e-7], np.float32)
    s = run("Cast", x, to=TensorProto.STRING)
    assert s.dtype == object and list(s[:5]) == ["0.1", "-2.5", "NaN", "INF", "-INF"]
    np.testing.assert_array_equal(run("Cast", s, to=TensorProto.FLOAT), x)
    assert list(run("Cast", np.array([7, -3], np.int8), to=TensorProto.STRING)) == ["7", "-3"]


def test_cast_opset1_type_name():
    x = np.array([1.7, -2.2], np.float32)
    np.testing.assert_array_equal(run("Cast", x, opset=1, to="INT32"), np.array([1, -2], np.int32))


@pytest.mark.parametrize("src,dst", [(np.int16, np.int8), (np.int64, np.uint8), (np.float32, np.float16),
                                     (np.float64, np.int32), (np.uint8, np.bool_), (np.float32, np.float64)])
def test_cast_numeric_matches_ort(src, dst):
    x = (RNG.standard_normal((3, 5)) * 200).astype(src)
    check_ort("Cast", x, to=dtypes.to_onnx(dst))


@pytest.mark.parametrize("dst", [np.float32, np.int8, np.int64, np.bool_])
def test_cast_zero_size(dst):
    y = run("Cast", np.zeros((0, 3), np.float16), to=dtypes.to_onnx(dst))
    assert y.shape == (0, 3) and y.dtype == dst


def test_cast_bfloat16_and_float16():
    x = np.array([0.1, 1000.3, -7.25, 65504.0], np.float32)
    np.testing.assert_array_equal(run("Cast", x, to=TensorProto.BFLOAT16), x.astype(ml_dtypes.bfloat16))
    h = x.astype(np.float16)
    np.testing.assert_array_equal(run("Cast", h, to=TensorProto.BFLOAT16), h.astype(np.float32).astype(
        ml_dtypes.bfloat16))


def test_cast_between_low_precision_types():
    x = np.array([-3, 0, 5, 7], ml_dtypes.int4)
    np.testing.assert_array_equal(run("Cast", x, to=TensorProto.UINT4).astype(np.int32), [13, 0, 5, 7])
    f8 = np.array([1.5, -448, 0.25], E4M3)
    np.testing.assert_array_equal(run("Cast", f8, to=TensorProto.FLOAT8E5M2).astype(np.float32), [1.5, -448, 0.25])


def test_cast_float8_saturate():
    x = np.array([1e6, -1e6, np.inf, np.nan, 500.0], np.float32)
    sat = run("Cast", x, to=TensorProto.FLOAT8E4M3FN).astype(np.float32)
    np.testing.assert_array_equal(sat, [448, -448, 448, np.nan, 448])
    raw = run("Cast", x, to=TensorProto.FLOAT8E5M2, saturate=0).astype(np.float32)
    np.testing.assert_array_equal(raw, [np.inf, -np.inf, np.inf, np.nan, 512])


@pytest.mark.parametrize("mode,want", [("up", [1, 2, 4, 4]), ("down", [1, 2, 2, 2]), ("nearest", [1, 2, 2, 4])])
def test_cast_e8m0_round_modes(mode, want):
    x = np.array([1.0, 2.0, 2.9, 3.0], np.float32)
    y = run("Cast", x, to=TensorProto.FLOAT8E8M0, round_mode=mode)
    assert y.dtype == E8M0
    np.testing.assert_array_equal(y.astype(np.float32), want)


def test_cast_e8m0_saturation():
    x = np.array([np.inf, np.nan, 3e38], np.float32)
    sat = run("Cast", x, to=TensorProto.FLOAT8E8M0).astype(np.float32)
    assert sat[0] == sat[2] == float(ml_dtypes.finfo(E8M0).max) and np.isnan(sat[1])
    assert np.isnan(run("Cast", x[2:], to=TensorProto.FLOAT8E8M0, saturate=0).astype(np.float32)).all()


def test_castlike_takes_target_dtype():
    y = run("CastLike", np.array([1.5, -2.0], np.float32), np.zeros((0,), np.float16))
    assert y.dtype == np.float16
    s = run("CastLike", np.array([2, 3], np.int32), np.array(["x"], dtype=object), opset=21)
    assert list(s) == ["2", "3"]


# --- BitCast ---------------------------------------------------------------------------------------

def test_bitcast_sub_byte_and_errors():
    x = np.array([-1, -8, 7], ml_dtypes.int4)
    np.testing.assert_array_equal(run("BitCast", x, opset=26, to=TensorProto.UINT4).astype(np.int32), [15, 8, 7])
    h = np.array([1.0, -2.0], np.float16)
    np.testing.assert_array_equal(run("BitCast", h, opset=26, to=TensorProto.BFLOAT16), h.view(ml_dtypes.bfloat16))
    with pytest.raises(AclError):
        run("BitCast", np.zeros(2, np.float32), opset=26, to=TensorProto.INT64)


# --- QuantizeLinear / DequantizeLinear -------------------------------------------------------------

def test_quantize_matches_ort_per_axis_negative_axis():
    x = RNG.standard_normal((2, 3, 4)).astype(np.float32) * 50
    scale = np.array([0.5, 1.0, 2.0, 0.25], np.float32)
    zp = np.array([0, 10, -5, 3], np.int8)
    check_ort("QuantizeLinear", x, scale, zp, axis=-1)
    check_ort("DequantizeLinear", run("QuantizeLinear", x, scale, zp, axis=-1), scale, zp, axis=-1)


def test_quantize_blocked_uneven_last_block():
    x = np.arange(10, dtype=np.float32).reshape(2, 5) * 3
    scale = np.array([[1.0, 2.0, 4.0], [0.5, 1.0, 3.0]], np.float32)
    y = run("QuantizeLinear", x, scale, axis=1, block_size=2, output_dtype=TensorProto.INT8)
    want = np.clip(np.rint(x / np.repeat(scale, 2, axis=1)[:, :5]), -128, 127).astype(np.int8)
    np.testing.assert_array_equal(y, want)
    back = run("DequantizeLinear", y, scale, axis=1, block_size=2)
    np.testing.assert_array_equal(back, y.astype(np.float32) * np.repeat(scale, 2, axis=1)[:, :5])
    with pytest.raises(AclError):
        run("QuantizeLinear", x, scale[:, :2], axis=1, block_size=2)


def test_quantize_int4_saturates_and_rounds_half_even():
    x = np.array([0.5, 1.5, 2.5, 100, -100], np.float32)
    y = run("QuantizeLinear", x, np.float32(1), np.array(0, ml_dtypes.int4))
    assert y.dtype == ml_dtypes.int4
    np.testing.assert_array_equal(y.astype(np.int32), [0, 2, 2, 7, -8])


def test_quantize_bfloat16_input_and_zero_size():
    x = np.array([1.0, -3.0, 250.0], ml_dtypes.bfloat16)
    y = run("QuantizeLinear", x, np.array(2.0, ml_dtypes.bfloat16), np.uint8(100))
    np.testing.assert_array_equal(y, np.array([100, 98, 225], np.uint8))
    empty = run("QuantizeLinear", np.zeros((0, 4), np.float32), np.float32(1), np.int8(0))
    assert empty.shape == (0, 4) and empty.dtype == np.int8


def test_dequantize_int32_and_float16_output():
    x = np.array([-(2**31), 2**31 - 1, 0], np.int32)
    np.testing.assert_array_equal(run("DequantizeLinear", x, np.float32(0.5)),
                                  (x.astype(np.float64) * 0.5).astype(np.float32))
    y = run("DequantizeLinear", np.array([3, 250], np.uint8), np.float32(0.5), np.uint8(2),
            output_dtype=TensorProto.FLOAT16)
    assert y.dtype == np.float16
    np.testing.assert_array_equal(y, np.array([0.5, 124], np.float16))


def test_dynamic_quantize_constant_input():
    y, scale, zp = OpencannBackend.prepare(_dynamic_model()).run([np.zeros((2, 3), np.float32)])
    assert y.dtype == np.uint8 and not y.any() and scale == 0 and zp == 0


def test_dynamic_quantize_matches_ort():
    ort = pytest.importorskip("onnxruntime")
    x = RNG.standard_normal((4, 5)).astype(np.float32)
    model = _dynamic_model()
    want = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})
    for g, w in zip(OpencannBackend.prepare(model).run([x]), want, strict=True):
        assert g.dtype == w.dtype
        np.testing.assert_array_equal(g, w)


def _dynamic_model():
    node = helper.make_node("DynamicQuantizeLinear", ["x"], ["y", "s", "z"])
    graph = helper.make_graph([node], "dq", [helper.make_tensor_value_info("x", TensorProto.FLOAT, None)],
                              [helper.make_tensor_value_info("y", TensorProto.UINT8, None),
                               helper.make_tensor_value_info("s", TensorProto.FLOAT, None),
                               helper.make_tensor_value_info("z", TensorProto.UINT8, None)])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 11)])


# --- integer products ------------------------------------------------------------------------------

def _u8(*shape):
    return RNG.integers(0, 256, shape).astype(np.uint8)


def _i8(*shape):
    return RNG.integers(-128, 128, shape).astype(np.int8)


def test_matmul_integer_batched_matches_ort():
    check_ort("MatMulInteger", _u8(2, 3, 4, 5), _i8(5, 6), np.uint8(7), np.int8(-3), opset=10)
    a, b, za, zb = _u8(4, 5), _u8(5, 3), _u8(4), _u8(3)  # per-row / per-column zero points
    want = (a.astype(np.int32) - za[:, None]) @ (b.astype(np.int32) - zb)
    np.testing.assert_array_equal(run("MatMulInteger", a, b, za, zb, opset=10), want)


@pytest.mark.parametrize("attrs", [
    {"strides": [2, 2]},
    {"dilations": [2, 1], "pads": [1, 0, 2, 1]},
    {"group": 2},
    {"auto_pad": "SAME_UPPER", "strides": [2, 2]},
    {"auto_pad": "SAME_LOWER"},
    {"auto_pad": "VALID"},
])
def test_conv_integer_matches_ort(attrs):
    groups = attrs.get("group", 1)
    check_ort("ConvInteger", _u8(2, 4, 7, 6), _u8(6, 4 // groups, 3, 2), np.uint8(5), np.uint8(9), opset=10,
              **attrs)


def test_conv_integer_1d_and_3d():
    x, w = _i8(1, 2, 9), _i8(3, 2, 3)
    want = np.stack([np.correlate(x[0, 0].astype(np.int32), w[m, 0].astype(np.int32))
                     + np.correlate(x[0, 1].astype(np.int32), w[m, 1].astype(np.int32)) for m in range(3)])
    np.testing.assert_array_equal(run("ConvInteger", x, w, opset=10)[0], want)
    y = run("ConvInteger", _u8(1, 1, 4, 4, 4), _u8(2, 1, 2, 2, 2), opset=10, strides=[2, 2, 2])
    assert y.shape == (1, 2, 2, 2, 2) and y.dtype == np.int32


def test_qlinear_conv_per_channel_bias_matches_ort():
    w_scale = np.array([0.01, 0.02, 0.005], np.float32)
    check_ort("QLinearConv", _u8(1, 2, 6, 6), np.float32(0.02), np.uint8(120), _i8(3, 2, 3, 3), w_scale,
              np.zeros(3, np.int8), np.float32(0.05), np.uint8(128),
              RNG.integers(-500, 500, 3).astype(np.int32), opset=10, pads=[1, 1, 1, 1])


def test_qlinear_matmul_matches_ort():
    check_ort("QLinearMatMul", _u8(2, 3, 8), np.float32(0.02), np.uint8(128), _u8(8, 4), np.float32(0.03),
              np.uint8(100), np.float32(0.1), np.uint8(110), opset=10)


def test_qlinear_matmul_vector_operand():
    a, b = _u8(8), _u8(8, 4)
    one, zero = np.ones(1, np.float32), np.zeros(1, np.uint8)
    y = run("QLinearMatMul", a, one * 0.01, zero, b, one * 0.01, zero, one, zero, opset=10)
    scale = np.float32(0.01) * np.float32(0.01)
    want = np.clip(np.rint((a.astype(np.float32) @ b.astype(np.float32)) * scale), 0, 255)
    assert y.shape == (4,)
    np.testing.assert_array_equal(y, want.astype(np.uint8))


def test_qlinear_matmul_float8():
    a = np.array([[1.0, 2.0], [-0.5, 4.0]], E4M3)
    b = np.array([[2.0, 0.0], [1.0, 1.0]], E4M3)
    zero = np.zeros((), E4M3)
    y = run("QLinearMatMul", a, np.float32(1), zero, b, np.float32(1), zero, np.float32(2), zero, opset=21)
    assert y.dtype == E4M3
    np.testing.assert_array_equal(y.astype(np.float32), [[2.0, 1.0], [1.5, 2.0]])
