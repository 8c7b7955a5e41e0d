"""The fast CPU convolution and pooling kernels (opencann.ops.cpu_conv) against the reference kernels."""
import numpy as np
import pytest

from opencann.errors import AclError
from opencann.ops import activation as act_ops
from opencann.ops import blas, registry
from opencann.ops import conv as ref_conv
from opencann.ops import cpu_conv as fast
from opencann.ops import pool as ref_pool
from opencann.ops.elementwise import clip

RNG = np.random.default_rng(7)

CONV_CASES = [  # (x shape, w shape, attributes)
    ((1, 3, 17, 15), (8, 3, 7, 7), {"strides": [2, 2], "pads": [3, 3, 3, 3]}),
    ((3, 8, 9, 11), (6, 8, 3, 3), {"pads": [1, 1, 1, 1]}),
    ((1, 8, 10, 10), (4, 8, 1, 1), {}),
    ((3, 8, 10, 9), (5, 8, 1, 1), {"strides": [2, 2]}),
    ((1, 5, 12, 13), (7, 5, 5, 5), {"pads": [2, 0, 1, 3], "strides": [1, 2]}),
    ((3, 8, 13, 11), (12, 4, 3, 5), {"pads": [1, 2, 0, 1], "strides": [2, 1], "dilations": [2, 1], "group": 2}),
    ((1, 6, 9, 10), (6, 1, 3, 3), {"pads": [1, 1, 1, 1], "group": 6}),
    ((3, 6, 9, 10), (6, 1, 3, 3), {"pads": [1, 1, 1, 1], "strides": [2, 2], "group": 6}),
    ((2, 6, 9, 10), (6, 1, 5, 5), {"auto_pad": "SAME_UPPER", "strides": [2, 3], "group": 6}),
    ((1, 4, 8, 7), (4, 1, 3, 3), {"auto_pad": "SAME_LOWER", "dilations": [2, 2], "group": 4}),
    ((2, 4, 8, 7), (8, 1, 3, 3), {"pads": [1, 1, 1, 1], "group": 4}),  # depth multiplier 2: grouped GEMMs
    ((2, 12, 7, 13), (12, 1, 3, 3), {"pads": [0, 1, 2, 1], "group": 12}),  # depthwise: 4-output groups and edges
    ((1, 3, 7, 8), (2, 3, 3, 3), {"auto_pad": "VALID", "strides": [2, 2]}),
    ((2, 8, 9, 10), (6, 8, 3, 5), {"pads": [2, 0, 1, 3]}),  # stride 1: channels-last GEMMs per kernel row
]


def _data(x_shape, w_shape):
    x = RNG.standard_normal(x_shape).astype(np.float32)
    w = RNG.standard_normal(w_shape).astype(np.float32)
    return x, w, RNG.standard_normal(w_shape[0]).astype(np.float32)


def test_fast_kernels_are_registered_for_the_cpu():
    assert registry.lookup("Conv", 17).kernel_for("cpu") is fast.conv
    assert registry.lookup("MaxPool", 12).kernel_for("cpu") is fast.max_pool
    assert registry.lookup("AveragePool", 19).kernel_for("cpu") is fast.average_pool
    assert registry.lookup("GlobalAveragePool", 1).kernel_for("cpu") is fast.global_average_pool
    assert registry.lookup("FusedConv", 1, "opencann") is not None


@pytest.mark.parametrize("x_shape,w_shape,attrs", CONV_CASES)
def test_conv_matches_reference(x_shape, w_shape, attrs):
    x, w, b = _data(x_shape, w_shape)
    for bias in (b, None):
        want = ref_conv.conv(x, w, bias, **attrs)
        got = fast.conv(x, w, bias, **attrs)
        assert got.shape == want.shape and got.dtype == np.float32
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())


def _reference_fused(x, w, b, z, activation, alpha, beta, **attrs):
    y = ref_conv.conv(x, w, b, **attrs)
    y = y if z is None else y + z
    return {"": lambda v: v, "Relu": act_ops.relu, "Sigmoid": act_ops.sigmoid, "HardSwish": act_ops.hard_swish,
            "Clip": lambda v: clip(v, np.float32(alpha), np.float32(beta)),
            "LeakyRelu": lambda v: act_ops.leaky_relu(v, alpha=alpha),
            "HardSigmoid": lambda v: act_ops.hard_sigmoid(v, alpha=alpha, beta=beta)}[activation](y)


@pytest.mark.parametrize("activation,alpha,beta", [("", 0, 0), ("Relu", 0, 0), ("Clip", 0, 6), ("Clip", -0.5, 0.25),
                                                   ("LeakyRelu", 0.1, 0), ("Sigmoid", 0, 0),
                                                   ("HardSigmoid", 0.3, 0.4), ("HardSwish", 0, 0)])
