"""The fast CPU kernels of opencann.ops.cpu_nn against the reference kernels and NumPy, and the fused ops' schemas."""
import math

import numpy as np
import pytest

from opencann.compiler.ir import Graph, Node, TensorType, Value
from opencann.compiler.passes.shape_inference import infer_shapes
from opencann.errors import AclError
from opencann.ops import blas, cpu_nn, registry
from opencann.runtime import Executor

RNG = np.random.default_rng(0)
F32 = np.float32


def kernels(name: str, domain: str = "", opset: int = 23):
    d = registry.lookup(name, opset, domain)
    assert d.kernel_for("cpu") is not d.reference, f"{name} has no fast CPU kernel"
    return d.kernel_for("cpu"), d.reference


def randn(*shape, dtype=F32):
    return RNG.standard_normal(shape).astype(dtype)


def gelu_np(y):
    return 0.5 * y * (1 + np.vectorize(math.erf)(y / math.sqrt(2)))


def softmax_np(y, axis):
    e = np.exp(y - y.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


ACTS = {"none": lambda y: y, "relu": lambda y: np.maximum(y, 0), "gelu": gelu_np, "tanh": np.tanh,
        "sigmoid": lambda y: 1 / (1 + np.exp(-y)),
        "softmax": lambda y: softmax_np(y, -1),
        "gelu_tanh": lambda y: 0.5 * y * (1 + np.tanh(math.sqrt(2 / math.pi) * (y + 0.044715 * y ** 3)))}


@pytest.mark.parametrize("act", list(ACTS))
@pytest.mark.parametrize("a_shape,bias_shape", [((2, 5, 7), (9,)), ((3, 7), (1, 9)), ((1, 1, 7), None)])
def test_fused_matmul_matches_reference_and_numpy(act, a_shape, bias_shape):
    fast, ref = kernels("FusedMatMul", "opencann")
    a, b = randn(*a_shape), randn(7, 9)
    bias = None if bias_shape is None else randn(*bias_shape)
    want = ACTS[act](0.5 * (a.astype(np.float64) @ b) + (0 if bias is None else bias))
    got = fast(a, b, bias, alpha=0.5, activation=act)
    assert got.dtype == F32 and got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=2e-6)
    np.testing.assert_allclose(got, ref(a, b, bias, alpha=0.5, activation=act), rtol=1e-5, atol=2e-6)


