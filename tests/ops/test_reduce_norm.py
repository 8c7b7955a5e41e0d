"""Reduction, softmax, normalization, linear algebra, loss and training kernels: dtypes, shapes and opsets
ONNX's node suite does not cover.

Each case runs one node through the ONNX backend; the oracle is NumPy (in float64, or float32 for
low-precision floats) or onnxruntime where it implements the case.
"""
import functools

import ml_dtypes
import numpy as np
import pytest

from opencann.errors import AclError
from tests.ops.single_node import check_node, run_node

RNG = np.random.default_rng(0)
BF16 = ml_dtypes.bfloat16
TRAINING = "ai.onnx.preview.training"


run = functools.partial(run_node, opset=23)
check_ort = functools.partial(check_node, f64=True)


def _randn(*shape, dtype=np.float32):
    return RNG.standard_normal(shape).astype(dtype)


# --- reductions -----------------------------------------------------------------------------------

def test_reduce_sum_int32_keeps_dtype_and_wraps_like_int32():
    x = np.array([[2**30, 2**30], [1, 2]], dtype=np.int32)
    got = run("ReduceSum", x, np.array([1], dtype=np.int64), keepdims=0)
    assert got.dtype == np.int32
    np.testing.assert_array_equal(got, np.array([2**31, 3], dtype=np.int64).astype(np.int32))


def test_reduce_mean_float16_accumulates_in_float32():
    x = np.full((4096,), 0.1, dtype=np.float16)
    got = run("ReduceMean", x, keepdims=0, opset=13)
    assert got.dtype == np.float16
    assert got == x.astype(np.float32).mean().astype(np.float16)


@pytest.mark.parametrize("op,identity", [
    ("ReduceSum", 0.0), ("ReduceProd", 1.0), ("ReduceMax", -np.inf), ("ReduceMin", np.inf),
    ("ReduceLogSumExp", -np.inf), ("ReduceL2", 0.0)])
def test_reduce_over_empty_axis_gives_identity(op, identity):
    x = np.zeros((2, 0, 3), dtype=np.float32)
    got = run(op, x, np.array([1], dtype=np.int64), opset=18)
    assert got.shape == (2, 1, 3) and got.dtype == np.float32
    np.testing.assert_array_equal(got, np.full((2, 1, 3), identity, dtype=np.float32))


def test_reduce_max_empty_int_gives_type_minimum():
    got = run("ReduceMax", np.zeros((0, 2), dtype=np.int32), np.array([0], dtype=np.int64), keepdims=0)
    np.testing.assert_array_equal(got, np.full(2, np.iinfo(np.int32).min, dtype=np.int32))


def test_reduce_log_sum_exp_handles_all_minus_inf_and_large_values():
    x = np.array([[-np.inf, -np.inf], [1000.0, 1000.0]], dtype=np.float32)
    got = run("ReduceLogSumExp", x, np.array([1], dtype=np.int64), keepdims=0)
    np.testing.assert_allclose(got, [-np.inf, 1000 + np.log(2)], rtol=1e-6)


def test_reduce_attribute_axes_in_old_opsets():
    x = _randn(2, 3, 4)
    got = run("ReduceSum", x, axes=[0, -1], keepdims=0, opset=11)
    np.testing.assert_allclose(got, x.sum(axis=(0, 2)), rtol=1e-5)
    check_ort("ReduceL1", x, axes=[1], opset=13)


def test_reduce_noop_with_empty_axes_applies_elementwise_part():
    x = _randn(2, 3)
    check_ort("ReduceSumSquare", x, np.array([], dtype=np.int64), noop_with_empty_axes=1, opset=18)
    np.testing.assert_array_equal(run("ReduceMax", x, np.array([], dtype=np.int64), noop_with_empty_axes=1), x)


def test_reduce_axis_out_of_range_raises():
    with pytest.raises(AclError):
        run("ReduceSum", _randn(2, 3), np.array([2], dtype=np.int64))


# --- softmax family ---------------------------------------------------------------------------------

def test_softmax_opset11_coerces_to_2d():
    x = _randn(2, 3, 4)
    check_ort("Softmax", x, axis=1, opset=11)
    check_ort("LogSoftmax", x, axis=1, opset=11)
    check_ort("Hardmax", x, axis=1, opset=11)


def test_hardmax_picks_first_of_ties():
    got = run("Hardmax", np.array([[1, 3, 3], [2, 2, 2]], dtype=np.float32), axis=-1, opset=13)
    np.testing.assert_array_equal(got, [[0, 1, 0], [1, 0, 0]])


def test_softmax_bfloat16_and_zero_size():
    x = _randn(3, 5)
    got = run("Softmax", x.astype(BF16), axis=0, opset=13)
    assert got.dtype == BF16
    e = np.exp(x.astype(BF16).astype(np.float32))
    np.testing.assert_allclose(got.astype(np.float32), e / e.sum(axis=0), rtol=1e-2)
    assert run("LogSoftmax", np.zeros((0, 4), np.float32), opset=13).shape == (0, 4)