@pytest.mark.parametrize("case", [1, 3, 6, 7, 9, 12, 13])
def test_fused_conv_nchw_and_channels_last_match_unfused(activation, alpha, beta, case):
    x_shape, w_shape, attrs = CONV_CASES[case]
    x, w, b = _data(x_shape, w_shape)
    want_shape = ref_conv.conv(x, w, b, **attrs).shape
    z = RNG.standard_normal(want_shape).astype(np.float32)
    for residual in (None, z):
        want = _reference_fused(x, w, b, residual, activation, alpha, beta, **attrs)
        got = fast.fused_conv(x, w, b, residual, activation=activation, alpha=alpha, beta=beta, **attrs)
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * np.abs(want).max())
        last = fast.fused_conv(x.transpose(0, 2, 3, 1), np.ascontiguousarray(w.transpose(2, 3, 1, 0)), b,
                               None if residual is None else residual.transpose(0, 2, 3, 1), activation=activation,
                               alpha=alpha, beta=beta, channels_last=1, **attrs)
        np.testing.assert_allclose(last.transpose(0, 3, 1, 2), want, rtol=1e-5, atol=1e-5 * np.abs(want).max())


@pytest.mark.parametrize("case", [0, 1, 2, 3, 4, 12])
def test_channels_last_tiles_match_one_tile(case, monkeypatch):
    x_shape, w_shape, attrs = CONV_CASES[case]
    x, w, b = _data((x_shape[0], x_shape[1], 12, 11), w_shape)
    z = RNG.standard_normal(ref_conv.conv(x, w, b, **attrs).shape).astype(np.float32)
    want = _reference_fused(x, w, b, z, "Relu", 0, 0, **attrs)
    monkeypatch.setattr(fast, "TILE_ELEMENTS", 3 * 11 * w_shape[1] * w_shape[2] * w_shape[3])  # about 3 rows a tile
    monkeypatch.setattr(fast, "OUT_TILE_ELEMENTS", 1)  # 64-pixel tiles for 1x1 convs
    got = fast.fused_conv(x.transpose(0, 2, 3, 1), np.ascontiguousarray(w.transpose(2, 3, 1, 0)), b,
                          z.transpose(0, 2, 3, 1), activation="Relu", channels_last=1, **attrs)
    np.testing.assert_allclose(got.transpose(0, 3, 1, 2), want, rtol=1e-5, atol=1e-5 * np.abs(want).max())
    nchw = fast.fused_conv(x, w, b, z, activation="Relu", **attrs)  # im2col in tiles of rows, GEMMs into y's columns
    np.testing.assert_allclose(nchw, want, rtol=1e-5, atol=1e-5 * np.abs(want).max())


@pytest.mark.parametrize("case", [0, 11])
def test_channels_last_few_channel_convs_read_nchw_views_and_nhwc_arrays(case):
    x_shape, w_shape, attrs = CONV_CASES[case]
    x, w, b = _data(x_shape, w_shape)
    wl = np.ascontiguousarray(w.transpose(2, 3, 1, 0))
    for more in ({}, {"strides": [1, 1]}, {"strides": [1, 2], "dilations": [2, 1]}):
        want = _reference_fused(x, w, b, None, "Relu", 0, 0, **dict(attrs, **more))
        for xl in (x.transpose(0, 2, 3, 1), np.ascontiguousarray(x.transpose(0, 2, 3, 1))):
            got = fast.fused_conv(xl, wl, b, activation="Relu", channels_last=1, **dict(attrs, **more))
            np.testing.assert_allclose(got.transpose(0, 3, 1, 2), want, rtol=1e-5, atol=1e-5 * np.abs(want).max())


STEM_CASES = [  # (kernel, attributes, activation, alpha, beta, residual): the direct few-channel kernel
    (7, {"strides": [2, 2], "pads": [3, 3, 3, 3]}, "Relu", 0, 0, False),  # ResNet's stem: 9 outputs a row
    (3, {"strides": [2, 2], "pads": [0, 1, 1, 0]}, "Clip", -0.5, 0.25, False),  # MobileNet's, asymmetric pads
    (3, {"strides": [1, 2], "pads": [1, 2, 0, 1]}, "HardSwish", 0, 0, True),  # residual and activation after
    (5, {"auto_pad": "VALID", "strides": [1, 1]}, "", 0, 0, True),
]


