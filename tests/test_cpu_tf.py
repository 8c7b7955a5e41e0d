"""The fast CPU kernels of TF training ops (:mod:`opencann.ops.cpu_tf`) against the NumPy reference kernels
(:mod:`opencann.ops.tf_nn`, :mod:`opencann.ops.tf_ops`): the CNN benchmark's shapes and the edge cases
(few and many channels, strides, dilations, SAME/VALID/EXPLICIT padding, NCHW, planned outputs), and the same
results, bit for bit, from their pieces on two threads (``workers``) as on one."""
import numpy as np
import pytest

from opencann.compiler.ir import Node, TensorType, Value
from opencann.compiler.passes.shape_inference import infer_node
from opencann.ops import blas, cpu_tf, tf_nn, tf_ops, tf_stateless, tf_training
from opencann.runtime import workers

RNG = np.random.default_rng(0)

# (input NHWC, filter, strides, padding, explicit_paddings, dilations)
CONV = {
    "first_layer": ((32, 28, 28, 1), (3, 3, 1, 16), 1, "VALID", [], 1),  # few channels: tap-major windows
    "second_layer": ((32, 13, 13, 16), (3, 3, 16, 32), 1, "SAME", [], 1),
    "stride2_same": ((2, 9, 8, 6), (3, 3, 6, 5), 2, "SAME", [], 1),
    "stride3_few": ((2, 9, 8, 3), (3, 2, 3, 4), 3, "SAME", [], 1),
    "explicit": ((2, 9, 8, 6), (3, 3, 6, 5), 2, "EXPLICIT", [0, 0, 1, 2, 0, 1, 0, 0], 1),
    "dilated": ((2, 9, 8, 5), (3, 3, 5, 4), 1, "SAME", [], 2),
    "dilated_few": ((2, 9, 8, 2), (2, 3, 2, 4), 1, "VALID", [], 2),
    # one channel, padding wider than the filter: some output columns see no input at all
    "one_channel_padded": ((2, 7, 9, 1), (3, 2, 1, 4), 1, "EXPLICIT", [0, 0, 2, 1, 3, 4, 0, 0], 1),
    "one_channel_strided": ((2, 9, 10, 1), (3, 3, 1, 3), 2, "SAME", [], 1),
    # the direct kernel (16 or 32 outputs): overlapping groups of 8 along rows, dilated, strided, cropped padding
    "direct_dilated": ((2, 15, 16, 16), (3, 3, 16, 32), 1, "VALID", [], 2),
    "direct_strided": ((2, 17, 20, 3), (5, 5, 3, 32), 2, "SAME", [], 1),
    "direct_wide_pads": ((2, 14, 15, 32), (3, 3, 32, 16), 1, "EXPLICIT", [0, 0, 3, 1, 0, 4, 0, 0], 1),
    "direct_one_channel_strided": ((2, 11, 12, 1), (3, 3, 1, 16), 2, "SAME", [], 1),  # the direct filter gradient only
}
DIRECT = ["first_layer", "second_layer", "direct_dilated", "direct_strided", "direct_wide_pads",
          "direct_one_channel_strided"]


def attrs(case, data_format="NHWC"):
    _, _, s, padding, explicit, d = CONV[case]
    if data_format == "NCHW":
        explicit = explicit[:2] + explicit[6:] + explicit[2:6] if explicit else []
        return dict(strides=[1, 1, s, s], padding=padding, explicit_paddings=explicit, dilations=[1, 1, d, d],
                    data_format="NCHW")
    return dict(strides=[1, s, s, 1], padding=padding, explicit_paddings=explicit, dilations=[1, d, d, 1])


def operands(case):
    x_shape, w_shape = CONV[case][:2]
    x = RNG.standard_normal(x_shape).astype(np.float32)
    w = RNG.standard_normal(w_shape).astype(np.float32)
    dy = tf_nn.tf_conv(x, w, **attrs(case))
    return x, w, RNG.standard_normal(dy.shape).astype(np.float32)


def close(got, expected, rtol=2e-5):
    assert got.shape == expected.shape and got.dtype == expected.dtype
    np.testing.assert_allclose(got, expected, rtol=rtol, atol=rtol * float(np.abs(expected).max(initial=1.0)))


def nchw(a):
    return np.ascontiguousarray(np.moveaxis(a, -1, 1))


