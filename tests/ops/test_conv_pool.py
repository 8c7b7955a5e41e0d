"""Convolution, pooling, image and detection kernels: dtypes, shapes and options ONNX's node suite skips.

Each case runs one node through the ONNX backend; the oracle is onnxruntime (float32 for low-precision
inputs) or NumPy.
"""
import functools
import io

import ml_dtypes
import numpy as np
import PIL.Image
import pytest

from opencann.errors import AclError
from tests.ops.single_node import check_node, ort_node, run_node

BF16 = ml_dtypes.bfloat16
RNG = np.random.default_rng(0)


run = functools.partial(run_node, opset=22)
ort_run = ort_node
check_ort = functools.partial(check_node, atol=1e-5)


def check_low_precision(op, dtype, *inputs, opset=21, rtol=1e-2, **attrs):
    """A float16/bfloat16 run keeps its dtype and matches onnxruntime's float32 result."""
    low = [None if x is None else x.astype(dtype) if x.dtype == np.float32 else x for x in inputs]
    want = ort_run(op, *[None if x is None else x.astype(np.float32) if x.dtype == dtype else x for x in low],
                   opset=opset, **attrs)[0]
    got = run(op, *low, opset=opset, **attrs)
    assert got.dtype == dtype and got.shape == want.shape
    np.testing.assert_allclose(got.astype(np.float32), want, rtol=rtol, atol=rtol)


def randn(*shape, dtype=np.float32):
    return RNG.standard_normal(shape).astype(dtype)


def i64(*v):
    return np.array(v, dtype=np.int64)


# --- Conv / ConvTranspose / DeformConv / CausalConvWithState ----------------------------------------