@pytest.mark.parametrize("m", [16, 32, 48, 64])
@pytest.mark.parametrize("case", range(len(STEM_CASES)))
def test_few_channel_direct_kernel_matches_reference(m, case, monkeypatch):
    k, attrs, activation, alpha, beta, residual = STEM_CASES[case]
    x, w, b = _data((2, 3, 13, 17), (m, 3, k, k))
    z = RNG.standard_normal(ref_conv.conv(x, w, b, **attrs).shape).astype(np.float32) if residual else None
    want = _reference_fused(x, w, b, z, activation, alpha, beta, **attrs)
    calls = []
    direct = fast._nhwc_direct
    monkeypatch.setattr(fast, "_nhwc_direct", lambda *args: calls.append(1) or direct(*args))
    zl = None if z is None else z.transpose(0, 2, 3, 1)
    got = fast.fused_conv(x.transpose(0, 2, 3, 1), np.ascontiguousarray(w.transpose(2, 3, 1, 0)), b, zl,
                          activation=activation, alpha=alpha, beta=beta, channels_last=1, **attrs)
    assert calls == [1]
    np.testing.assert_allclose(got.transpose(0, 3, 1, 2), want, rtol=1e-5, atol=1e-5 * np.abs(want).max())


@pytest.mark.parametrize("activation,alpha,beta", [("Relu", 0, 0), ("Clip", -0.5, 0.25), ("HardSwish", 0, 0)])
@pytest.mark.parametrize("pads", [[1, 1, 1, 1], [0, 2, 1, 0]])
@pytest.mark.parametrize("tile", [2, 4])
def test_channels_last_winograd_matches_reference(activation, alpha, beta, pads, tile, monkeypatch):
    x, w, b = _data((3, 8, 9, 10), (6, 8, 3, 3))  # odd output sizes: edge tiles
    wl = np.ascontiguousarray(w.transpose(2, 3, 1, 0))
    blas.constant(wl)
    z = RNG.standard_normal(ref_conv.conv(x, w, b, pads=pads).shape).astype(np.float32)
    monkeypatch.setattr(fast, "WINOGRAD_CHANNELS", 8)
    monkeypatch.setattr(fast, "WINOGRAD_SIZE", 4)
    monkeypatch.setattr(fast, "WINOGRAD4_CHANNELS", 8 if tile == 4 else 9)
    monkeypatch.setattr(fast, "WINOGRAD4_SIZE", 4)
    monkeypatch.setattr(fast, "WINOGRAD_BLOCK", (tile + 2) ** 2 * -(-10 // tile) * 8 * 2)  # blocks of 2 tile rows
    for residual in (None, z):
        want = _reference_fused(x, w, b, residual, activation, alpha, beta, pads=pads)
        scale = np.abs(_reference_fused(x, w, b, residual, "", 0, 0, pads=pads)).max()  # of the sums, not clipped
        got = fast.fused_conv(x.transpose(0, 2, 3, 1), wl, b, None if residual is None else residual.transpose(
            0, 2, 3, 1), activation=activation, alpha=alpha, beta=beta, channels_last=1, pads=pads)
        np.testing.assert_allclose(got.transpose(0, 3, 1, 2), want, rtol=1e-5, atol=1e-5 * scale)
    assert set(fast._winograd_weights) >= {(id(wl), tile)} and (id(wl), 6 - tile) not in fast._winograd_weights
    plain = wl.copy()  # not declared constant: no transformed copy kept, the row-window GEMMs instead
    fast.fused_conv(x.transpose(0, 2, 3, 1), plain, b, channels_last=1, pads=pads)
    assert (id(plain), tile) not in fast._winograd_weights


@pytest.mark.parametrize("case", [1, 4, 11])
def test_channels_last_image_groups_match_reference(case, monkeypatch):
    x_shape, w_shape, attrs = CONV_CASES[case]
    x, w, b = _data((5, *x_shape[1:]), w_shape)
    z = RNG.standard_normal(ref_conv.conv(x, w, b, **attrs).shape).astype(np.float32)
    want = _reference_fused(x, w, b, z, "Relu", 0, 0, **attrs)
    p, k = z.shape[2] * z.shape[3], w_shape[1] * w_shape[2] * w_shape[3]
    monkeypatch.setattr(fast, "TILE_ELEMENTS", 2 * p * k)  # two images' windows a GEMM: groups 2, 2, 1
    got = fast.fused_conv(x.transpose(0, 2, 3, 1), np.ascontiguousarray(w.transpose(2, 3, 1, 0)), b,
                          z.transpose(0, 2, 3, 1), activation="Relu", channels_last=1, **attrs)
    np.testing.assert_allclose(got.transpose(0, 3, 1, 2), want, rtol=1e-5, atol=1e-5 * np.abs(want).max())


def test_other_dtypes_and_ranks_fall_back_to_the_reference():
    x, w, b = _data((2, 4, 6, 6), (3, 4, 3, 3))
    x64, w64 = x.astype(np.float64), w.astype(np.float64)
    want = ref_conv.conv(x64, w64, b, pads=[1, 1, 1, 1])
    np.testing.assert_array_equal(fast.conv(x64, w64, b, pads=[1, 1, 1, 1]), want)
    x1, w1 = x[:, :, 0], w[:, :, 0]  # 1-D conv
    np.testing.assert_array_equal(fast.conv(x1, w1, b), ref_conv.conv(x1, w1, b))
    x16 = x.astype(np.float16)
    got = fast.fused_conv(x16, w.astype(np.float16), None, activation="Relu")
    assert got.dtype == np.float16
    np.testing.assert_array_equal(got, act_ops.relu(ref_conv.conv(x16, w.astype(np.float16))))
    got = fast.fused_conv(x16.transpose(0, 2, 3, 1), w.astype(np.float16).transpose(2, 3, 1, 0), activation="Relu",
                          channels_last=1)
    np.testing.assert_array_equal(got.transpose(0, 3, 1, 2), act_ops.relu(ref_conv.conv(x16, w.astype(np.float16))))


def test_fused_conv_rejects_bad_arguments():
    x, w, b = _data((1, 4, 6, 6), (3, 4, 3, 3))
    with pytest.raises(AclError, match="unknown activation 'Gelu'"):
        fast.fused_conv(x, w, b, activation="Gelu")
    with pytest.raises(AclError, match="channels_last needs 4-D"):
        fast.fused_conv(x[0], w[0], activation="Relu", channels_last=1)
    with pytest.raises(AclError, match="group 3"):
        fast.conv(x, w, b, group=3)


def test_activation_keeps_nan_like_the_reference():
    x, w, _ = _data((1, 2, 4, 4), (2, 2, 1, 1))
    x[0, :, 1, 1] = np.nan
    for activation, alpha, beta in (("Relu", 0, 0), ("Clip", 0, 6), ("LeakyRelu", 0.1, 0)):
        got = fast.fused_conv(x, w, activation=activation, alpha=alpha, beta=beta)
        want = _reference_fused(x, w, None, None, activation, alpha, beta)
        np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
        assert np.isnan(got).any()


POOL_CASES = [
    ((1, 4, 12, 12), {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1]}),
    ((2, 5, 11, 9), {"kernel_shape": [3, 2], "strides": [2, 1], "pads": [1, 0, 2, 1], "ceil_mode": 1}),
    ((2, 5, 11, 9), {"kernel_shape": [3, 3], "strides": [2, 2], "auto_pad": "SAME_LOWER", "dilations": [2, 1]}),
    ((1, 3, 7, 7), {"kernel_shape": [2, 2], "auto_pad": "SAME_UPPER", "ceil_mode": 1, "strides": [2, 2]}),
    ((1, 3, 8, 9), {"kernel_shape": [4, 3]}),
    ((2, 3, 11, 13), {"kernel_shape": [3, 4], "strides": [3, 3], "pads": [2, 2, 1, 0], "dilations": [1, 2]}),
]


@pytest.mark.parametrize("shape,attrs", POOL_CASES)
def test_pools_match_reference(shape, attrs):
    x = RNG.standard_normal(shape).astype(np.float32)
    np.testing.assert_array_equal(fast.max_pool(x, **attrs), ref_pool.max_pool(x, **attrs))
    for include in (0, 1):
        if include and "dilations" in attrs:
            continue
        want = ref_pool.average_pool(x, count_include_pad=include, **attrs)
        np.testing.assert_allclose(fast.average_pool(x, count_include_pad=include, **attrs), want, rtol=1e-6,
                                   atol=1e-6)


@pytest.mark.parametrize("shape,attrs", POOL_CASES)
def test_max_pool_of_channels_last_data_stays_channels_last(shape, attrs):
    x = RNG.standard_normal(shape).astype(np.float32)
    view = np.ascontiguousarray(x.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2)  # what a chain's Transpose yields
    got = fast.max_pool(view, **attrs)
    np.testing.assert_array_equal(got, ref_pool.max_pool(x, **attrs))
    assert got.transpose(0, 2, 3, 1).flags.c_contiguous


def test_max_pool_propagates_nan_and_falls_back_for_indices():
    x = RNG.standard_normal((1, 2, 6, 6)).astype(np.float32)
    x[0, 1, 2, 3] = np.nan
    attrs = {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1]}
    np.testing.assert_array_equal(fast.max_pool(x, **attrs), ref_pool.max_pool(x, **attrs))
    view = np.ascontiguousarray(x.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2)
    np.testing.assert_array_equal(fast.max_pool(view, **attrs), ref_pool.max_pool(x, **attrs))
    y, idx = fast.max_pool(x, n_outputs=2, **attrs)
    want_y, want_idx = ref_pool.max_pool(x, n_outputs=2, **attrs)
    np.testing.assert_array_equal(y, want_y)
    np.testing.assert_array_equal(idx, want_idx)