def test_fused_matmul_batched_operands():
    fast, ref = kernels("FusedMatMul", "opencann")
    q, k = randn(1, 3, 5, 4), randn(1, 3, 6, 4)
    kt = np.swapaxes(k, -1, -2)  # a strided view, as attention's K^T
    want = (q.astype(np.float64) @ kt) / 2
    np.testing.assert_allclose(fast(q, kt, alpha=0.5), want, rtol=1e-5, atol=1e-6)
    bias = randn(6)
    got = fast(q, kt, bias, alpha=0.5, activation="relu")
    np.testing.assert_allclose(got, np.maximum(want + bias, 0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got, ref(q, kt, bias, alpha=0.5, activation="relu"), rtol=1e-5, atol=1e-6)


def test_fused_matmul_fallbacks_match_reference():
    fast, ref = kernels("FusedMatMul", "opencann")
    a, b = randn(2, 3, 4, 5, dtype=np.float64), randn(2, 3, 5, 6, dtype=np.float64)  # float64, batched B
    np.testing.assert_array_equal(fast(a, b, activation="relu"), ref(a, b, activation="relu"))
    a32, b32 = randn(4, 6).T, randn(4, 3)  # A not C-contiguous
    np.testing.assert_allclose(fast(a32, b32), a32 @ b32, rtol=1e-5)
    full_bias = randn(6, 3)  # a full (M, N) bias is no bias row
    np.testing.assert_allclose(fast(a32, b32, full_bias), ref(a32, b32, full_bias), rtol=1e-6)
    with pytest.raises(AclError, match="fused activation"):
        ref(a32, b32, activation="swish")


@pytest.mark.parametrize("trans_a,trans_b", [(0, 0), (1, 0), (0, 1), (1, 1)])
@pytest.mark.parametrize("c_shape", [None, (5,), (3, 5), (1,), (3, 1)])
def test_gemm_and_fused_gemm(trans_a, trans_b, c_shape):
    fast, ref = kernels("Gemm")
    fused, _ = kernels("FusedGemm", "opencann")
    a = randn(*((4, 3) if trans_a else (3, 4)))
    b = randn(*((5, 4) if trans_b else (4, 5)))
    c = None if c_shape is None else randn(*c_shape)
    want = 0.7 * ((a.T if trans_a else a) @ (b.T if trans_b else b)) + (0 if c is None else 1.5 * c)
    kw = {"alpha": 0.7, "beta": 1.5, "transA": trans_a, "transB": trans_b}
    np.testing.assert_allclose(fast(a, b, c, **kw), want, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(fast(a, b, c, **kw), ref(a, b, c, **kw), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(fused(a, b, c, activation="relu", **kw), np.maximum(want, 0), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("act", ["none", "relu", "tanh", "softmax"])
@pytest.mark.parametrize("alpha,beta,trans_a,trans_b", [(1.0, 1.0, 0, 1), (0.7, 1.0, 0, 0), (1.0, 1.5, 0, 1),
                                                         (1.0, 1.0, 1, 0)])
@pytest.mark.parametrize("c_shape", [None, (5,), (3, 5)])
@pytest.mark.parametrize("with_out", [False, True])
def test_bound_gemm_matches_the_keyword_kernel(act, alpha, beta, trans_a, trans_b, c_shape, with_out):
    """What the executor calls (``kernel.bind_attrs(**attrs)``): its fast path and every fallback give the kernel's
    values, into the planned buffer when one is given."""
    fused, _ = kernels("FusedGemm", "opencann")
    a = randn(*((4, 3) if trans_a else (3, 4)))
    b = randn(*((5, 4) if trans_b else (4, 5)))
    c = None if c_shape is None else randn(*c_shape)
    kw = {"alpha": alpha, "beta": beta, "transA": trans_a, "transB": trans_b, "activation": act}
    out = np.full((3, 5), np.nan, F32) if with_out else None
    got = fused.bind_attrs(**kw)(a, b, c, out=out)
    np.testing.assert_allclose(got, fused(a, b, c, **kw), rtol=1e-5, atol=1e-6)
    if with_out and act != "softmax" and beta == 1.0 and c_shape != (3, 5):
        assert got is out  # the fast path wrote the planned buffer
    gemm_fast, gemm_ref = kernels("Gemm")
    if act == "none":
        kw.pop("activation")
        np.testing.assert_allclose(gemm_fast.bind_attrs(**kw)(a, b, c), gemm_ref(a, b, c, **kw), rtol=1e-5, atol=1e-6)


def test_bound_gemm_fallbacks():
    gemm_fast, gemm_ref = kernels("Gemm")
    a, b, c = randn(3, 4, dtype=np.float64), randn(4, 2, dtype=np.float64), randn(2, dtype=np.float64)
    np.testing.assert_array_equal(gemm_fast.bind_attrs()(a, b, c), gemm_ref(a, b, c))
    with pytest.raises(AclError, match="broadcast"):
        gemm_fast.bind_attrs(broadcast=0)(a.astype(F32), b.astype(F32), c.astype(F32))
    with pytest.raises(AclError, match="do not multiply"):
        gemm_fast.bind_attrs()(randn(3, 4), randn(5, 2))
    a, b, c = randn(3, 4), randn(4, 2), randn(4)[::2]  # a bias row that is not contiguous
    np.testing.assert_allclose(gemm_fast.bind_attrs()(a, b, c), gemm_ref(a, b, c), rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(gemm_fast.bind_attrs()(randn(3, 0), randn(0, 2), c), np.broadcast_to(c, (3, 2)))


def test_gemm_fallbacks():
    fast, ref = kernels("Gemm")
    a, b, c = randn(3, 4, dtype=np.float64), randn(4, 2, dtype=np.float64), randn(2, dtype=np.float64)
    np.testing.assert_array_equal(fast(a, b, c), ref(a, b, c))
    with pytest.raises(AclError, match="broadcast"):
        fast(a.astype(F32), b.astype(F32), c.astype(F32), broadcast=0)


@pytest.mark.parametrize("shapes", [((2, 3, 4), (4, 5)), ((2, 3, 4, 5), (2, 3, 5, 2)), ((4,), (4, 3)),
                                    ((3, 4), (4,)), ((1, 6, 4), (1, 4, 2))])
def test_matmul(shapes):
    fast, ref = kernels("MatMul")
    a, b = randn(*shapes[0]), randn(*shapes[1])
    np.testing.assert_allclose(fast(a, b), np.matmul(a, b), rtol=1e-5, atol=1e-6)
    assert fast(a, b).shape == ref(a, b).shape
    with pytest.raises(AclError, match="MatMul shapes"):
        fast(randn(2, 3), randn(4, 2))


def test_empty_products_fall_back():
    matmul_fast, _ = kernels("MatMul")
    np.testing.assert_array_equal(matmul_fast(randn(2, 0), randn(0, 3)), np.zeros((2, 3), F32))
    fused, _ = kernels("FusedMatMul", "opencann")
    np.testing.assert_array_equal(fused(randn(2, 0), randn(0, 3), np.ones(3, F32)), np.ones((2, 3), F32))
    assert fused(randn(0, 4), randn(4, 3), activation="relu").shape == (0, 3)
    gemm_fast, _ = kernels("Gemm")
    np.testing.assert_array_equal(gemm_fast(randn(2, 0), randn(0, 3), np.ones(3, F32)), np.ones((2, 3), F32))


@pytest.mark.parametrize("shape,axis", [((2, 3, 17), -1), ((5, 1), 1), ((3, 4, 5), 1)])
def test_softmax(shape, axis):
    fast, ref = kernels("Softmax", opset=13)
    x = randn(*shape) * 30  # large logits: the max is subtracted first
    if x.shape[axis] > 1:
        x.flat[0] = -np.inf
    want = softmax_np(x, axis)
    np.testing.assert_allclose(fast(x, axis=axis), want, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(fast(x, axis=axis), ref(x, axis=axis), rtol=1e-5, atol=1e-7)
    x16 = x.astype(np.float16)
    np.testing.assert_array_equal(fast(x16, axis=axis), ref(x16, axis=axis))


@pytest.mark.parametrize("shape", [(2, 4, 8, 8), (3, 300), (6, 1)])  # attention scores, a row past SHORT_ROW, 1 wide
def test_softmax_rows_short_and_long_in_place_and_strided(shape):
    fast, _ = kernels("Softmax", opset=13)
    x = randn(*shape) * 20
    want = softmax_np(x, -1)
    buf = x.copy()
    assert fast(buf, axis=-1, out=buf) is buf  # the executor hands over a dying input
    np.testing.assert_allclose(buf, want, rtol=1e-5, atol=1e-7)
    out = np.full(shape, np.nan, F32)
    assert fast(x, axis=-1, out=out) is out
    np.testing.assert_allclose(out, want, rtol=1e-5, atol=1e-7)
    strided = np.swapaxes(np.swapaxes(x, 0, -1).copy(), 0, -1)  # the same values, not C-contiguous
    np.testing.assert_allclose(fast(strided, axis=-1), want, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(fast(x, axis=-1, out=np.empty((1,), F32)), want, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("n", [4, 300])
def test_softmax_masked_rows_follow_numpy(n):
    """A row of -inf (or with a NaN or +inf) gives NaN, as the reference does; the other rows are unaffected."""
    fast, ref = kernels("Softmax", opset=13)
    x = randn(4, n)
    x[0] = -np.inf
    x[1, 1], x[2, 2] = np.nan, np.inf
    x[3, : n // 2] = -np.inf  # half masked: still a distribution
    with np.errstate(invalid="ignore"):
        got, want = fast(x, axis=-1), ref(x, axis=-1)
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
    assert np.isnan(got[:3]).all()
    np.testing.assert_allclose(got[3], want[3], rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(got[3].sum(), 1.0, rtol=1e-6)


@pytest.mark.parametrize("shape", [(2, 3, 4, 5), (7, 300), (4, 1)])
def test_softmax_grad(shape):
    fast, ref = kernels("SoftmaxGrad", "opencann")
    y, dy = softmax_np(randn(*shape) * 3, -1).astype(F32), randn(*shape)
    want = (dy - (dy * y).sum(-1, keepdims=True)) * y
    np.testing.assert_allclose(ref(dy, y), want, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(fast(dy, y), want, rtol=1e-5, atol=1e-6)
    buf = dy.copy()
    assert fast(buf, y, out=buf) is buf  # in place over a dying dY
    np.testing.assert_allclose(buf, want, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(fast(np.asfortranarray(dy), y), want, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(fast(dy[:1], y), ref(dy[:1], y), rtol=1e-6)  # broadcasting: the reference
    np.testing.assert_array_equal(fast(dy.astype(np.float64), y.astype(np.float64)),
                                  ref(dy.astype(np.float64), y.astype(np.float64)))


@pytest.mark.parametrize("shape", [(2, 4, 8, 8), (3, 300)])  # attention scores, a row past SHORT_ROW
def test_scaled_softmax_and_gradient_equal_a_mul_by_the_scale(shape):
    """ScaledSoftmax(x) is Softmax(x * c) and SoftmaxGrad(scale=c) is SoftmaxGrad * c, bit for bit (float32 products
    where the Mul rounds them); the references agree, float64 takes the reference."""
    softmax_fast, _ = kernels("Softmax", opset=13)
    scaled_fast, scaled_ref = kernels("ScaledSoftmax", "opencann")
    grad_fast, grad_ref = kernels("SoftmaxGrad", "opencann")
    c = F32(0.25 / 3)
    x, dy = randn(*shape) * 20, randn(*shape)
    x.reshape(-1, shape[-1])[0, 0] = -np.inf  # a masked score
    want = softmax_fast(x * c, axis=-1)
    np.testing.assert_array_equal(scaled_fast(x, scale=float(c)), want)
    np.testing.assert_allclose(scaled_ref(x, scale=float(c)), softmax_np(x.astype(np.float64) * float(c), -1),
                               rtol=1e-5, atol=1e-7)
    buf = x.copy()
    assert scaled_fast(buf, scale=float(c), out=buf) is buf
    np.testing.assert_array_equal(buf, want)
    np.testing.assert_array_equal(scaled_fast(x.astype(np.float64), scale=0.5),
                                  scaled_ref(x.astype(np.float64), scale=0.5))
    y = want
    np.testing.assert_array_equal(grad_fast(dy, y, scale=float(c)), grad_fast(dy, y) * c)
    np.testing.assert_allclose(grad_ref(dy, y, scale=float(c)), grad_ref(dy, y) * c, rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(grad_fast(dy, y, scale=float(c)), (dy - (dy * y).sum(-1, keepdims=True)) * y * c,
                               rtol=1e-5, atol=1e-7)


def layer_norm_np(x, gamma, beta, eps):
    x = x.astype(np.float64)
    mean = x.mean(-1, keepdims=True)
    inv = 1 / np.sqrt(x.var(-1, keepdims=True) + eps)
    return (x - mean) * inv * gamma + (0 if beta is None else beta), mean, inv


@pytest.mark.parametrize("shape", [(2, 3, 37), (1, 768), (4, 1)])
@pytest.mark.parametrize("with_beta", [True, False])
def test_layer_norm(shape, with_beta):
    fast, ref = kernels("LayerNormalization", opset=17)
    x, gamma = randn(*shape) * 3 + 1, randn(shape[-1])
    beta = randn(shape[-1]) if with_beta else None
    got = fast(x, gamma, beta, axis=-1, epsilon=1e-5, stash_type=1)
    for g, w, r in zip(got, layer_norm_np(x, gamma, beta, 1e-5), ref(x, gamma, beta, axis=-1, epsilon=1e-5,
                                                                    stash_type=1), strict=True):
        assert g.dtype == F32 and g.shape == r.shape
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=2e-5)
        np.testing.assert_allclose(g, r, rtol=1e-5, atol=2e-5)
    x16 = x.astype(np.float16)  # falls back to the reference kernel
    np.testing.assert_array_equal(fast(x16, gamma.astype(np.float16), None, axis=-1, epsilon=1e-5, stash_type=1)[0],
                                  ref(x16, gamma.astype(np.float16), None, axis=-1, epsilon=1e-5, stash_type=1)[0])


@pytest.mark.parametrize("skip,bias", [(True, True), (True, False), (False, False)])
def test_skip_layer_norm(skip, bias):
    fast, ref = kernels("SkipLayerNormalization", "opencann")
    x, gamma, beta = randn(2, 5, 24), randn(24), randn(24)
    s, b = (randn(2, 5, 24) if skip else None), (randn(24) if bias else None)
    total = x + (0 if s is None else s) + (0 if b is None else b)
    want = layer_norm_np(total, gamma, beta, 1e-3)
    got, expect = fast(x, s, gamma, beta, b, epsilon=1e-3), ref(x, s, gamma, beta, b, epsilon=1e-3)
    for g, w, r in zip(got, (*want, total), expect, strict=True):
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=2e-5)
        np.testing.assert_allclose(g, r, rtol=1e-5, atol=2e-5)


@pytest.mark.parametrize("domain,opset", [("", 20), ("opencann", 1)])
def test_gelu(domain, opset):
    fast, ref = kernels("Gelu", domain, opset)
    x = np.concatenate([np.linspace(-8, 8, 1001), randn(257) * 3]).astype(F32).reshape(2, -1)
    np.testing.assert_allclose(fast(x), gelu_np(x.astype(np.float64)), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(fast(x), ref(x), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(fast(x, approximate="tanh"), ref(x, approximate="tanh"), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(fast(np.float32(1.5)), gelu_np(np.float64(1.5)), rtol=1e-6)
    np.testing.assert_array_equal(fast(x.astype(np.float64)), ref(x.astype(np.float64)))


def test_fused_ops_in_a_graph_take_schema_defaults_and_infer_shapes():
    x = Value("x", TensorType(F32, (2, 3, 4)))
    w, bias = Value("w", const=randn(4, 6)), Value("b", const=randn(6))
    g_, b_ = Value("g", const=randn(6)), Value("beta", const=randn(6))
    h, h2, y, s = Value("h"), Value("h2"), Value("y"), Value("s")
    nodes = [Node("FusedMatMul", [x, w, bias], [h], {"activation": "gelu"}, domain="opencann"),
             Node("FusedMatMul", [x, w], [h2], domain="opencann"),
             Node("SkipLayerNormalization", [h, h2, g_, b_], [y, Value(""), Value(""), s], domain="opencann")]
    graph = infer_shapes(Graph(inputs=[x], outputs=[y, s], nodes=nodes, initializers=[w, bias, g_, b_],
                               opsets={"": 17, "opencann": 1}))
    assert h.type == TensorType(F32, (2, 3, 6)) and y.type == TensorType(F32, (2, 3, 6)) and s.type == y.type
    xv = randn(2, 3, 4)
    got_y, got_s = Executor(graph).run([xv])
    total = gelu_np(xv @ w.const + bias.const) + xv @ w.const
    np.testing.assert_allclose(got_s, total, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(got_y, layer_norm_np(total, g_.const, b_.const, 1e-5)[0], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("mkl", [True, False])
@pytest.mark.parametrize("act,trans_b,with_bias", [("relu", 1, True), ("gelu", 0, True), ("sigmoid", 1, False),
                                                   ("none", 0, False)])
def test_gemm_with_epilogue_in_one_compiled_call(monkeypatch, mkl, act, trans_b, with_bias):
    """FusedGemm/MatMul's float32 path: one Numba call (MKL's GEMM + bias + activation) where MKL is loaded, a
    constant transposed weight through its row-major copy; sgemm + epilogue without MKL; NumPy's values either way."""
    if mkl and blas.library() is None:
        pytest.skip("MKL is not installed")
    if mkl:
        monkeypatch.setattr(cpu_nn, "sgemm", None)  # the compiled call must do it all
    else:
        monkeypatch.setattr(blas, "library", lambda: None)
    fused, _ = kernels("FusedGemm", "opencann")
    a, w, c = randn(6, 20), randn(*((9, 20) if trans_b else (20, 9))), randn(9)
    w.flags.writeable = False  # as an ONNX initializer's
    blas.constant(w)
    want = ACTS[act](0.5 * a @ (w.T if trans_b else w) + (c if with_bias else 0))
    run = fused.bind_attrs(alpha=0.5, transB=trans_b, activation=act)
    out = np.full((6, 9), np.nan, F32)
    assert run(a, w, c if with_bias else None, out=out) is out
    np.testing.assert_allclose(out, want, rtol=1e-5, atol=1e-5)
    for rows in (6, 2):  # the same weights again (what the first call worked out is reused), another batch
        np.testing.assert_allclose(run(a[:rows], w, c if with_bias else None), want[:rows], rtol=1e-5, atol=1e-5)
    matmul_fast, _ = kernels("MatMul")
    x, wb = randn(2, 3, 20), w.T.copy() if trans_b else w
    np.testing.assert_allclose(matmul_fast(x, wb), x @ wb, rtol=1e-5, atol=1e-5)
    fused_mm, _ = kernels("FusedMatMul", "opencann")
    got = fused_mm(x, wb, c if with_bias else None, alpha=0.5, activation=act)
    np.testing.assert_allclose(got, ACTS[act](0.5 * x @ wb + (c if with_bias else 0)), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("mkl", [True, False])
def test_weight_gradient_gemm_reads_a_transposed_in_one_compiled_call(monkeypatch, mkl):
    """Gemm(X, dY, transA=1) (a weight gradient) takes the compiled call too, the same weights again through what
    the first call worked out; sgemm without MKL; NumPy's values either way."""
    if mkl and blas.library() is None:
        pytest.skip("MKL is not installed")
    if mkl:
        monkeypatch.setattr(cpu_nn, "sgemm", None)
    else:
        monkeypatch.setattr(blas, "library", lambda: None)
    x, dy, c = randn(20, 6), randn(20, 9), randn(9)
    run = kernels("FusedGemm", "opencann")[0].bind_attrs(transA=1, activation="relu")
    out = np.full((6, 9), np.nan, F32)
    assert run(x, dy, c, out=out) is out
    np.testing.assert_allclose(out, np.maximum(x.T @ dy + c, 0), rtol=1e-5, atol=1e-5)
    x2 = randn(20, 6)
    np.testing.assert_allclose(run(x2, dy, c), np.maximum(x2.T @ dy + c, 0), rtol=1e-5, atol=1e-5)
    gemm = kernels("Gemm")[0].bind_attrs(transA=1, transB=1)
    np.testing.assert_allclose(gemm(x, dy.T.copy()), x.T @ dy, rtol=1e-5, atol=1e-5)


def test_compiled_gemm_into_an_output_that_overlaps_an_operand():
    a, b = randn(4, 4), randn(4, 4)
    want = np.maximum(a @ b + 1, 0)
    got = kernels("FusedGemm", "opencann")[0].bind_attrs(activation="relu")(a, b, np.ones(4, F32), out=a)
    assert got is a
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_bound_gemm_leaves_short_products_with_a_packable_weight_to_sgemm(monkeypatch):
    """Fewer rows than columns and a big constant weight: sgemm's packed product, also after a taller call."""
    monkeypatch.setattr(blas, "PACK_MIN", 50)
    w, c = randn(20, 9), randn(9)
    blas.constant(w)
    calls = []
    real = cpu_nn.sgemm
    monkeypatch.setattr(cpu_nn, "sgemm", lambda *a, **k: calls.append(a[0].shape[0]) or real(*a, **k))
    run = kernels("FusedGemm", "opencann")[0].bind_attrs(activation="relu")
    for rows in (12, 3, 12):
        a = randn(rows, 20)
        np.testing.assert_allclose(run(a, w, c), np.maximum(a @ w + c, 0), rtol=1e-5, atol=1e-5)
    assert calls == ([3] if blas.library() is not None else [12, 3, 12])