@pytest.mark.parametrize("attrs", [
    {"group": 4, "dilations": [2], "strides": [3], "pads": [2, 1]},
    {"group": 1, "auto_pad": "SAME_LOWER", "strides": [2]},
])
def test_conv_1d_groups_dilations(attrs):
    check_ort("Conv", randn(2, 8, 17), randn(12, 8 // attrs["group"], 3), randn(12), **attrs)


def test_conv_depthwise_2d_asymmetric_pads_float64():
    x, w = randn(1, 6, 9, 7), randn(6, 1, 3, 2)
    attrs = {"group": 6, "pads": [0, 2, 1, 0], "strides": [2, 1]}
    got = run("Conv", x.astype(np.float64), w.astype(np.float64), **attrs)
    assert got.dtype == np.float64
    np.testing.assert_allclose(got, ort_run("Conv", x, w, **attrs)[0], rtol=1e-5, atol=1e-5)


def test_conv_3d_same_upper():
    check_ort("Conv", randn(1, 3, 5, 6, 7), randn(4, 3, 3, 2, 3), auto_pad="SAME_UPPER", strides=[2, 2, 1])


@pytest.mark.parametrize("dtype", [np.float16, BF16])
def test_conv_low_precision(dtype):
    check_low_precision("Conv", dtype, randn(1, 4, 8, 8), randn(6, 2, 3, 3), randn(6), group=2, pads=[1, 1, 1, 1])


def test_conv_empty_batch():
    y = run("Conv", randn(0, 3, 5, 5), randn(4, 3, 3, 3))
    assert y.shape == (0, 4, 3, 3) and y.dtype == np.float32


@pytest.mark.parametrize("attrs", [
    {"group": 2, "strides": [2, 3], "dilations": [2, 1], "output_padding": [1, 2], "pads": [1, 0, 0, 2]},
    {"group": 1, "strides": [2, 2], "output_shape": [9, 10], "auto_pad": "SAME_UPPER"},
])
def test_conv_transpose_2d(attrs):
    check_ort("ConvTranspose", randn(2, 4, 4, 5), randn(4, 3, 3, 3), randn(3 * attrs["group"]), **attrs)


def test_conv_transpose_3d_float16():
    check_low_precision("ConvTranspose", np.float16, randn(1, 2, 3, 4, 3), randn(2, 3, 2, 3, 2), strides=[2, 1, 2])


def test_deform_conv_zero_offset_is_conv():
    x, w = randn(2, 4, 7, 6), randn(6, 2, 3, 3)
    offset = np.zeros((2, 2 * 9 * 2, 4, 2), np.float32)
    y = run("DeformConv", x, w, offset, group=2, offset_group=2, strides=[2, 2], pads=[1, 0, 1, 0])
    np.testing.assert_allclose(y, run("Conv", x, w, group=2, strides=[2, 2], pads=[1, 0, 1, 0]), rtol=1e-5,
                               atol=1e-5)


def test_deform_conv_integer_offset_shifts_input():
    x, w = randn(1, 1, 6, 6), randn(1, 1, 1, 1)
    offset = np.stack([np.ones((6, 6)), -np.ones((6, 6))])[None].astype(np.float32)
    y = run("DeformConv", x, w, offset)
    want = np.zeros_like(x)
    want[..., :5, 1:] = x[..., 1:, :5] * w[0, 0, 0, 0]
    np.testing.assert_allclose(y, want, rtol=1e-6)


def test_causal_conv_kernel_one_has_empty_state():
    x, w = randn(2, 3, 4, dtype=np.float16), randn(3, 1, 1, dtype=np.float16)
    y, state = run("CausalConvWithState", x, w, n_outputs=2, opset=27, activation="silu")
    z = x.astype(np.float32) * w[:, 0, 0, None].astype(np.float32)
    assert y.dtype == np.float16 and state.shape == (2, 3, 0)
    np.testing.assert_allclose(y.astype(np.float32), z / (1 + np.exp(-z)), rtol=2e-3, atol=2e-3)


def test_causal_conv_state_carries_over():
    """Two half-length steps with the carried state equal one full-length step."""
    x, w, b = randn(1, 2, 6), randn(2, 1, 3), randn(2)
    full, _ = run("CausalConvWithState", x, w, b, n_outputs=2, opset=27)
    y1, s1 = run("CausalConvWithState", x[..., :3], w, b, n_outputs=2, opset=27)
    y2, _ = run("CausalConvWithState", x[..., 3:], w, b, s1, n_outputs=2, opset=27)
    np.testing.assert_allclose(np.concatenate([y1, y2], axis=2), full, rtol=1e-6)


# --- pooling ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [np.int8, np.uint8])
def test_maxpool_int_pads_do_not_leak(dtype):
    x = RNG.integers(0, 50, (1, 2, 5, 5)).astype(dtype) - (50 if dtype == np.int8 else 0)
    check_ort("MaxPool", x.astype(dtype), kernel_shape=[3, 3], pads=[1, 1, 1, 1], strides=[2, 2])


def test_maxpool_indices_storage_order_dilations_pads():
    x = randn(2, 3, 7, 6)
    check_ort("MaxPool", x, n_outputs=2, kernel_shape=[2, 3], pads=[1, 0, 1, 1], dilations=[2, 1],
              storage_order=1, ceil_mode=1)


@pytest.mark.parametrize("dtype", [np.float16, BF16])
def test_maxpool_low_precision_exact(dtype):
    x = randn(1, 2, 6, 6).astype(dtype)
    y = run("MaxPool", x, kernel_shape=[2, 2], strides=[2, 2])
    assert y.dtype == dtype
    np.testing.assert_array_equal(y, x.reshape(1, 2, 3, 2, 3, 2).max(axis=(3, 5)))


@pytest.mark.parametrize("count_include_pad", [0, 1])
def test_averagepool_ceil_pads_3d(count_include_pad):
    check_ort("AveragePool", randn(1, 2, 6, 7, 5), kernel_shape=[3, 2, 3], strides=[2, 2, 2], pads=[1, 0, 1, 1, 1, 0],
              ceil_mode=1, count_include_pad=count_include_pad)


def test_averagepool_bfloat16():
    check_low_precision("AveragePool", BF16, randn(1, 3, 8, 8), kernel_shape=[3, 3], pads=[1, 1, 1, 1])


def test_lppool_p3_strides():
    check_ort("LpPool", randn(1, 2, 7, 7), kernel_shape=[3, 2], strides=[2, 2], p=3, pads=[1, 0, 0, 1])


def test_global_pools_float16_and_1d():
    x = randn(2, 3, 5, 4).astype(np.float16)
    y = run("GlobalAveragePool", x)
    assert y.dtype == np.float16 and y.shape == (2, 3, 1, 1)
    np.testing.assert_allclose(y[..., 0, 0].astype(np.float32), x.astype(np.float32).mean(axis=(2, 3)), rtol=1e-3)
    check_ort("GlobalMaxPool", randn(2, 3, 9))
    check_ort("GlobalLpPool", randn(2, 3, 4, 5), p=3)


def test_maxunpool_inverts_maxpool():
    x = randn(2, 3, 6, 4)
    y, idx = run("MaxPool", x, n_outputs=2, kernel_shape=[2, 2], strides=[2, 2])
    up = run("MaxUnpool", y, idx, kernel_shape=[2, 2], strides=[2, 2])
    assert up.shape == x.shape
    np.testing.assert_array_equal(up, np.where(up != 0, x, 0))
    np.testing.assert_array_equal(np.sort(up[up != 0]), np.sort(y.ravel()))


# --- Resize / Upsample -------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [np.uint8, np.int32])
def test_resize_linear_integer_rounds(dtype):
    x = RNG.integers(0, 200, (1, 1, 4, 5)).astype(dtype)
    check_ort("Resize", x, None, np.array([1, 1, 1.7, 0.6], np.float32), mode="linear", atol=1)


def test_resize_cubic_antialias_sizes():
    x = randn(1, 2, 12, 9)
    check_ort("Resize", x, None, None, i64(5, 4), axes=[2, 3], mode="cubic", antialias=1, opset=18, rtol=1e-4,
              atol=1e-4)


@pytest.mark.parametrize("ctm", ["asymmetric", "half_pixel", "align_corners", "pytorch_half_pixel"])
def test_resize_nearest_modes_3d(ctm):
    x = randn(1, 1, 2, 4, 6)
    for nearest_mode in ("round_prefer_ceil", "floor", "ceil"):
        check_ort("Resize", x, None, np.array([1, 1, 2.5, 0.5, 1.5], np.float32), mode="nearest",
                  coordinate_transformation_mode=ctm, nearest_mode=nearest_mode)


def test_resize_not_smaller_policy():
    check_ort("Resize", randn(1, 1, 4, 6), None, None, i64(6, 6), mode="linear", axes=[2, 3],
              keep_aspect_ratio_policy="not_smaller", opset=18)


def test_resize_float16_keeps_dtype():
    check_low_precision("Resize", np.float16, randn(1, 2, 4, 4), None, np.array([1, 1, 2, 2], np.float32),
                        mode="linear", opset=19)


def test_upsample_v7_linear_and_v1_attributes():
    x = randn(1, 2, 3, 4)
    check_ort("Upsample", x, mode="linear", scales=[1.0, 1.0, 2.0, 1.5], opset=7)
    y = run("Upsample", x, opset=1, height_scale=2.0, width_scale=3.0)
    np.testing.assert_array_equal(y, x.repeat(2, axis=2).repeat(3, axis=3))


# --- GridSample / AffineGrid / RoiAlign / NonMaxSuppression -------------------------------------------

@pytest.mark.parametrize("padding_mode", ["zeros", "border", "reflection"])
@pytest.mark.parametrize("mode", ["bilinear", "nearest", "bicubic"])
@pytest.mark.parametrize("align_corners", [0, 1])
def test_gridsample_2d_out_of_range(mode, padding_mode, align_corners):
    x, grid = randn(2, 3, 5, 6), RNG.uniform(-1.6, 1.6, (2, 4, 7, 2)).astype(np.float32)
    check_ort("GridSample", x, grid, mode=mode, padding_mode=padding_mode, align_corners=align_corners, opset=16,
              rtol=1e-4, atol=1e-4)


def test_gridsample_3d_linear_float64():
    x, grid = randn(1, 2, 3, 4, 5, dtype=np.float64), RNG.uniform(-1.2, 1.2, (1, 2, 3, 4, 3))
    check_ort("GridSample", x, grid, mode="linear", padding_mode="border", opset=20)


def test_affine_grid_identity():
    theta = np.array([[[1, 0, 0], [0, 1, 0]]], np.float32)
    grid = run("AffineGrid", theta, i64(1, 1, 3, 4), opset=20, align_corners=1)
    np.testing.assert_allclose(grid[0, :, :, 0], np.tile(np.linspace(-1, 1, 4), (3, 1)), rtol=1e-6)
    np.testing.assert_allclose(grid[0, :, :, 1], np.tile(np.linspace(-1, 1, 3)[:, None], (1, 4)), rtol=1e-6)


@pytest.mark.parametrize("mode", ["avg", "max"])
def test_roialign_adaptive_sampling(mode):
    x = randn(2, 3, 10, 12)
    rois = np.array([[0.5, 1.0, 9.3, 7.2], [2, 2, 30, 25], [-3, -2, 4, 3]], np.float32)
    check_ort("RoiAlign", x, rois, i64(1, 0, 1), mode=mode, output_height=3, output_width=2, spatial_scale=0.5,
              opset=16)


def test_nms_center_boxes_limit_and_threshold():
    boxes = np.concatenate([RNG.uniform(0, 10, (2, 30, 2)), RNG.uniform(1, 4, (2, 30, 2))], axis=2).astype(np.float32)
    scores = RNG.uniform(0, 1, (2, 3, 30)).astype(np.float32)
    check_ort("NonMaxSuppression", boxes, scores, i64(5), np.array([0.3], np.float32), np.array([0.2], np.float32),
              center_point_box=1)


def test_nms_without_limit_selects_nothing():
    y = run("NonMaxSuppression", randn(1, 4, 4), randn(1, 2, 4))
    assert y.shape == (0, 3) and y.dtype == np.int64


# --- ImageDecoder -----------------------------------------------------------------------------------

def _encode(img: np.ndarray, fmt: str) -> np.ndarray:
    buf = io.BytesIO()
    PIL.Image.fromarray(img).save(buf, format=fmt)
    return np.frombuffer(buf.getvalue(), dtype=np.uint8)


def test_image_decoder_png_formats():
    img = RNG.integers(0, 256, (5, 7, 3)).astype(np.uint8)
    data = _encode(img, "PNG")
    np.testing.assert_array_equal(run("ImageDecoder", data, opset=20), img)
    np.testing.assert_array_equal(run("ImageDecoder", data, opset=20, pixel_format="BGR"), img[:, :, ::-1])
    gray = run("ImageDecoder", data, opset=20, pixel_format="Grayscale")
    assert gray.shape == (5, 7, 1) and gray.dtype == np.uint8


def test_image_decoder_grayscale_source_to_rgb():
    img = RNG.integers(0, 256, (4, 3)).astype(np.uint8)
    rgb = run("ImageDecoder", _encode(img, "PNG"), opset=20)
    np.testing.assert_array_equal(rgb, np.repeat(img[:, :, None], 3, axis=2))


def test_image_decoder_rejects_garbage():
    with pytest.raises(AclError, match="ImageDecoder"):
        run("ImageDecoder", np.arange(20, dtype=np.uint8), opset=20)