# --- linear algebra ---------------------------------------------------------------------------------

def test_matmul_float16_vector_by_batch_accumulates_in_float32():
    a, b = _randn(64, dtype=np.float16), _randn(3, 64, 5, dtype=np.float16)
    got = run("MatMul", a, b, opset=13)
    assert got.dtype == np.float16 and got.shape == (3, 5)
    np.testing.assert_array_equal(got, np.matmul(a.astype(np.float32), b.astype(np.float32)).astype(np.float16))


def test_matmul_int32_and_empty_inner_dimension():
    a = RNG.integers(-5, 5, (2, 3, 4)).astype(np.int32)
    b = RNG.integers(-5, 5, (4, 2)).astype(np.int32)
    got = run("MatMul", a, b, opset=13)
    assert got.dtype == np.int32
    np.testing.assert_array_equal(got, a @ b)
    np.testing.assert_array_equal(run("MatMul", np.zeros((2, 0), np.float32), np.zeros((0, 3), np.float32)),
                                  np.zeros((2, 3), np.float32))


def test_gemm_float16_and_old_broadcast_rule():
    a, b, c = _randn(4, 3, dtype=np.float16), _randn(5, 4, dtype=np.float16), _randn(5, dtype=np.float16)
    got = run("Gemm", a, b, c, transA=1, transB=1, alpha=0.5, beta=2.0, opset=13)
    want = 0.5 * a.astype(np.float32).T @ b.astype(np.float32).T + 2 * c.astype(np.float32)
    assert got.dtype == np.float16
    np.testing.assert_allclose(got.astype(np.float32), want, rtol=2e-3, atol=2e-3)
    with pytest.raises(AclError):
        run("Gemm", a.T, b.T, c, opset=6)


def test_det_batched_and_singular():
    x = np.stack([np.eye(3) * 2, np.ones((3, 3))]).astype(np.float64)
    np.testing.assert_allclose(run("Det", x, opset=22), [8.0, 0.0], atol=1e-12)


# --- normalization ----------------------------------------------------------------------------------

def test_layer_norm_float16_stats_in_float32():
    x, w, b = _randn(2, 3, 8, dtype=np.float16), _randn(8, dtype=np.float16), _randn(8, dtype=np.float16)
    y, mean, inv_std = run("LayerNormalization", x, w, b, n_outputs=3, opset=17)
    assert (y.dtype, mean.dtype, inv_std.dtype) == (np.float16, np.float32, np.float32)
    assert mean.shape == (2, 3, 1)
    xf = x.astype(np.float32)
    want = (xf - xf.mean(-1, keepdims=True)) / np.sqrt(xf.var(-1, keepdims=True) + 1e-5) * w + b
    np.testing.assert_allclose(y.astype(np.float32), want, rtol=1e-2, atol=1e-2)


def test_batch_norm_training_updates_running_stats():
    x = _randn(4, 3, 5)
    s, b, m, v = _randn(3), _randn(3), _randn(3), np.abs(_randn(3))
    y, rm, rv = run("BatchNormalization", x, s, b, m, v, training_mode=1, momentum=0.8, n_outputs=3, opset=15)
    bm, bv = x.mean(axis=(0, 2)), x.var(axis=(0, 2))
    np.testing.assert_allclose(rm, 0.8 * m + 0.2 * bm, rtol=1e-5)
    np.testing.assert_allclose(rv, 0.8 * v + 0.2 * bv, rtol=1e-5)
    want = (x - bm[:, None]) / np.sqrt(bv[:, None] + 1e-5) * s[:, None] + b[:, None]
    np.testing.assert_allclose(y, want, rtol=1e-4, atol=1e-5)


def test_batch_norm_old_opsets_inference():
    x, s, b, m, v = _randn(2, 3, 4, 4), _randn(3), _randn(3), _randn(3), np.abs(_randn(3))
    check_ort("BatchNormalization", x, s, b, m, v, opset=9)
    check_ort("InstanceNormalization", x, s, b, opset=6, rtol=1e-4)


def test_group_norm_opset18_scale_is_per_group():
    x, scale, bias = _randn(2, 6, 3), _randn(2), _randn(2)
    got18 = run("GroupNormalization", x, scale, bias, num_groups=2, opset=18)
    got21 = run("GroupNormalization", x, np.repeat(scale, 3), np.repeat(bias, 3), num_groups=2, opset=21)
    np.testing.assert_allclose(got18, got21, rtol=1e-6)


def test_lrn_odd_and_even_size():
    x = _randn(2, 5, 3, 3)
    check_ort("LRN", x, size=3, alpha=0.01, beta=0.6, bias=1.5, opset=13)
    got = run("LRN", x, size=4, alpha=0.01, beta=0.6, bias=1.5, opset=13)
    for c in range(5):  # window [c - 1, c + 2] for an even size
        square_sum = (x[:, max(c - 1, 0):c + 3] ** 2).sum(axis=1)
        np.testing.assert_allclose(got[:, c], x[:, c] / (1.5 + 0.01 / 4 * square_sum) ** 0.6, rtol=1e-5)


