"""opencann::FusedInvertedResidual (opencann.ops.cpu_inverted_residual) against the reference convolutions."""
import numpy as np
import pytest

from opencann.errors import AclError
from opencann.ops import blas, cpu_conv
from opencann.ops import conv as ref_conv
from opencann.ops import cpu_inverted_residual as block

RNG = np.random.default_rng(11)

CASES = [  # (x shape NHWC, expanded channels, output channels, depthwise kernel, attributes, residual, activations)
    ((2, 13, 11, 8), 24, 8, (3, 3), {"pads": [1, 1, 1, 1]}, True, ("Clip", "Clip", "")),
    ((3, 12, 9, 6), 16, 10, (3, 3), {"pads": [1, 1, 1, 1], "strides": [2, 2]}, False, ("Relu", "HardSwish", "Relu")),
    ((1, 14, 10, 4), 12, 4, (3, 3), {"pads": [2, 2, 2, 2], "dilations": [2, 2]}, True, ("LeakyRelu", "", "Clip")),
    ((2, 9, 12, 5), 8, 7, (5, 3), {"pads": [0, 1, 2, 0], "strides": [2, 1]}, False, ("Clip", "Sigmoid", "")),
]


def _case(x_shape, e, m, k, residual, dtype=np.float32):
    c = x_shape[3]
    x = RNG.standard_normal(x_shape).astype(dtype)
    we, wd, wp = (RNG.standard_normal(s).astype(dtype) * 0.5 for s in ((1, 1, c, e), (*k, 1, e), (1, 1, e, m)))
    be, bd, bp = (RNG.standard_normal(n).astype(dtype) for n in (e, e, m))
    return x, [we, be, wd, bd, wp, bp], residual


def _oracle(x, weights, z, acts, attrs):
    """The three convolutions by the NCHW reference kernel and reference activations."""
    we, be, wd, bd, wp, bp = weights
    y = x.transpose(0, 3, 1, 2)
    convs = [(we, be, 1, {}), (wd, bd, wd.shape[3], attrs), (wp, bp, 1, {})]
    for i, ((w, b, group, kw), (name, a, bb)) in enumerate(zip(convs, acts, strict=True)):
        if w is None:
            continue
        y = ref_conv.conv(y, w.transpose(3, 2, 0, 1), b, group=group, **kw)
        if i == 2 and z is not None:
            y = y + z.transpose(0, 3, 1, 2)
        y = cpu_conv._reference_activation(y, name, a, bb)
    return y.transpose(0, 2, 3, 1)


def _acts(names):
    bounds = {"Clip": (0.0, 6.0), "LeakyRelu": (0.1, 0.0)}
    return [(n, *bounds.get(n, (0.0, 0.0))) for n in names]


@pytest.mark.parametrize("mkl", [True, False])
@pytest.mark.parametrize("tile", [1, 500, block.TILE_ELEMENTS])
@pytest.mark.parametrize("case", CASES)
def test_fused_block_matches_the_three_convolutions(case, tile, mkl, monkeypatch):
    monkeypatch.setattr(block, "TILE_ELEMENTS", tile)  # 1: one output row a tile, expanded rows handed on
    if not mkl:  # the Python tile loop (NumPy's GEMMs where MKL is missing)
        monkeypatch.setattr(blas, "library", lambda: None)
    x_shape, e, m, k, attrs, residual, names = case
    x, weights, _ = _case(x_shape, e, m, k, residual)
    acts = _acts(names)
    want_shape = _oracle(x, weights, None, acts, attrs).shape
    z = RNG.standard_normal(want_shape).astype(np.float32) if residual else None
    want = _oracle(x, weights, z, acts, attrs)
    got = block.fused_inverted_residual(x, *weights, z, activations=[a[0] for a in acts],
                                        alphas=[a[1] for a in acts], betas=[a[2] for a in acts], **attrs)
    assert got.shape == want.shape and got.dtype == np.float32
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("tile", [1, block.TILE_ELEMENTS])
def test_block_without_expansion_matches_depthwise_and_projection(tile, monkeypatch):
    monkeypatch.setattr(block, "TILE_ELEMENTS", tile)
    x, weights, _ = _case((2, 11, 9, 6), 6, 5, (3, 3), False)
    weights[0] = weights[1] = None
    attrs, acts = {"pads": [1, 1, 1, 1], "strides": [2, 2]}, _acts(["", "Clip", ""])
    want = _oracle(x, weights, None, acts, attrs)
    got = block.fused_inverted_residual(x, *weights, activations=["", "Clip", ""], alphas=[0.0, 0.0, 0.0],
                                        betas=[0.0, 6.0, 0.0], **attrs)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    with pytest.raises(AclError, match="do not make"):
        block.fused_inverted_residual(x[..., :4], *weights, **attrs)


def test_missing_biases_and_float64_take_the_reference_path():
    x, weights, _ = _case((2, 7, 6, 4), 8, 4, (3, 3), False)
    attrs = {"pads": [1, 1, 1, 1]}
    for i in (1, 3, 5):
        weights[i] = np.zeros_like(weights[i])
    want = _oracle(x, weights, None, _acts(["Relu", "Relu", ""]), attrs)
    weights[1] = weights[3] = weights[5] = None
    got = block.fused_inverted_residual(x, *weights, activations=["Relu", "Relu", ""], **attrs)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    x64, w64 = x.astype(np.float64), [w if w is None else w.astype(np.float64) for w in weights]
    got64 = block.fused_inverted_residual(x64, *w64, activations=["Relu", "Relu", ""], **attrs)
    assert got64.dtype == np.float64
    np.testing.assert_allclose(got64, want, rtol=1e-4, atol=1e-4)


def test_bad_arguments_are_rejected():
    x, weights, _ = _case((1, 5, 5, 4), 8, 4, (3, 3), False)
    with pytest.raises(AclError, match="unknown activation 'Gelu'"):
        block.fused_inverted_residual(x, *weights, activations=["Gelu", "", ""])
    with pytest.raises(AclError, match="want 3 activations"):
        block.fused_inverted_residual(x, *weights, activations=["", ""])
    with pytest.raises(AclError, match="do not make"):
        block.fused_inverted_residual(x[..., :3], *weights)


def test_the_same_weights_with_other_attributes_get_their_own_plan():
    x, weights, _ = _case((1, 10, 9, 8), 16, 8, (3, 3), False)
    acts = _acts(["Relu", "Clip", ""])
    names = dict(activations=[a[0] for a in acts], alphas=[a[1] for a in acts], betas=[a[2] for a in acts])
    for attrs in ({"pads": [1, 1, 1, 1]}, {"pads": [1, 1, 1, 1], "strides": [2, 2]}, {"pads": [0, 0, 0, 0]}):
        want = _oracle(x, weights, None, acts, attrs)
        for _ in range(2):  # planned, then from the plan
            got = block.fused_inverted_residual(x, *weights, **names, **attrs)
            np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    weights[4] *= 2  # weights updated in place: the plan sees them
    weights[5] += 1
    want = _oracle(x, weights, None, acts, attrs)
    got = block.fused_inverted_residual(x, *weights, **names, **attrs)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