def test_global_average_pool_matches_reference():
    for shape in ((2, 3, 5, 7), (1, 4, 9)):
        x = RNG.standard_normal(shape).astype(np.float32)
        np.testing.assert_allclose(fast.global_average_pool(x), ref_pool.global_average_pool(x), rtol=1e-5, atol=1e-6)
    nhwc_view = RNG.standard_normal((2, 5, 6, 8)).astype(np.float32).transpose(0, 3, 1, 2)
    np.testing.assert_allclose(fast.global_average_pool(nhwc_view), ref_pool.global_average_pool(nhwc_view),
                               rtol=1e-5, atol=1e-6)
    x = RNG.standard_normal((2, 3, 4, 4))
    np.testing.assert_array_equal(fast.global_average_pool(x), ref_pool.global_average_pool(x))


def test_reduce_mean_over_channels_last_pixels_matches_reference(monkeypatch):
    reference = registry.lookup("ReduceMean", 18).reference
    assert registry.lookup("ReduceMean", 13).kernel_for("cpu") is fast.reduce_mean
    calls = []
    monkeypatch.setattr(fast, "_nhwc_mean", lambda v, mean=fast._nhwc_mean: calls.append(v.shape) or mean(v))
    x = RNG.standard_normal((2, 5, 6, 37)).astype(np.float32)
    for axes, keepdims in ((np.array([1, 2]), 0), ([2, -3], 1)):  # the fast path: input or attribute axes
        got = fast.reduce_mean(x, axes, keepdims=keepdims)
        assert got.shape == ((2, 37) if not keepdims else (2, 1, 1, 37)) and got.dtype == np.float32
        np.testing.assert_allclose(got, reference(x, axes, keepdims=keepdims), rtol=1e-5, atol=1e-6)
    assert calls == [x.shape, x.shape]
    for data, axes in ((x, [1, 3]), (x, None), (x.astype(np.float64), [1, 2]), (x.transpose(0, 3, 1, 2), [1, 2]),
                       (x[..., 0], [1, 2])):  # other axes, dtypes, layouts and ranks: the reference
        np.testing.assert_array_equal(fast.reduce_mean(data, axes, keepdims=0), reference(data, axes, keepdims=0))
    assert len(calls) == 2