@pytest.mark.parametrize("case", CONV)
def test_conv_forward_and_gradients_match_the_reference(case):
    x, w, dy = operands(case)
    kw = attrs(case)
    close(cpu_tf.tf_conv(x, w, **kw), tf_nn.tf_conv(x, w, **kw))
    sizes = np.array(w.shape, np.int32)
    close(cpu_tf.conv_backprop_filter(x, sizes, dy, **kw), tf_nn.conv_backprop_filter(x, sizes, dy, **kw))
    shape = np.array(x.shape, np.int32)
    close(cpu_tf.conv_backprop_input(shape, w, dy, **kw), tf_nn.conv_backprop_input(shape, w, dy, **kw))


@pytest.fixture
def wide(monkeypatch):
    """The direct kernels on, as on an AVX-512 host (elsewhere they are correct, only slow, and left off)."""
    monkeypatch.setattr(cpu_tf, "WIDE_VECTORS", True)


@pytest.mark.parametrize("case", DIRECT)
def test_direct_convs_match_the_im2col_path(case, wide, monkeypatch):
    """The direct kernels serve the forward conv, the input gradient (stride 1) and the filter gradient of 16 or
    32 output channels; the im2col and GEMM path, the general one, gives the same within rounding."""
    x, w, dy = operands(case)
    kw, shape, sizes = attrs(case), np.array(x.shape, np.int32), np.array(w.shape, np.int32)
    c, m, taps, s, d = x.shape[-1], w.shape[-1], w.shape[0] * w.shape[1], CONV[case][2], CONV[case][5]
    served = (cpu_tf._direct_group(c, m, taps, dy.shape[2]), s == 1 and cpu_tf._direct_group(m, c, taps, x.shape[2]),
              cpu_tf._direct_filter_ok(c, m, w.shape[0], w.shape[1], d))
    assert any(served)
    direct = (cpu_tf.tf_conv(x, w, **kw), cpu_tf.conv_backprop_input(shape, w, dy, **kw),
              cpu_tf.conv_backprop_filter(x, sizes, dy, **kw))
    monkeypatch.setattr(cpu_tf, "_direct_group", lambda *_: None)
    monkeypatch.setattr(cpu_tf, "_direct_filter_ok", lambda *_: False)
    general = (cpu_tf.tf_conv(x, w, **kw), cpu_tf.conv_backprop_input(shape, w, dy, **kw),
               cpu_tf.conv_backprop_filter(x, sizes, dy, **kw))
    for got, expected in zip(direct, general, strict=True):
        close(got, expected)


@pytest.mark.parametrize("case", ["first_layer", "second_layer", "direct_wide_pads", "explicit"])
@pytest.mark.parametrize("data_format", ["NHWC", "NCHW"])
def test_filter_gradient_with_the_bias_gradient(case, data_format, wide, two_workers):
    """``bias_grad=1``: the filter gradient unchanged, bit for bit, and the bias gradient (in the direct kernel's
    pass, or BiasAddGrad's kernel on the im2col path) as the references', on one thread as on two."""
    x, w, dy = operands(case)
    kw, sizes = attrs(case, data_format), np.array(w.shape, np.int32)
    if data_format == "NCHW":
        x, dy = nchw(x), nchw(dy)
    dw, db = on_one_and_two_threads(lambda: cpu_tf.conv_backprop_filter(x, sizes, dy, bias_grad=1, **kw))
    np.testing.assert_array_equal(dw, cpu_tf.conv_backprop_filter(x, sizes, dy, **kw))
    ref_dw, ref_db = tf_nn.conv_backprop_filter(x, sizes, dy, bias_grad=1, **kw)
    close(dw, ref_dw)
    close(db, ref_db)
    close(db, tf_ops.bias_add_grad(dy, data_format=data_format))


@pytest.mark.parametrize("case", ["first_layer", "second_layer"])
def test_direct_convs_err_like_the_gemm_against_float64(case, wide):
    """Plain float32 sums (the filter gradient's by image, then added up): the CNN's layers within 1e-6 of the
    float64 result (relative to its largest value; the GEMM path's errors are 2-4e-7)."""
    x, w, dy = operands(case)
    kw, shape, sizes = attrs(case), np.array(x.shape, np.int32), np.array(w.shape, np.int32)
    x64, w64, dy64 = (a.astype(np.float64) for a in (x, w, dy))
    pairs = [(cpu_tf.tf_conv(x, w, **kw), tf_nn.tf_conv(x64, w64, **kw)),
             (cpu_tf.conv_backprop_filter(x, sizes, dy, **kw), tf_nn.conv_backprop_filter(x64, sizes, dy64, **kw))]
    if x.shape[-1] > 1:
        pairs.append((cpu_tf.conv_backprop_input(shape, w, dy, **kw),
                      tf_nn.conv_backprop_input(shape, w64, dy64, **kw)))
    for got, exact in pairs:
        assert np.abs(got - exact).max() <= 1e-6 * np.abs(exact).max()


