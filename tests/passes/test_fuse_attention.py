"""fuse_attention and opencann::Attention: PyTorch-exported attention layers (BERT-like, HF-style with a mask,
F.scaled_dot_product_attention, nn.MultiheadAttention) before/after, outputs against the unoptimized graph and
onnxruntime; the fast kernel against the reference one."""
import io
import warnings

import numpy as np
import onnxruntime as ort
import pytest
import torch
from torch import nn
from torch.nn import functional as F

from opencann.compiler import pipeline
from opencann.compiler.passes.fuse_attention import fuse_attention
from opencann.compiler.pipeline import BuildOptions, compile_graph
from opencann.errors import AclError
from opencann.frontends.onnx import import_onnx
from opencann.ops.registry import lookup
from opencann.runtime import Executor
from tests.models import build
from tests.passes import ops

RNG = np.random.default_rng(0)


def compiled(onnx_bytes: bytes, attention: bool = True, mode: str = "force_fp32"):
    """The pipeline's graph, with or without fuse_attention."""
    saved = list(pipeline.PIPELINE)
    if not attention:
        pipeline.PIPELINE[:] = [p for p in saved if p[0] != "fuse_attention"]
    try:
        return compile_graph(import_onnx(onnx_bytes), BuildOptions(precision_mode=mode)).graph
    finally:
        pipeline.PIPELINE[:] = saved


def check(onnx_bytes: bytes, feeds: dict, fused_count: int, rtol=1e-5):
    """Compile with and without the pass; the node counts change as expected, the outputs agree with the
    unoptimized graph, the graph compiled without the pass and onnxruntime; a second run changes nothing."""
    before, after = compiled(onnx_bytes, attention=False), compiled(onnx_bytes)
    after.validate()
    assert ops(after).count("opencann::Attention") == fused_count
    assert len(after.nodes) < len(before.nodes)
    assert not {"Softmax", "MatMul"} & set(ops(after))
    text = str(after)
    assert str(fuse_attention(after)) == text
    names = [v.name for v in import_onnx(onnx_bytes).inputs]
    args = [feeds[n] for n in names]
    peer = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"]).run(None, feeds)
    for want in (Executor(import_onnx(onnx_bytes)).run(args), Executor(before).run(args), peer):
        for got, w in zip(Executor(after).run(args), want, strict=True):
            np.testing.assert_allclose(got, w, rtol=rtol, atol=rtol)
    return after


def onnx_of(module: nn.Module, *inputs: np.ndarray) -> bytes:
    """The module exported at opset 17 (gradients on: nn.MultiheadAttention's fused fast path does not export)."""
    torch.manual_seed(0)
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module.eval(), tuple(torch.from_numpy(x) for x in inputs), buf, opset_version=17,
                          dynamo=False, input_names=["input", "mask"][:len(inputs)], output_names=["output"])
    return buf.getvalue()