def test_nchw_views_of_channels_last_data_are_read_correctly():
    x, w, b = _data((2, 6, 9, 7), (4, 6, 3, 3))
    view = np.ascontiguousarray(x.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2)  # what a chain's Transpose yields
    assert not view.flags.c_contiguous
    np.testing.assert_allclose(fast.conv(view, w, b, pads=[1, 1, 1, 1]), ref_conv.conv(x, w, b, pads=[1, 1, 1, 1]),
                               rtol=1e-5, atol=1e-5)
    attrs = {"kernel_shape": [3, 3], "strides": [2, 2]}
    np.testing.assert_array_equal(fast.max_pool(view, **attrs), ref_pool.max_pool(x, **attrs))


def test_unpacked_gemm_matches_numpy_with_constant_weights():
    a, b = RNG.standard_normal((200, 96)).astype(np.float32), RNG.standard_normal((96, 700)).astype(np.float32)
    blas.constant(b)
    out = RNG.standard_normal((200, 700)).astype(np.float32)
    want = a @ b + 0.5 * out
    np.testing.assert_allclose(blas.sgemm_unpacked(a, b, out, beta=0.5), want, rtol=1e-4, atol=1e-3)
    at = np.ascontiguousarray(a.T)
    np.testing.assert_allclose(blas.sgemm_unpacked(at, b, np.empty((200, 700), np.float32), trans_a=True), a @ b,
                               rtol=1e-4, atol=1e-3)
    wide = np.zeros((200, 1400), np.float32)  # a strided output
    blas.sgemm_unpacked(a, b, wide[:, ::2])
    np.testing.assert_allclose(wide[:, ::2], a @ b, rtol=1e-4, atol=1e-3)
    assert blas.is_constant(b) and not blas.is_constant(a) and not blas.is_constant(b[:10])