@pytest.mark.parametrize("case", ["first_layer", "second_layer", "direct_wide_pads", "explicit", "dilated_few"])
@pytest.mark.parametrize("relu", [0, 1])
def test_conv_with_bias_and_relu_matches_biasadd_then_relu(case, relu, wide):
    """A bias input (and ``relu=1``): the direct kernels start each sum with the bias and clamp at 0, the im2col
    path adds and clamps after the GEMM; both as BiasAdd(+Relu) after the reference conv within rounding, NaN
    kept; NCHW and float64 take the reference, which adds after the conv."""
    x, w, _ = operands(case)
    b = RNG.standard_normal(w.shape[-1]).astype(np.float32)
    x[0, 1, 1, 0] = np.nan
    kw = attrs(case)
    want = tf_nn.tf_conv(x, w, **kw) + b
    want = np.maximum(want, np.float32(0)) if relu else want
    got = cpu_tf.tf_conv(x, w, b, relu=relu, **kw)
    assert (np.isnan(got) == np.isnan(want)).all() and np.isnan(got).any()
    close(np.nan_to_num(got), np.nan_to_num(want))
    if relu:
        assert got[~np.isnan(got)].min() == 0
    np.testing.assert_array_equal(tf_nn.tf_conv(x, w, b, relu=relu, **kw), want)
    close(np.nan_to_num(np.moveaxis(cpu_tf.tf_conv(nchw(x), w, b, relu=relu, **attrs(case, "NCHW")), 1, -1)),
          np.nan_to_num(got))
    got64 = cpu_tf.tf_conv(x.astype(np.float64), w.astype(np.float64), b.astype(np.float64), relu=relu, **kw)
    assert got64.dtype == np.float64
    close(np.nan_to_num(got64).astype(np.float32), np.nan_to_num(want))


def test_direct_groups_cover_rows_with_fewest_outputs(wide, monkeypatch):
    assert [cpu_tf._direct_group(16, 32, 9, wo) for wo in (7, 8, 13, 14, 26, 28)] == [None, 8, 13, 8, 13, 8]
    assert cpu_tf._direct_group(16, 48, 9, 13) is None and cpu_tf._direct_group(16, 32, 1, 13) is None
    assert cpu_tf._direct_group(64, 32, 9, 13) is None  # a filter over 64 KiB: the GEMM path
    assert cpu_tf._direct_filter_ok(16, 32, 3, 3, 1) and cpu_tf._direct_filter_ok(1, 16, 3, 3, 1)
    assert not cpu_tf._direct_filter_ok(6, 32, 3, 3, 1) and not cpu_tf._direct_filter_ok(16, 32, 3, 5, 1)
    assert not cpu_tf._direct_filter_ok(8, 16, 3, 3, 1) and not cpu_tf._direct_filter_ok(1, 16, 3, 3, 2)
    monkeypatch.setattr(cpu_tf, "WIDE_VECTORS", False)  # AVX2: the im2col path
    assert cpu_tf._direct_group(16, 32, 9, 13) is None and not cpu_tf._direct_filter_ok(16, 32, 3, 3, 1)


def test_padding_crops_and_fills_zeros():
    x = RNG.standard_normal((2, 5, 6, 3)).astype(np.float32)
    for top, left, hp, wp in [(1, 2, 8, 9), (-2, -1, 3, 4), (0, 7, 5, 6), (2, 0, 4, 6)]:
        xp = np.full((2, hp, wp, 3), np.nan, np.float32)
        cpu_tf._pad_nhwc(x, xp, top, left)
        big = np.zeros((2, 5 + 2 * 9, 6 + 2 * 9, 3), np.float32)
        big[:, 9 + top:14 + top, 9 + left:15 + left] = x
        np.testing.assert_array_equal(xp, big[:, 9:9 + hp, 9:9 + wp])