def test_lp_norm_zero_vector():
    x = np.array([[3.0, -4.0], [0.0, 0.0]], dtype=np.float32)
    np.testing.assert_allclose(run("LpNormalization", x, axis=1, p=1, opset=22), [[3 / 7, -4 / 7], [0, 0]])


def test_rms_norm_output_has_scale_dtype():
    x, w = _randn(2, 4, dtype=np.float16), _randn(4)
    got = run("RMSNormalization", x, w, opset=23)
    xf = x.astype(np.float32)
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, xf / np.sqrt((xf ** 2).mean(-1, keepdims=True) + 1e-5) * w, rtol=1e-5)


# --- losses -----------------------------------------------------------------------------------------

def test_nll_loss_double_int32_targets_against_ort():
    x, t = _randn(3, 4, 2, dtype=np.float64), RNG.integers(0, 4, (3, 2)).astype(np.int32)
    check_ort("NegativeLogLikelihoodLoss", x, t, np.abs(_randn(4, dtype=np.float64)), reduction="mean", opset=13)


def test_sce_float16_with_log_prob():
    x, t = _randn(4, 5, dtype=np.float16), np.array([0, 4, 2, 1], dtype=np.int64)
    loss, log_prob = run("SoftmaxCrossEntropyLoss", x, t, reduction="sum", n_outputs=2, opset=13)
    assert loss.dtype == log_prob.dtype == np.float16 and loss.shape == ()
    xf = x.astype(np.float32)
    lp = xf - np.log(np.exp(xf).sum(1, keepdims=True))
    np.testing.assert_allclose(float(loss), -lp[np.arange(4), t].sum(), rtol=2e-3)


def test_nll_loss_target_out_of_range_raises():
    with pytest.raises(AclError):
        run("NegativeLogLikelihoodLoss", _randn(2, 3), np.array([0, 3], dtype=np.int64), opset=13)


# --- training ---------------------------------------------------------------------------------------

def test_dropout_training_is_seeded_and_scales_kept_values():
    x = _randn(50, 40)
    args = (x, np.array(0.3, np.float32), np.array(True))
    y1, m1 = run("Dropout", *args, seed=7, n_outputs=2, opset=13)
    y2, _ = run("Dropout", *args, seed=7, n_outputs=2, opset=13)
    np.testing.assert_array_equal(y1, y2)
    assert m1.dtype == np.bool_ and 0.6 < m1.mean() < 0.8
    np.testing.assert_allclose(y1, np.where(m1, x / 0.7, 0), rtol=1e-6)


def test_dropout_inference_masks_by_opset():
    x = _randn(3, 4)
    y, mask = run("Dropout", x, n_outputs=2, ratio=0.5, opset=7)
    np.testing.assert_array_equal(y, x)
    assert mask.dtype == np.float32 and mask.all()
    _, mask = run("Dropout", x, n_outputs=2, opset=13)
    assert mask.dtype == np.bool_ and mask.all()


def test_momentum_updates_several_tensors():
    r, t = np.array(0.1, np.float32), np.array(3, np.int64)
    x1, x2, g1, g2, v1, v2 = (_randn(2) for _ in range(6))
    outs = run("Momentum", r, t, x1, x2, g1, g2, v1, v2, n_outputs=4, domain=TRAINING,
               alpha=0.9, beta=0.5, mode="standard", norm_coefficient=0.01)
    for x, g, v, x_new, v_new in ((x1, g1, v1, outs[0], outs[2]), (x2, g2, v2, outs[1], outs[3])):
        want_v = 0.9 * v + 0.5 * (g + 0.01 * x)
        np.testing.assert_allclose(v_new, want_v, rtol=1e-6)
        np.testing.assert_allclose(x_new, x - 0.1 * want_v, rtol=1e-6)
        assert x_new.dtype == np.float32


def test_adam_bias_correction_after_first_step():
    r, t = np.array(0.1, np.float32), np.array(2, np.int64)
    x, g, v, h = _randn(3), _randn(3), _randn(3), np.abs(_randn(3))
    x_new, v_new, h_new = run("Adam", r, t, x, g, v, h, n_outputs=3, domain=TRAINING, alpha=0.9, beta=0.999)
    want_v, want_h = 0.9 * v + 0.1 * g, 0.999 * h + 0.001 * g * g
    rate = 0.1 * np.sqrt(1 - 0.999 ** 2) / (1 - 0.9 ** 2)
    np.testing.assert_allclose(x_new, x - rate * want_v / (np.sqrt(want_h) + 1e-6), rtol=1e-5)
    assert x_new.dtype == v_new.dtype == h_new.dtype == np.float32
