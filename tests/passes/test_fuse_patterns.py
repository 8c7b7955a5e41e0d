"""fuse_patterns: node lists before/after each rewrite, and outputs equal to the unfused graph and onnxruntime."""
import math

import numpy as np
import onnxruntime as ort
import pytest
from onnx import helper
from torch import nn

from opencann.compiler.passes.fuse_patterns import fuse_patterns
from opencann.compiler.pipeline import compile_graph
from opencann.frontends.onnx import import_onnx
from opencann.runtime import Executor
from tests.models import build, export
from tests.passes import const, model, ops

RNG = np.random.default_rng(0)


def check(onnx_bytes, feeds, before, after):
    """Fuse; compare the node lists and the outputs with the unfused graph and onnxruntime; the fused graph."""
    plain = import_onnx(onnx_bytes)
    assert ops(plain) == before
    fused = fuse_patterns(import_onnx(onnx_bytes))
    fused.validate()
    assert ops(fused) == after
    want = Executor(plain).run(feeds)
    sess = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
    peer = sess.run(None, feeds)
    for got, w, p in zip(Executor(fused).run(feeds), want, peer, strict=True):
        np.testing.assert_allclose(got, w, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(got, p, rtol=1e-5, atol=1e-5)
    return fused


def erf_gelu(x, out, tag, order=0):
    """PyTorch's exported erf GELU (order 0) or ``(x * 0.5) * (1 + erf(x * 1/sqrt2))`` (order 1)."""
    if order == 0:
        return [helper.make_node("Div", [x, "sqrt2"], [f"{tag}d"]), helper.make_node("Erf", [f"{tag}d"], [f"{tag}e"]),
                helper.make_node("Add", [f"{tag}e", "one"], [f"{tag}a"]),
                helper.make_node("Mul", [x, f"{tag}a"], [f"{tag}m"]),
                helper.make_node("Mul", [f"{tag}m", "half"], [out])]
    return [helper.make_node("Mul", [x, "rsqrt2"], [f"{tag}d"]), helper.make_node("Erf", [f"{tag}d"], [f"{tag}e"]),
            helper.make_node("Add", ["one", f"{tag}e"], [f"{tag}a"]), helper.make_node("Mul", ["half", x], [f"{tag}m"]),
            helper.make_node("Mul", [f"{tag}a", f"{tag}m"], [out])]


SCALARS = [const("sqrt2", math.sqrt(2)), const("rsqrt2", 1 / math.sqrt(2)), const("one", 1.0), const("half", 0.5),
           const("c3", 3.0), const("k", 0.044715), const("s2pi", math.sqrt(2 / math.pi))]


@pytest.mark.parametrize("act", ["Relu", "Tanh", "Sigmoid", "Softmax", None])
def test_matmul_bias_activation(act):
    nodes = [helper.make_node("MatMul", ["x", "w"], ["h"]),
             helper.make_node("Add", ["b", "h"], ["y" if not act else "z"])]
    if act:
        nodes.append(helper.make_node(act, ["z"], ["y"]))
    m = model(nodes, [("x", [2, 5, 8])], ["y"], [const("w", RNG.standard_normal((8, 6))), const("b", RNG.random(6))])
    feeds = {"x": RNG.standard_normal((2, 5, 8)).astype(np.float32)}
    g = check(m, feeds, ops(import_onnx(m)), ["opencann::FusedMatMul"])
    assert g.nodes[0].attrs.get("activation", "none") == (act or "none").lower()
    assert g.opsets["opencann"] == 1


@pytest.mark.parametrize("order", [0, 1])
def test_erf_gelu_then_matmul_epilogue(order):
    nodes = [helper.make_node("MatMul", ["x", "w"], ["h"]), helper.make_node("Add", ["h", "b"], ["hb"]),
             *erf_gelu("hb", "y", "g", order)]
    m = model(nodes, [("x", [3, 8])], ["y"], [const("w", RNG.standard_normal((8, 6))), const("b", RNG.random(6)),
                                              *SCALARS])
    g = check(m, {"x": RNG.standard_normal((3, 8)).astype(np.float32) * 2}, ops(import_onnx(m)),
              ["opencann::FusedMatMul"])
    assert g.nodes[0].attrs == {"activation": "gelu"}


def test_standalone_gelus_at_opset_17_and_20():
    nodes = [*erf_gelu("x", "y1", "g"), helper.make_node("Pow", ["x", "c3"], ["p"]),
             helper.make_node("Mul", ["p", "k"], ["pk"]), helper.make_node("Add", ["x", "pk"], ["i"]),
             helper.make_node("Mul", ["s2pi", "i"], ["is"]), helper.make_node("Tanh", ["is"], ["t"]),
             helper.make_node("Add", ["t", "one"], ["t1"]), helper.make_node("Mul", ["x", "half"], ["xh"]),
             helper.make_node("Mul", ["xh", "t1"], ["y2"])]
    feeds = {"x": np.linspace(-5, 5, 24, dtype=np.float32).reshape(2, 12)}
    for opset, gelu in ((17, "opencann::Gelu"), (20, "Gelu")):
        m = model(nodes, [("x", [2, 12])], ["y1", "y2"], SCALARS, opset=opset)
        g = check(m, feeds, ops(import_onnx(m)), [gelu, gelu])
        assert [n.attrs["approximate"] for n in g.nodes] == ["none", "tanh"]


def test_gelu_not_fused_when_an_intermediate_is_read_elsewhere():
    m = model(erf_gelu("x", "y", "g"), [("x", [4])], ["y", "ga"], SCALARS)  # ga (1 + erf) is an output too
    check(m, {"x": np.arange(4, dtype=np.float32)}, ["Div", "Erf", "Add", "Mul", "Mul"],
          ["Div", "Erf", "Add", "Mul", "Mul"])


def decomposed_layer_norm(x, out):
    return [helper.make_node("ReduceMean", [x], ["mu"], axes=[-1]), helper.make_node("Sub", [x, "mu"], ["d"]),
            helper.make_node("Pow", ["d", "two"], ["d2"]), helper.make_node("ReduceMean", ["d2"], ["var"], axes=[-1]),
            helper.make_node("Add", ["var", "eps"], ["ve"]), helper.make_node("Sqrt", ["ve"], ["sd"]),
            helper.make_node("Div", ["d", "sd"], ["n"]), helper.make_node("Mul", ["n", "gamma"], ["ng"]),
            helper.make_node("Add", ["ng", "beta"], [out])]


@pytest.mark.parametrize("opset", [17, 13])
def test_decomposed_layer_norm_and_skip(opset):
    """A LayerNormalization at opset 17, a skip-less SkipLayerNormalization at 13; either takes the residual Add."""
    nodes = [helper.make_node("Add", ["x", "r"], ["s"]), *decomposed_layer_norm("s", "y")]
    inits = [const("two", 2.0), const("eps", 1e-5), const("gamma", RNG.random(16) + 0.5),
             const("beta", RNG.standard_normal(16))]
    m = model(nodes, [("x", [2, 3, 16]), ("r", [2, 3, 16])], ["y"], inits, opset=opset)
    feeds = {"x": RNG.standard_normal((2, 3, 16)).astype(np.float32) * 3,
             "r": RNG.standard_normal((2, 3, 16)).astype(np.float32)}
    g = check(m, feeds, ops(import_onnx(m)), ["opencann::SkipLayerNormalization"])
    assert g.nodes[-1].attrs["epsilon"] == pytest.approx(1e-5)


def test_skip_layer_norm_keeps_a_shared_sum():
    nodes = [helper.make_node("Add", ["x", "r"], ["s"]),
             helper.make_node("LayerNormalization", ["s", "gamma", "beta"], ["y"], axis=-1),
             helper.make_node("Relu", ["s"], ["z"])]
    m = model(nodes, [("x", [4, 8]), ("r", [4, 8])], ["y", "z", "s"],
              [const("gamma", RNG.random(8)), const("beta", RNG.random(8))])
    feeds = {k: RNG.standard_normal((4, 8)).astype(np.float32) for k in ("x", "r")}
    g = check(m, feeds, ["Add", "LayerNormalization", "Relu"], ["opencann::SkipLayerNormalization", "Relu"])
    assert [v.name for v in g.nodes[0].outputs] == ["y", "", "", "s"]


def test_attention_scale_folds_into_the_scores_matmul():
    nodes = [helper.make_node("Transpose", ["k"], ["kt"], perm=[0, 1, 3, 2]),
             helper.make_node("MatMul", ["q", "kt"], ["qk"]), helper.make_node("Div", ["qk", "scale"], ["sc"]),
             helper.make_node("Softmax", ["sc"], ["p"], axis=-1), helper.make_node("MatMul", ["p", "v"], ["y"])]
    shape = [1, 2, 5, 4]
    m = model(nodes, [("q", shape), ("k", shape), ("v", shape)], ["y"], [const("scale", 2.0)])
    feeds = {k: RNG.standard_normal(shape).astype(np.float32) for k in ("q", "k", "v")}
    g = check(m, feeds, ["Transpose", "MatMul", "Div", "Softmax", "MatMul"],
              ["Transpose", "opencann::FusedMatMul", "MatMul"])
    assert g.nodes[1].attrs == {"alpha": 0.5, "activation": "softmax"}


@pytest.mark.parametrize("x_shape,fused", [([3, 4], True), ([2, 3, 4], False)])
def test_softmax_before_opset_13_fuses_only_over_the_last_axis(x_shape, fused):
    """Softmax's default axis is 1 before opset 13: the last axis of a 2-D input only."""
    nodes = [helper.make_node("MatMul", ["x", "w"], ["h"]), helper.make_node("Softmax", ["h"], ["y"])]
    m = model(nodes, [("x", x_shape)], ["y"], [const("w", RNG.standard_normal((4, 4)))], opset=11)
    check(m, {"x": RNG.standard_normal(x_shape).astype(np.float32)}, ["MatMul", "Softmax"],
          ["opencann::FusedMatMul"] if fused else ["MatMul", "Softmax"])


def test_gemm_relu_in_the_mlp():
    m, x = build("mlp")
    g = compile_graph(import_onnx(m)).graph
    assert [n.op for n in g.nodes][-2:] == ["FusedGemm", "Gemm"] and "Relu" not in ops(g)
    assert g.nodes[-2].attrs["activation"] == "relu"
    sess = ort.InferenceSession(m, providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(Executor(g).run([x])[0], sess.run(None, {"input": x})[0], rtol=1e-5, atol=1e-6)


def test_exported_transformer_is_matched():
    m, x = build("transformer")  # 2 layers: per layer qkv+bias, proj+bias, ff1+bias+GELU, ff2+bias; the scores
    g = compile_graph(import_onnx(m)).graph  # FusedMatMul (QK^T/sqrt(d), softmax) goes into opencann::Attention
    names = ops(g)
    assert names.count("opencann::FusedMatMul") == 8 and names.count("opencann::SkipLayerNormalization") == 4
    assert names.count("opencann::Attention") == 2
    acts = [n.attrs.get("activation") for n in g.nodes if n.op == "FusedMatMul"]
    assert acts.count("gelu") == 2 and acts.count("softmax") == 0
    assert not {"Erf", "Div", "LayerNormalization", "Add", "Softmax"} & set(names)
    sess = ort.InferenceSession(m, providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(Executor(g).run([x])[0], sess.run(None, {"input": x})[0], rtol=1e-4, atol=1e-5)


class _NormGelu(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin, self.norm = nn.Linear(12, 12), nn.LayerNorm(12)

    def forward(self, x):
        return self.norm(nn.functional.gelu(self.lin(x)) + x)


def test_pytorch_opset_14_layer_norm_and_gelu():
    x = RNG.standard_normal((2, 7, 12)).astype(np.float32)
    m = export(_NormGelu(), x, opset=14)
    g = compile_graph(import_onnx(m)).graph
    assert ops(g) == ["opencann::FusedMatMul", "opencann::SkipLayerNormalization"]
    sess = ort.InferenceSession(m, providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(Executor(g).run([x])[0], sess.run(None, {"input": x})[0], rtol=1e-4, atol=1e-5)