@pytest.mark.parametrize("case", ["stride3_few", "explicit"])
def test_convs_of_large_batches_go_by_groups_of_images(case, monkeypatch):
    x, w, dy = operands(case)
    kw = attrs(case)
    monkeypatch.setattr(cpu_tf, "TILE_ELEMENTS", x[0].size * 9 // 2)  # one image per group
    assert len(cpu_tf._tiles(len(x), x[0].size * 9)) == len(x)
    close(cpu_tf.tf_conv(x, w, **kw), tf_nn.tf_conv(x, w, **kw))
    sizes = np.array(w.shape, np.int32)
    close(cpu_tf.conv_backprop_filter(x, sizes, dy, **kw), tf_nn.conv_backprop_filter(x, sizes, dy, **kw))
    shape = np.array(x.shape, np.int32)
    close(cpu_tf.conv_backprop_input(shape, w, dy, **kw), tf_nn.conv_backprop_input(shape, w, dy, **kw))


@pytest.mark.parametrize("case", ["second_layer", "explicit", "dilated_few"])
def test_conv_nchw_matches_nhwc(case):
    x, w, dy = operands(case)
    kw, kc = attrs(case), attrs(case, "NCHW")
    close(np.moveaxis(cpu_tf.tf_conv(nchw(x), w, **kc), 1, -1), tf_nn.tf_conv(x, w, **kw))
    sizes = np.array(w.shape, np.int32)
    close(cpu_tf.conv_backprop_filter(nchw(x), sizes, nchw(dy), **kc), tf_nn.conv_backprop_filter(x, sizes, dy, **kw))
    shape = np.array(nchw(x).shape, np.int32)
    close(np.moveaxis(cpu_tf.conv_backprop_input(shape, w, nchw(dy), **kc), 1, -1),
          tf_nn.conv_backprop_input(np.array(x.shape), w, dy, **kw))


def test_conv_writes_a_planned_output_and_never_its_input():
    x, w, _ = operands("second_layer")
    expected = tf_nn.tf_conv(x, w, **attrs("second_layer"))
    out = np.empty(expected.shape, np.float32)
    assert cpu_tf.tf_conv(x, w, out=out, **attrs("second_layer")) is out
    close(out, expected)
    y = cpu_tf.tf_conv(x, w, out=x, **attrs("second_layer"))  # x may be offered when it dies at the node
    assert not np.shares_memory(y, x)
    close(y, expected)


def test_gradients_write_planned_outputs_and_never_their_inputs():
    """ConvBackpropInput and MaxPoolGrad fill a planned (dirty) buffer whole; an input offered is not written."""
    x, w, dy = operands("second_layer")
    shape = np.array(x.shape, np.int32)
    expected = tf_nn.conv_backprop_input(shape, w, dy, **attrs("second_layer"))
    out = np.full(x.shape, np.nan, np.float32)
    assert cpu_tf.conv_backprop_input(shape, w, dy, out=out, **attrs("second_layer")) is out
    close(out, expected)
    kw = dict(ksize=[1, 2, 2, 1], strides=[1, 2, 2, 1], padding="VALID")
    for size in (26, 27):  # windows tile the input, or leave a row and a column out
        x = RNG.standard_normal((2, size, size, 16)).astype(np.float32)
        g = RNG.standard_normal((2, 13, 13, 16)).astype(np.float32)
        expected = tf_nn.max_pool_grad(x, g, g, **kw)
        out = np.full(x.shape, np.nan, np.float32)
        assert cpu_tf.max_pool_grad(x, g, g, out=out, **kw) is out
        close(out, expected)
        kept = x.copy()
        assert not np.shares_memory(cpu_tf.max_pool_grad(x, g, g, out=x, **kw), x)
        np.testing.assert_array_equal(x, kept)


def test_grouped_and_float64_convs_take_the_reference():
    x = RNG.standard_normal((2, 7, 6, 4)).astype(np.float32)
    w = RNG.standard_normal((3, 3, 2, 6)).astype(np.float32)
    kw = dict(strides=[1, 1, 1, 1], padding="SAME")
    close(cpu_tf.tf_conv(x, w, **kw), tf_nn.tf_conv(x, w, **kw))
    got = cpu_tf.tf_conv(x.astype(np.float64), w.astype(np.float64), **kw)
    assert got.dtype == np.float64
    np.testing.assert_allclose(got, tf_nn.tf_conv(x, w, **kw), rtol=1e-5, atol=1e-5)


POOLS = [((32, 26, 26, 16), 2, 2, "VALID", []), ((2, 9, 8, 3), 2, 2, "VALID", []), ((2, 9, 8, 3), 3, 2, "SAME", []),
         ((2, 9, 8, 3), 2, 3, "SAME", []), ((2, 9, 8, 3), 3, 1, "VALID", []), ((2, 6, 7, 32), 2, 2, "VALID", []),
         ((2, 7, 6, 3), 3, 2, "EXPLICIT", [0, 0, 1, 2, 2, 0, 0, 0])]


@pytest.mark.parametrize("shape, k, s, padding, explicit", POOLS)
def test_max_pool_and_gradient_match_the_reference(shape, k, s, padding, explicit):
    x = np.maximum(np.round(RNG.standard_normal(shape), 1), 0).astype(np.float32)  # ties: the first maximum
    kw = dict(ksize=[1, k, k, 1], strides=[1, s, s, 1], padding=padding, explicit_paddings=explicit)
    y = cpu_tf.tf_max_pool(x, **kw)
    close(y, tf_nn.tf_max_pool(x, **kw))
    g = RNG.standard_normal(y.shape).astype(np.float32)
    close(cpu_tf.max_pool_grad(x, y, g, **kw), tf_nn.max_pool_grad(x, y, g, **kw))
    kc = dict(kw, ksize=[1, 1, k, k], strides=[1, 1, s, s], data_format="NCHW",
              explicit_paddings=explicit[:2] + explicit[6:] + explicit[2:6] if explicit else [])
    close(np.moveaxis(cpu_tf.tf_max_pool(nchw(x), **kc), 1, -1), tf_nn.tf_max_pool(x, **kw))


@pytest.mark.parametrize("shape, k, s, padding, explicit", POOLS)
def test_max_pool_grad_with_relu_is_relu_grad_of_max_pool_grad(shape, k, s, padding, explicit):
    x = np.round(RNG.standard_normal(shape), 1).astype(np.float32)  # ties, zeros and negative maxima
    kw = dict(ksize=[1, k, k, 1], strides=[1, s, s, 1], padding=padding, explicit_paddings=explicit)
    y = tf_nn.tf_max_pool(x, **kw)
    g = RNG.standard_normal(y.shape).astype(np.float32)
    expected = tf_ops.relu_grad(tf_nn.max_pool_grad(x, y, g, **kw), x)
    assert (expected == 0).any() and (expected != 0).any()
    close(tf_nn.max_pool_grad(x, y, g, relu=1, **kw), expected, 0)
    close(cpu_tf.max_pool_grad(x, y, g, relu=1, **kw), expected)
    kc = dict(kw, ksize=[1, 1, k, k], strides=[1, 1, s, s], data_format="NCHW",
              explicit_paddings=explicit[:2] + explicit[6:] + explicit[2:6] if explicit else [])
    close(np.moveaxis(cpu_tf.max_pool_grad(nchw(x), nchw(y), nchw(g), relu=1, **kc), 1, -1), expected)


@pytest.mark.parametrize("channels", [16, 32, 5])
@pytest.mark.parametrize("relu", [False, True])
def test_max_pool_grad_of_2x2_windows_matches_the_general_kernel_bit_for_bit(channels, relu):
    """The 2x2 stride-2 kernel (a constant channel count for 16 and 32) against the general window loop: ties,
    NaNs anywhere in a window and an odd row and column no window covers."""
    x = np.round(RNG.standard_normal((2, 7, 9, channels)), 0).astype(np.float32)
    x.reshape(-1)[RNG.choice(x.size, x.size // 10, replace=False)] = np.nan
    g = RNG.standard_normal((2, 3, 4, channels)).astype(np.float32)
    expected, got = np.full(x.shape, 7, np.float32), np.full(x.shape, 7, np.float32)
    cpu_tf._max_pool_grad(x, g, expected, 2, 2, 2, 2, 0, 0, relu)
    cpu_tf._max_pool_grad_2x2(x, g, got, relu)
    np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize("shape, k, padding", [((2, 9, 8, 3), (3, 2), "VALID"), ((2, 6, 8, 5), (3, 2), "SAME"),
                                               ((1, 5, 4, 2), (1, 1), "VALID")])
def test_max_pool_of_tiling_windows_matches_the_reference(shape, k, padding):
    x = np.round(RNG.standard_normal(shape), 1).astype(np.float32)
    x[0, 1, 1, 0] = np.nan
    kw = dict(ksize=[1, *k, 1], strides=[1, *k, 1], padding=padding)
    np.testing.assert_array_equal(cpu_tf.tf_max_pool(x, **kw), tf_nn.tf_max_pool(x, **kw))


def test_max_pool_propagates_nan():
    x = RNG.standard_normal((1, 4, 4, 2)).astype(np.float32)
    x[0, 1, 0, 1] = np.nan
    y = cpu_tf.tf_max_pool(x, ksize=[1, 2, 2, 1], strides=[1, 2, 2, 1], padding="VALID")
    assert np.isnan(y[0, 0, 0, 1]) and np.isfinite(np.delete(y.ravel(), 1)).all()


@pytest.mark.parametrize("shape", [(32, 26, 26, 16), (32, 10), (3, 5, 7, 2, 3), (700, 10), (9, 64)])
def test_bias_add_grad_matches_the_exact_sum(shape):
    g = (RNG.standard_normal(shape) + 0.5).astype(np.float32)
    exact = g.astype(np.float64).sum(axis=tuple(range(g.ndim - 1)))
    scale = np.abs(g).sum(axis=tuple(range(g.ndim - 1))).max()  # a float32 sum's error scales with sum(|g|)
    got = cpu_tf.bias_add_grad(g)
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, exact, rtol=1e-6, atol=1e-6 * scale)
    nc = nchw(g) if g.ndim == 4 else g
    close(cpu_tf.bias_add_grad(nc, data_format="NCHW"), tf_ops.bias_add_grad(nc, data_format="NCHW"), 1e-5)


def test_conv_gemms_run_on_one_mkl_thread_and_restore_the_count(monkeypatch):
    """Each conv's GEMMs run on one MKL thread (a second one made the filter gradient up to 7x slower), and the
    calling thread's own count (StepThreads') is back afterwards."""
    lib = blas.library()
    if lib is None:
        pytest.skip("MKL is not loaded")
    seen, real = [], cpu_tf._scratch  # each group of images takes its scratch right before its product
    monkeypatch.setattr(cpu_tf, "_direct_group", lambda *_: None)  # the GEMM path (the direct one calls no BLAS)
    monkeypatch.setattr(cpu_tf, "_direct_filter_ok", lambda *_: False)
    monkeypatch.setattr(cpu_tf, "_scratch", lambda size: (seen.append(lib.MKL_Get_Max_Threads()), real(size))[1])
    x, w, dy = operands("second_layer")
    prev = lib.MKL_Set_Num_Threads_Local(2)
    try:
        close(cpu_tf.tf_conv(x, w, **attrs("second_layer")), tf_nn.tf_conv(x, w, **attrs("second_layer")))
        close(cpu_tf.conv_backprop_filter(x, np.array(w.shape), dy, **attrs("second_layer")),
              tf_nn.conv_backprop_filter(x, np.array(w.shape), dy, **attrs("second_layer")))
        close(cpu_tf.conv_backprop_input(np.array(x.shape), w, dy, **attrs("second_layer")),
              tf_nn.conv_backprop_input(np.array(x.shape), w, dy, **attrs("second_layer")))
        assert lib.MKL_Get_Max_Threads() == 2
    finally:
        lib.MKL_Set_Num_Threads_Local(prev)
    assert len(seen) >= 3 and set(seen) == {1}


def test_relu_grad_matches_the_reference():
    g, f = RNG.standard_normal((2, 3, 50, 7)).astype(np.float32), RNG.standard_normal((2, 3, 50, 7)).astype(np.float32)
    close(cpu_tf.relu_grad(g, f), tf_ops.relu_grad(g, f), 0)


@pytest.mark.parametrize("fmt, x, expected", [("NHWC", (32, 28, 28, 1), (32, 14, 14, 16)),
                                              ("NCHW", (32, 1, 28, 28), (32, 16, 14, 14))])
def test_shape_inference_of_forward_window_ops(fmt, x, expected):
    spatial = [1, 2, 2, 1] if fmt == "NHWC" else [1, 1, 2, 2]
    conv = Node("TFConv", [Value("x", TensorType(np.float32, x)), Value("w", TensorType(np.float32, (3, 3, 1, 16)))],
                [Value("y")], dict(strides=spatial, padding="SAME", data_format=fmt), domain="opencann")
    assert infer_node(conv, {"opencann": 1})[0] == TensorType(np.float32, expected)
    pool = Node("TFMaxPool", [Value("x", TensorType(np.float32, (*expected[:1], "n", *expected[2:])))], [Value("y")],
                dict(ksize=spatial, strides=spatial, padding="VALID", data_format=fmt), domain="opencann")
    want = (32, "n", 7, 7) if fmt == "NCHW" else (32, None, None, 16)  # a symbolic size: unknown outputs
    assert infer_node(pool, {"opencann": 1})[0] == TensorType(np.float32, want)


@pytest.mark.parametrize("fmt, dy, bias", [("NHWC", (2, 5, 4, 7), (7,)), ("NCHW", (2, 7, 5, 4), (7,))])
def test_shape_inference_of_the_filter_gradient_with_the_bias_gradient(fmt, dy, bias):
    inputs = [Value("x", TensorType(np.float32, (2, 9, 8, 6))), Value("s", const=np.array([3, 3, 6, 7], np.int32)),
              Value("dy", TensorType(np.float32, dy))]
    for flag, want in [(0, []), (1, [TensorType(np.float32, bias)])]:
        node = Node("ConvBackpropFilter", inputs, [Value("dw"), Value("db")][:1 + flag],
                    dict(bias_grad=flag, data_format=fmt), domain="opencann")
        assert infer_node(node, {"opencann": 1}) == [TensorType(np.float32, (3, 3, 6, 7)), *want]


@pytest.mark.parametrize("mode", ["training", "inference", "running_average"])
def test_fused_batch_norm_and_gradient_match_the_reference(mode):
    x = (RNG.standard_normal((32, 13, 13, 32)) * 2 + 1).astype(np.float32)
    scale, offset, mean = (RNG.standard_normal(32).astype(np.float32) for _ in range(3))
    var = RNG.random(32).astype(np.float32) + 0.5
    kw = dict(epsilon=1e-3, is_training=int(mode != "inference"),
              exponential_avg_factor=0.3 if mode == "running_average" else 1.0)
    got = cpu_tf.fused_batch_norm(x, scale, offset, mean, var, **kw)
    expected = tf_nn.fused_batch_norm(x, scale, offset, mean, var, **kw)
    for g, e in zip(got, expected, strict=True):
        close(g, e, 1e-5)
    dy = RNG.standard_normal(x.shape).astype(np.float32)
    kg = dict(epsilon=1e-3, is_training=kw["is_training"])
    got = cpu_tf.fused_batch_norm_grad(dy, x, scale, expected[3], expected[4], expected[5], **kg)
    for g, e in zip(got, tf_nn.fused_batch_norm_grad(dy, x, scale, expected[3], expected[4], **kg), strict=True):
        close(g, e)


def test_fused_batch_norm_nchw_and_float16_take_the_reference():
    x = RNG.standard_normal((2, 3, 4, 5)).astype(np.float16)
    scale, offset = np.ones(3, np.float32), np.zeros(3, np.float32)
    empty = np.zeros(0, np.float32)
    kw = dict(epsilon=1e-3, data_format="NCHW", n_outputs=3)
    for g, e in zip(cpu_tf.fused_batch_norm(x, scale, offset, empty, empty, **kw),
                    tf_nn.fused_batch_norm(x, scale, offset, empty, empty, **kw), strict=True):
        assert g.dtype == e.dtype
        np.testing.assert_array_equal(g, e)


@pytest.mark.parametrize("shape, counter, alg", [((32, 13, 13, 8), (5, 7), 1), ((3, 5, 7), (2**64 - 3, 2**40 + 9), 3),
                                                 ((0, 4), (0, 0), 1)])
def test_stateless_uniform_is_bit_exact(shape, counter, alg):
    key, _ = tf_stateless.key_counter(np.array([1, 2]))
    args = (np.array(shape), key, np.array(counter, np.uint64), np.int32(alg))
    got, expected = cpu_tf.stateless_random_uniform_v2(*args), tf_stateless.uniform_v2(*args)
    assert got.dtype == expected.dtype == np.float32
    np.testing.assert_array_equal(got, expected)
    double = cpu_tf.stateless_random_uniform_v2(*args, dtype=11)  # float64: the reference
    np.testing.assert_array_equal(double, tf_stateless.uniform_v2(*args, dtype=11))


def test_empty_batches_and_outputs():
    w = RNG.standard_normal((3, 3, 3, 4)).astype(np.float32)
    x, dy = np.zeros((0, 5, 5, 3), np.float32), np.zeros((0, 5, 5, 4), np.float32)
    kw = dict(strides=[1, 1, 1, 1], padding="SAME")
    assert cpu_tf.tf_conv(x, w, **kw).shape == (0, 5, 5, 4)
    np.testing.assert_array_equal(cpu_tf.conv_backprop_filter(x, np.array(w.shape), dy, **kw), np.zeros(w.shape))
    assert cpu_tf.conv_backprop_input(np.array(x.shape), w, dy, **kw).shape == x.shape
    small = np.ones((2, 2, 2, 3), np.float32)  # VALID windows larger than the image: no outputs
    assert cpu_tf.tf_conv(small, w, strides=[1, 1, 1, 1], padding="VALID").shape == (2, 0, 0, 4)
    assert tf_nn.tf_conv(small, w, strides=[1, 1, 1, 1], padding="VALID").shape == (2, 0, 0, 4)


def on_one_and_two_threads(fn):
    """``fn()``'s result, asserted bit for bit the same on one thread as on two (the fixture's)."""
    workers.set_size(1)
    try:
        one = fn()
    finally:
        workers.set_size(2)
    two = fn()
    for a, b in zip(*((r if isinstance(r, tuple) else (r,)) for r in (one, two)), strict=True):
        np.testing.assert_array_equal(a, b)
    return two


@pytest.mark.parametrize("case", ["first_layer", "second_layer"])
@pytest.mark.parametrize("compiled", [True, False], ids=["numba_gemm", "python_sgemm"])
def test_conv_pieces_on_two_threads_match_one_and_the_reference(case, compiled, two_workers, monkeypatch):
    """Each group of images in one compiled call (MKL's sgemm from Numba), or, without MKL's address, the windows
    and the product called from Python."""
    if not compiled:
        monkeypatch.setattr(blas, "sgemm_address", lambda: 0)
    x, w, dy = operands(case)
    kw, sizes, shape = attrs(case), np.array(w.shape, np.int32), np.array(x.shape, np.int32)
    per_image = dy.shape[1] * dy.shape[2] * w[..., 0].size
    assert len(cpu_tf._tiles(len(x), per_image)) > 2  # the work is split
    close(on_one_and_two_threads(lambda: cpu_tf.tf_conv(x, w, **kw)), tf_nn.tf_conv(x, w, **kw))
    close(on_one_and_two_threads(lambda: cpu_tf.conv_backprop_filter(x, sizes, dy, **kw)),
          tf_nn.conv_backprop_filter(x, sizes, dy, **kw))
    close(on_one_and_two_threads(lambda: cpu_tf.conv_backprop_input(shape, w, dy, **kw)),
          tf_nn.conv_backprop_input(shape, w, dy, **kw))


@pytest.mark.parametrize("k, s", [(2, 2), (3, 2)])
def test_pool_bias_and_relu_grad_pieces_on_two_threads_match_one(k, s, two_workers):
    x = np.round(RNG.standard_normal((64, 26, 26, 16)), 1).astype(np.float32)
    assert len(cpu_tf._images(x)) > 1
    kw = dict(ksize=[1, k, k, 1], strides=[1, s, s, 1], padding="SAME")
    y = on_one_and_two_threads(lambda: cpu_tf.tf_max_pool(x, **kw))
    np.testing.assert_array_equal(y, tf_nn.tf_max_pool(x, **kw))
    g = RNG.standard_normal(y.shape).astype(np.float32)
    close(on_one_and_two_threads(lambda: cpu_tf.max_pool_grad(x, y, g, relu=1, **kw)),
          tf_ops.relu_grad(tf_nn.max_pool_grad(x, y, g, **kw), x))
    exact = x.astype(np.float64).sum(axis=(0, 1, 2))
    np.testing.assert_allclose(on_one_and_two_threads(lambda: cpu_tf.bias_add_grad(x)), exact, rtol=1e-5, atol=1e-3)
    close(on_one_and_two_threads(lambda: cpu_tf.relu_grad(g, y)), tf_ops.relu_grad(g, y), 0)


def test_batch_norm_pieces_on_two_threads_match_one_and_the_reference(two_workers):
    x = (RNG.standard_normal((32, 26, 26, 32)) * 2 + 1).astype(np.float32)
    assert len(cpu_tf._rows(32 * 26 * 26, 32)) > 1
    scale, offset, mean = (RNG.standard_normal(32).astype(np.float32) for _ in range(3))
    var = RNG.random(32).astype(np.float32) + 0.5
    got = on_one_and_two_threads(lambda: cpu_tf.fused_batch_norm(x, scale, offset, mean, var, epsilon=1e-3))
    expected = tf_nn.fused_batch_norm(x, scale, offset, mean, var, epsilon=1e-3)
    for g, e in zip(got, expected, strict=True):
        close(g, e, 1e-5)
    dy = RNG.standard_normal(x.shape).astype(np.float32)
    saved = got[3], got[4]
    grads = on_one_and_two_threads(lambda: cpu_tf.fused_batch_norm_grad(dy, x, scale, *saved, epsilon=1e-3))
    for g, e in zip(grads, tf_nn.fused_batch_norm_grad(dy, x, scale, *saved, epsilon=1e-3), strict=True):
        close(g, e)


@pytest.mark.parametrize("name, slots, before, after", [
    ("apply_momentum", 1, [0.1], [0.9]), ("apply_keras_momentum", 1, [0.1], [0.9]),
    ("apply_adam", 2, [0.5, 0.25, 1e-3, 0.9, 0.999, 1e-7], []), ("apply_rms_prop", 2, [1e-3, 0.9, 0.5, 1e-7], [])])
def test_optimizer_update_pieces_on_two_threads_match_one_and_the_reference(name, slots, before, after, two_workers):
    """Arguments: the variable, its slots, the scalars before the gradient, the gradient, the scalars after."""
    n = 3 * cpu_tf.STREAM_ELEMENTS + 5  # three blocks, the last shorter
    var, *rest, grad = (RNG.random(n).astype(np.float32) for _ in range(slots + 2))
    args = (var, *rest, *map(np.float32, before), grad, *map(np.float32, after))
    got = on_one_and_two_threads(lambda: getattr(cpu_tf, name)(*args))
    for g, e in zip(got, getattr(tf_training, name)(*args), strict=True):
        close(g, e, 1e-6)
