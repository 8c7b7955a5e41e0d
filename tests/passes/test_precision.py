"""Mixed precision over the fused operators: FusedGemm/FusedMatMul epilogues, opencann::Attention and FusedConv get
low-precision matrix operands and keep float32 epilogues, softmax and norms; results within the precision
tests' tolerance of float32 (and really different)."""
import numpy as np
import pytest

from opencann.compiler import pipeline
from opencann.compiler.passes.fuse_conv import fuse_conv, to_channels_last
from opencann.compiler.passes.fuse_patterns import fuse_patterns
from opencann.compiler.pipeline import BuildOptions, compile_graph
from opencann.frontends.onnx import import_onnx
from opencann.runtime import Executor
from tests.models import build
from tests.passes import ops

MODES = ["allow_mix_precision", "allow_mix_precision_bf16"]
FUSE_ALWAYS = {"fuse_conv": lambda g, o: to_channels_last(fuse_conv(g)), "fuse_patterns": lambda g, o: fuse_patterns(g)}


def mixed(onnx_bytes: bytes, mode: str):
    """Compiled in ``mode`` with the conv and GEMM-epilogue fusions on (as the pipeline will run them)."""
    saved = list(pipeline.PIPELINE)
    pipeline.PIPELINE[:] = [(name, FUSE_ALWAYS.get(name, fn)) for name, fn in saved]
    try:
        return compile_graph(import_onnx(onnx_bytes), BuildOptions(precision_mode=mode)).graph
    finally:
        pipeline.PIPELINE[:] = saved


def close_but_lower(graph, onnx_bytes, x):
    fp32 = Executor(import_onnx(onnx_bytes)).run([x])[0]
    y = Executor(graph).run([x])[0]
    assert y.dtype == np.float32
    assert np.linalg.norm(y - fp32) <= 1e-2 * np.linalg.norm(fp32)
    assert not np.array_equal(y, fp32)  # it really ran in lower precision


def float32_everywhere_but_casts(graph, low):
    """Only Casts and unfused matrix operators make ``low`` values; every fused operator's operands are rounded."""
    low_values = {v.name for n in graph.nodes for v in n.outputs if v.type is not None and v.type.dtype == low}
    assert all(n.op in ("Cast", "Gemm", "MatMul") for n in graph.nodes if any(v.name in low_values for v in n.outputs))
    consts = {v.name: v.const for v in graph.initializers}
    for n in graph.nodes:
        if n.op in ("FusedMatMul", "FusedGemm", "FusedConv"):
            for v in n.inputs[:2]:
                rounded = consts[v.name] if v.name in consts else None
                if rounded is not None:
                    np.testing.assert_array_equal(rounded, rounded.astype(low).astype(np.float32))
                else:
                    assert v.producer.op == "Cast" and v.producer.inputs[0].name in low_values


@pytest.mark.parametrize("mode", MODES)
def test_mlp_gemm_epilogue(mode):
    m, x = build("mlp", batch=4)
    g = mixed(m, mode)
    assert ops(g).count("opencann::FusedGemm") == 1 and ops(g).count("Gemm") == 1  # Gemm+Relu, Gemm
    float32_everywhere_but_casts(g, np.dtype("float16" if mode == MODES[0] else "bfloat16"))
    close_but_lower(g, m, x)


@pytest.mark.parametrize("mode", MODES)
def test_transformer_attention_and_epilogues(mode):
    m, x = build("transformer", batch=2)
    g = mixed(m, mode)
    names = ops(g)
    assert names.count("opencann::Attention") == 2 and names.count("opencann::FusedMatMul") == 8
    assert names.count("opencann::SkipLayerNormalization") == 4
    low = np.dtype("float16" if mode == MODES[0] else "bfloat16")
    assert all(n.attrs["low"] == (10 if mode == MODES[0] else 16) for n in g.nodes if n.op == "Attention")
    float32_everywhere_but_casts(g, low)
    close_but_lower(g, m, x)


def test_resnet_fused_conv():
    m, x = build("resnet", batch=1)
    g = mixed(m, MODES[0])
    assert "opencann::FusedConv" in ops(g) and "Conv" not in ops(g)
    float32_everywhere_but_casts(g, np.dtype("float16"))
    close_but_lower(g, m, x)


def test_attention_in_float16():
    m, x = build("transformer", batch=2)
    g = compile_graph(import_onnx(m), BuildOptions(precision_mode="force_fp16")).graph
    attention = [n for n in g.nodes if n.op == "Attention"]
    assert len(attention) == 2 and all(n.inputs[0].type.dtype == np.float16 for n in attention)
    close_but_lower(g, m, x)
