"""The channels-last depthwise kernel (opencann.ops.cpu_depthwise) against the reference NCHW convolution."""
import numpy as np
import pytest

from opencann.ops import conv as ref_conv
from opencann.ops import cpu_conv
from opencann.ops.cpu_conv_base import ACTIVATIONS
from opencann.ops.cpu_depthwise import depthwise_nhwc

RNG = np.random.default_rng(5)

CASES = [  # (H, W, C), (kh, kw), strides, pads [top, left, bottom, right], dilations
    ((9, 11, 16), (3, 3), (1, 1), (1, 1, 1, 1), (1, 1)),  # 16-channel vectors: groups of 4 outputs and single ones
    ((10, 13, 24), (3, 3), (2, 2), (1, 1, 1, 1), (1, 1)),  # stride 2; the second 16-channel block overlaps the first
    ((7, 9, 12), (3, 3), (1, 1), (0, 1, 2, 1), (1, 1)),  # 8-channel vectors, overlapping; uneven pads
    ((8, 8, 8), (3, 3), (2, 2), (0, 0, 0, 0), (1, 1)),  # no pads: every output inside the image
    ((6, 7, 40), (3, 3), (2, 1), (1, 1, 1, 1), (1, 1)),  # row stride 2, column stride 1
    ((3, 2, 16), (3, 3), (1, 1), (1, 1, 1, 1), (1, 1)),  # too narrow for a window inside: border taps only
    ((5, 6, 5), (3, 3), (1, 1), (1, 1, 1, 1), (1, 1)),  # fewer than 8 channels: taps
    ((9, 9, 16), (5, 5), (1, 1), (2, 2, 2, 2), (1, 1)),  # other kernels, dilations and column strides: taps
    ((9, 9, 16), (3, 3), (1, 1), (2, 2, 2, 2), (2, 2)),
    ((12, 12, 32), (3, 3), (3, 3), (1, 1, 1, 1), (1, 1)),
]
ACTS = [("", 0.0, 0.0), ("Relu", 0.0, 0.0), ("Clip", 0.0, 6.0), ("Clip", -0.5, 0.25), ("LeakyRelu", 0.1, 0.0),
        ("HardSwish", 0.0, 0.0)]


def _oracle(x, w, b, z, strides, pads, dilations, act):
    """Reference depthwise conv (NCHW, group C) + residual + activation, back to channels-last."""
    y = ref_conv.conv(x.transpose(2, 0, 1)[None], w.transpose(2, 0, 1)[:, None], b, group=x.shape[2],
                      strides=list(strides), pads=list(pads), dilations=list(dilations))[0].transpose(1, 2, 0)
    return cpu_conv._reference_activation(y if z is None else y + z, *act)


def _run(x, w, b, z, strides, pads, dilations, act, shape):
    y = np.full(shape, np.nan, np.float32)
    res = y if z is None else z
    depthwise_nhwc(x, w, b, y, res, z is not None, *strides, *dilations, pads[0], pads[1], ACTIVATIONS[act[0]],
                   np.float32(act[1]), np.float32(act[2]))
    return y


@pytest.mark.parametrize("act", ACTS)
@pytest.mark.parametrize("case", CASES)
def test_depthwise_matches_reference(case, act):
    (h, w_, c), kernel, strides, pads, dilations = case
    x = RNG.standard_normal((h, w_, c)).astype(np.float32)
    w = RNG.standard_normal((*kernel, c)).astype(np.float32)
    b = RNG.standard_normal(c).astype(np.float32)
    want = _oracle(x, w, b, None, strides, pads, dilations, act)
    z = RNG.standard_normal(want.shape).astype(np.float32)
    for residual in (None, z):
        want = _oracle(x, w, b, residual, strides, pads, dilations, act)
        got = _run(x, w, b, residual, strides, pads, dilations, act, want.shape)
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_nan_stays_nan_through_the_fused_clip():
    x = RNG.standard_normal((6, 10, 32)).astype(np.float32)
    x[2, 4, 3] = x[3, 0, 20] = np.nan
    w, b = RNG.standard_normal((3, 3, 32)).astype(np.float32), np.zeros(32, np.float32)
    args = (1, 1), (1, 1, 1, 1), (1, 1), ("Clip", 0.0, 6.0)
    want = _oracle(x, w, b, None, *args)
    got = _run(x, w, b, None, *args, want.shape)
    assert np.isnan(want).sum() == 9 + 6 and np.array_equal(np.isnan(got), np.isnan(want))
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