class _HFSelfAttention(nn.Module):
    """BERT as Hugging Face writes it: separate projections, scores / sqrt(d) + an extended additive mask."""

    def __init__(self, d: int, heads: int):
        super().__init__()
        self.heads, self.q, self.k, self.v = heads, nn.Linear(d, d), nn.Linear(d, d), nn.Linear(d, d)

    def forward(self, x, mask):
        b, t, d = x.shape
        split = lambda y: y.view(b, t, self.heads, d // self.heads).permute(0, 2, 1, 3)  # noqa: E731
        q, k, v = split(self.q(x)), split(self.k(x)), split(self.v(x))
        scores = torch.matmul(q, k.transpose(-1, -2)) / (d // self.heads) ** 0.5
        scores = scores + (1.0 - mask[:, None, None, :]) * -10000.0
        y = torch.matmul(torch.softmax(scores, dim=-1), v)
        return y.permute(0, 2, 1, 3).contiguous().view(b, t, d)


class _SDPA(nn.Module):
    def __init__(self, d: int, heads: int, causal: bool = False):
        super().__init__()
        self.heads, self.causal, self.qkv, self.out = heads, causal, nn.Linear(d, 3 * d), nn.Linear(d, d)

    def forward(self, x, mask=None):
        b, t, d = x.shape
        q, k, v = self.qkv(x).reshape(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=self.causal)
        return self.out(y.transpose(1, 2).reshape(b, t, d))


class _MHA(nn.Module):
    def __init__(self, d: int, heads: int, batch_first: bool):
        super().__init__()
        self.mha = nn.MultiheadAttention(d, heads, batch_first=batch_first)

    def forward(self, x, mask=None):
        return self.mha(x, x, x, need_weights=False, attn_mask=mask)[0]


def test_bert_like_encoder():
    m, x = build("transformer", batch=2)
    g = check(m, {"input": x}, fused_count=2, rtol=1e-4)
    names = ops(g)  # per layer: the packed QKV projection feeds the fused node, which feeds the output projection
    assert names.count("opencann::FusedMatMul") == 8 and not {"Split", "Squeeze", "MatMul"} & set(names)
    node = next(n for n in g.nodes if n.op == "Attention")
    assert node.inputs[0] is node.inputs[1] is node.inputs[2] and node.inputs[3] is None
    assert node.attrs["scale"] == pytest.approx(0.25)


@pytest.mark.parametrize("batch,d,heads,t", [(2, 24, 4, 9), (1, 30, 3, 7)])  # head sizes 6, 10; odd lengths
def test_hugging_face_style_with_padding_mask(batch, d, heads, t):
    x = RNG.standard_normal((batch, t, d)).astype(np.float32)  # batch 1: the mask is the scores' FusedMatMul bias
    mask = np.ones((batch, t), np.float32)
    mask[-1, t - 3:] = 0
    check(onnx_of(_HFSelfAttention(d, heads), x, mask), {"input": x, "mask": mask}, fused_count=1)


@pytest.mark.parametrize("mask", ["none", "float", "bool", "causal"])
def test_scaled_dot_product_attention(mask):
    x = RNG.standard_normal((2, 5, 16)).astype(np.float32)
    keep = RNG.random((5, 5)) > 0.3
    keep[1] = False  # a query that sees nothing: zeros (PyTorch's exported NaN guard)
    inputs = {"none": (x,), "causal": (x,), "float": (x, RNG.standard_normal((5, 5)).astype(np.float32)),
              "bool": (x, keep)}[mask]
    m = onnx_of(_SDPA(16, 2, causal=mask == "causal"), *inputs)
    g = check(m, dict(zip(["input", "mask"], inputs, strict=False)), fused_count=1)
    assert next(n for n in g.nodes if n.op == "Attention").attrs["zero_nan_rows"] == (mask == "bool")


@pytest.mark.parametrize("batch_first,masked", [(True, False), (True, True), (False, True)])
def test_multihead_attention(batch_first, masked):
    x = RNG.standard_normal((3, 6, 20)).astype(np.float32)  # (batch, seq) or (seq, batch)
    t = x.shape[1] if batch_first else x.shape[0]
    causal = np.triu(np.full((t, t), -np.inf, np.float32), 1)
    inputs = (x, causal) if masked else (x,)
    m = onnx_of(_MHA(20, 4, batch_first), *inputs)
    check(m, dict(zip(["input", "mask"], inputs, strict=False)), fused_count=1)


def test_not_fused_when_the_probabilities_are_read_elsewhere():
    class Weights(_SDPA):
        def forward(self, x):
            b, t, d = x.shape
            q, k, v = self.qkv(x).reshape(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
            p = torch.softmax(q @ k.transpose(-1, -2), dim=-1)
            return (p @ v).sum() + p.sum()

    m = onnx_of(Weights(8, 2), RNG.standard_normal((1, 4, 8)).astype(np.float32))
    assert "opencann::Attention" not in ops(compiled(m))


def kernels():
    d = lookup("Attention", 1, "opencann")
    return d.kernels["cpu"], d.reference


def views(b, h, s, d):
    """Head views of a packed (b, s, 3*h*d) QKV tensor and a (b, s, h*d) output."""
    e = h * d
    row = [b, h, s, d, s * 3 * e, d, 3 * e, 1]
    return {"q_view": [0, *row], "k_view": [e, *row], "v_view": [2 * e, *row],
            "y_view": [0, b, h, s, d, s * e, d, e, 1], "y_shape": [b, s, e]}


def numpy_attention(qkv, h, mask, scale):
    b, s, _ = qkv.shape
    q, k, v = qkv.reshape(b, s, 3, h, -1).transpose(2, 0, 3, 1, 4).astype(np.float64)
    z = scale * q @ k.swapaxes(-1, -2) + (0 if mask is None else mask)
    p = np.exp(z - z.max(-1, keepdims=True))
    y = (p / p.sum(-1, keepdims=True)) @ v
    return y.transpose(0, 2, 1, 3).reshape(b, s, -1)


@pytest.mark.parametrize("mask_shape", [None, (2, 1, 1, 7), (7, 7), (1, 3, 7, 7)])
def test_fast_kernel_matches_reference_and_numpy(mask_shape):
    fast, ref = kernels()
    qkv = RNG.standard_normal((2, 7, 3 * 3 * 5)).astype(np.float32)
    mask = None if mask_shape is None else RNG.standard_normal(mask_shape).astype(np.float32)
    want = numpy_attention(qkv, 3, mask, 0.3)
    for fn in (fast, ref):
        got = fn(qkv, qkv, qkv, mask, scale=0.3, **views(2, 3, 7, 5))
        np.testing.assert_allclose(got, want, rtol=2e-5, atol=2e-6)
    out = np.full((2, 7, 15), np.nan, np.float32)
    assert fast(qkv, qkv, qkv, mask, scale=0.3, out=out, **views(2, 3, 7, 5)) is out
    np.testing.assert_allclose(out, want, rtol=2e-5, atol=2e-6)


def test_boolean_mask_low_precision_and_bad_views():
    fast, ref = kernels()
    qkv = RNG.standard_normal((1, 6, 3 * 2 * 4)).astype(np.float32)
    keep = RNG.random((6, 6)) > 0.3
    keep[:, 0] = True
    want = numpy_attention(qkv, 2, np.where(keep, 0, -np.inf), 0.5)
    for fn in (fast, ref):
        np.testing.assert_allclose(fn(qkv, qkv, qkv, keep, scale=0.5, **views(1, 2, 6, 4)), want, rtol=2e-5,
                                   atol=2e-6)
    for code in (10, 16):  # float16, bfloat16 operands
        low = fast(qkv, qkv, qkv, keep, scale=0.5, low=code, **views(1, 2, 6, 4))
        assert not np.array_equal(low, want.astype(np.float32))
        np.testing.assert_allclose(low, want, rtol=3e-2, atol=3e-2)
        np.testing.assert_allclose(low, ref(qkv, qkv, qkv, keep, scale=0.5, low=code, **views(1, 2, 6, 4)),
                                   rtol=1e-5, atol=2e-3)
    bad = views(1, 2, 6, 4)
    bad["v_view"][0] = 100  # past the end of the input
    with pytest.raises(AclError, match="does not fit"):
        fast(qkv, qkv, qkv, scale=0.5, **bad)


def test_fully_masked_rows_are_nan_as_in_the_unfused_graph_or_zeros():
    fast, ref = kernels()
    qkv = RNG.standard_normal((1, 3, 3 * 4)).astype(np.float32)
    mask = np.zeros((3, 3), np.float32)
    mask[1] = -np.inf
    for fn in (fast, ref):
        y = fn(qkv, qkv, qkv, mask, scale=1.0, **views(1, 1, 3, 4))
        assert np.isnan(y[0, 1]).all() and not np.isnan(y[0, [0, 2]]).any()
        z = fn(qkv, qkv, qkv, mask, scale=1.0, zero_nan_rows=1, **views(1, 1, 3, 4))
        assert not z[0, 1].any()
        np.testing.assert_array_equal(z[0, [0, 2]], y[0, [0, 2]])


@pytest.mark.parametrize("low", ["float16", "bfloat16"])
def test_probability_rounding_matches_numpy(low):
    from opencann.ops.cpu_attention import _round_row

    x = np.concatenate([RNG.random(500), RNG.random(500) * 1e-4, RNG.random(100) * 1e-7, [0, 1, 2.0 ** -14]])
    x = x.astype(np.float32)
    want = x.astype(low).astype(np.float32)
    _round_row(x, 1 if low == "float16" else 2)
    np.testing.assert_array_equal(x, want)
