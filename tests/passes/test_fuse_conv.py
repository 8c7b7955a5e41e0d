"""fuse_conv and to_channels_last: node lists before/after, outputs equal to the unfused graph and onnxruntime."""
import functools

import numpy as np
import onnxruntime as ort
import pytest
from onnx import helper, numpy_helper

from opencann.compiler.passes.fuse_conv import fuse_conv, to_channels_last
from opencann.compiler.passes.shape_inference import infer_shapes
from opencann.compiler.pipeline import BuildOptions, compile_graph
from opencann.frontends.onnx import import_onnx
from opencann.runtime import Executor
from tests.models import build
from tests.passes import const, model, ops

RNG = np.random.default_rng(3)
built = functools.cache(build)  # (ONNX bytes, input) of a test-sized CNN, exported once per session


def weights(name, shape):
    return const(name, RNG.standard_normal(shape) * 0.3)


def check(onnx_bytes, feeds, passes, before, after):
    """Run ``passes``; compare the node lists, and the outputs with the unoptimized graph and onnxruntime."""
    plain = infer_shapes(import_onnx(onnx_bytes))
    assert ops(plain) == before
    graph = infer_shapes(import_onnx(onnx_bytes))
    for p in passes:
        graph = p(graph)
    graph.validate()
    assert ops(graph) == after
    want = Executor(plain).run(feeds)
    got = Executor(graph).run(feeds)
    sess = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
    peer = sess.run(None, dict(zip([i.name for i in sess.get_inputs()], feeds, strict=True)))
    for g, w, p in zip(got, want, peer, strict=True):
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(g, p, rtol=1e-4, atol=1e-4)
    return graph


CONV = helper.make_node("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1])
CONV_INITS = [weights("w", (6, 4, 3, 3)), weights("b", (6,))]
X = [("x", [2, 4, 7, 6])]


def x_feed(shape=(2, 4, 7, 6)):
    return [RNG.standard_normal(shape).astype(np.float32)]


@pytest.mark.parametrize("act,attrs,alpha,beta", [
    ("Relu", {}, 0.0, 0.0), ("LeakyRelu", {"alpha": 0.2}, 0.2, 0.0), ("Sigmoid", {}, 0.0, 0.0),
    ("HardSigmoid", {"alpha": 0.25, "beta": 0.4}, 0.25, 0.4), ("HardSwish", {}, 0.0, 0.0)])
def test_conv_and_activation_become_one_fused_conv(act, attrs, alpha, beta):
    nodes = [CONV, helper.make_node(act, ["c"], ["y"], **attrs)]
    g = check(model(nodes, X, ["y"], CONV_INITS), x_feed(), [fuse_conv], ["Conv", act], ["opencann::FusedConv"])
    fused = g.nodes[0]
    assert (fused.attrs["activation"], fused.attrs["alpha"], fused.attrs["beta"]) == (act, pytest.approx(alpha),
                                                                                      pytest.approx(beta))
    assert [v.name for v in fused.inputs] == ["x", "w", "b"] and fused.outputs[0].name == "y"
    assert g.opsets["opencann"] == 1


def test_relu6_clip_with_constant_node_bounds_and_opset6_attributes():
    nodes = [CONV, helper.make_node("Constant", [], ["lo"], value=const("lo_t", 0.0)),
             helper.make_node("Constant", [], ["hi"], value=const("hi_t", 6.0)),
             helper.make_node("Clip", ["c", "lo", "hi"], ["y"])]
    g = check(model(nodes, X, ["y"], CONV_INITS), x_feed(), [fuse_conv], ["Conv", "Constant", "Constant", "Clip"],
              ["opencann::FusedConv"])
    assert (g.nodes[0].attrs["alpha"], g.nodes[0].attrs["beta"]) == (0.0, 6.0)
    nodes = [CONV, helper.make_node("Clip", ["c"], ["y"], max=0.5)]
    g = check(model(nodes, X, ["y"], CONV_INITS, opset=6), x_feed(), [fuse_conv], ["Conv", "Clip"],
              ["opencann::FusedConv"])
    assert g.nodes[0].attrs["beta"] == 0.5 and g.nodes[0].attrs["alpha"] == -np.inf


@pytest.mark.parametrize("order", [["c", "r"], ["r", "c"]])
def test_residual_add_and_relu_fuse_into_the_conv(order):
    nodes = [CONV, helper.make_node("Add", order, ["s"]), helper.make_node("Relu", ["s"], ["y"])]
    feeds = x_feed() + [RNG.standard_normal((2, 6, 7, 6)).astype(np.float32)]
    g = check(model(nodes, X + [("r", [2, 6, 7, 6])], ["y"], CONV_INITS), feeds, [fuse_conv],
              ["Conv", "Add", "Relu"], ["opencann::FusedConv"])
    assert [v.name for v in g.nodes[0].inputs] == ["x", "w", "b", "r"]
    assert g.nodes[0].attrs["activation"] == "Relu"


def test_residual_add_without_activation_and_conv_without_bias():
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]), helper.make_node("Add", ["c", "r"], ["y"])]
    feeds = x_feed() + [RNG.standard_normal((2, 6, 7, 6)).astype(np.float32)]
    g = check(model(nodes, X + [("r", [2, 6, 7, 6])], ["y"], CONV_INITS[:1]), feeds, [fuse_conv], ["Conv", "Add"],
              ["opencann::FusedConv"])
    assert [v.name if v is not None else None for v in g.nodes[0].inputs] == ["x", "w", None, "r"]
    assert g.nodes[0].attrs["activation"] == ""


def test_no_fusion_when_values_are_shared_broadcast_or_bounds_unknown():
    shared = [CONV, helper.make_node("Relu", ["c"], ["y"])]
    check(model(shared, X, ["y", "c"], CONV_INITS), x_feed(), [fuse_conv], ["Conv", "Relu"], ["Conv", "Relu"])
    broadcast = [CONV, helper.make_node("Add", ["c", "r"], ["y"])]
    feeds = x_feed() + [RNG.standard_normal((1, 6, 1, 1)).astype(np.float32)]
    check(model(broadcast, X + [("r", [1, 6, 1, 1])], ["y"], CONV_INITS), feeds, [fuse_conv], ["Conv", "Add"],
          ["Conv", "Add"])
    dynamic = [CONV, helper.make_node("Clip", ["c", "lo"], ["y"])]
    feeds = x_feed() + [np.array(0.1, np.float32)]
    check(model(dynamic, X + [("lo", [])], ["y"], CONV_INITS), feeds, [fuse_conv], ["Conv", "Clip"], ["Conv", "Clip"])


def test_two_convs_into_one_add_fuse_once():
    nodes = [CONV, helper.make_node("Conv", ["x", "w2"], ["d"], pads=[1, 1, 1, 1]),
             helper.make_node("Add", ["c", "d"], ["s"]), helper.make_node("Relu", ["s"], ["y"])]
    check(model(nodes, X, ["y"], CONV_INITS + [weights("w2", (6, 4, 3, 3))]), x_feed(), [fuse_conv],
          ["Conv", "Conv", "Add", "Relu"], ["Conv", "opencann::FusedConv"])


def block_model():
    """A 3-channel stem, then a channels-last chain: 3x3, depthwise, 1x1 + residual, and a MaxPool reading a
    chain value (it needs NCHW back)."""
    inits = [weights("ws", (8, 3, 3, 3)), weights("w1", (8, 8, 3, 3)), weights("b1", (8,)), weights("wd", (8, 1, 3, 3)),
             weights("wp", (8, 8, 1, 1))]
    nodes = [helper.make_node("Conv", ["x", "ws"], ["s"], pads=[1, 1, 1, 1], strides=[2, 2]),
             helper.make_node("Relu", ["s"], ["s1"]),
             helper.make_node("Conv", ["s1", "w1", "b1"], ["a"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["a"], ["a1"]),
             helper.make_node("Conv", ["a1", "wd"], ["d"], pads=[1, 1, 1, 1], group=8),
             helper.make_node("Clip", ["d", "lo", "hi"], ["d1"]),
             helper.make_node("Conv", ["d1", "wp"], ["p"]),
             helper.make_node("Add", ["p", "a1"], ["y"]),
             helper.make_node("MaxPool", ["a1"], ["m"], kernel_shape=[2, 2], strides=[2, 2])]
    return model(nodes, [("x", [2, 3, 12, 10])], ["y", "m"], inits + [const("lo", 0.0), const("hi", 6.0)])


def test_channels_last_chain_transposes_only_at_its_boundaries():
    g = check(block_model(), x_feed((2, 3, 12, 10)), [fuse_conv, functools.partial(to_channels_last, blocks=False)],
              ["Conv", "Relu", "Conv", "Relu", "Conv", "Clip", "Conv", "Add", "MaxPool"],
              ["Transpose", "opencann::FusedConv", "opencann::FusedConv", "Transpose", "opencann::FusedConv",
               "opencann::FusedConv", "Transpose", "MaxPool"])
    convs = [n for n in g.nodes if n.op == "FusedConv"]
    assert [n.attrs.get("channels_last", 0) for n in convs] == [1, 1, 1, 1]
    assert [v.name if v is not None else None for v in convs[3].inputs] == ["d1/nhwc", "Conv_6/W_hwcm", None,
                                                                          "a1/nhwc"]
    assert convs[0].inputs[1].const.shape == (3, 3, 3, 8) and convs[0].inputs[0].name == "x/nhwc"
    assert convs[3].inputs[1].const.shape == (1, 1, 8, 8) and convs[2].inputs[1].const.shape == (3, 3, 1, 8)
    assert convs[2].outputs[0].type.shape == (2, 6, 5, 8)
    assert [n.attrs["perm"][1] for n in g.nodes if n.op == "Transpose"] == [2, 3, 3]
    g = check(block_model(), x_feed((2, 3, 12, 10)), [fuse_conv, to_channels_last],
              ["Conv", "Relu", "Conv", "Relu", "Conv", "Clip", "Conv", "Add", "MaxPool"],
              ["Transpose", "opencann::FusedConv", "opencann::FusedConv", "Transpose",
               "opencann::FusedInvertedResidual", "Transpose", "MaxPool"])
    block = g.nodes[4]
    assert [v.name if v is not None else None for v in block.inputs] == ["a1/nhwc", None, None, "Conv_4/W_hwcm", None,
                                                                         "Conv_6/W_hwcm", None, "a1/nhwc"]
    assert block.attrs["activations"] == ["", "Clip", ""]


def test_channels_last_keeps_few_channel_depthwise_convs_nchw():
    nodes = [helper.make_node("Conv", ["x", "w"], ["y"], pads=[1, 1, 1, 1], group=3)]
    g = to_channels_last(infer_shapes(import_onnx(model(nodes, [("x", [1, 3, 5, 5])], ["y"],
                                                       [weights("w", (3, 1, 3, 3))]))))
    assert ops(g) == ["Conv"]


def test_channels_last_leaves_grouped_and_unknown_shapes_alone():
    nodes = [helper.make_node("Conv", ["x", "w"], ["y"], pads=[1, 1, 1, 1], group=2)]
    g = to_channels_last(infer_shapes(import_onnx(model(nodes, [("x", [1, 8, 5, 5])], ["y"],
                                                       [weights("w", (4, 4, 3, 3))]))))
    assert ops(g) == ["Conv"]
    nodes = [helper.make_node("Conv", ["x", "w"], ["y"], pads=[1, 1, 1, 1])]
    g = to_channels_last(import_onnx(model(nodes, [("x", [1, "c", 5, 5])], ["y"], [weights("w", (4, 8, 3, 3))])))
    assert ops(g) == ["Conv"]


def test_symbolic_batch_and_spatial_sizes_still_fuse_and_go_channels_last():
    nodes = [CONV, helper.make_node("Relu", ["c"], ["y"])]
    onnx_bytes = model(nodes, [("x", ["n", 8, "h", "w"])], ["y"], [weights("w", (6, 8, 3, 3)), weights("b", (6,))])
    g = check(onnx_bytes, x_feed((3, 8, 7, 5)), [fuse_conv, to_channels_last], ["Conv", "Relu"],
              ["Transpose", "opencann::FusedConv", "Transpose"])
    assert g.nodes[1].attrs["channels_last"] == 1 and g.nodes[1].outputs[0].type.shape[0] == "n"


@pytest.mark.parametrize("name", ["resnet", "mobilenet"])
def test_pipeline_runs_cnns_channels_last_and_matches_onnxruntime(name):
    onnx_bytes, x = built(name, 2)
    graph = compile_graph(import_onnx(onnx_bytes)).graph
    convs = [n for n in graph.nodes if n.op == "FusedConv"]
    assert convs and not any(n.op in ("Conv", "Relu", "Clip", "Add") for n in graph.nodes)
    assert all(n.attrs.get("channels_last", 0) for n in convs)
    # ResNet: input, MaxPool, GlobalAveragePool; MobileNetV2: the input only (its mean reads the NHWC output)
    assert sum(n.op == "Transpose" for n in graph.nodes) == (4 if name == "resnet" else 1)
    assert any(n.op == "FusedInvertedResidual" for n in graph.nodes) == (name == "mobilenet")
    sess = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
    want = sess.run(None, {sess.get_inputs()[0].name: x})[0]
    np.testing.assert_allclose(Executor(graph).run([x])[0], want, rtol=1e-4, atol=1e-4 * np.abs(want).max())


def test_pipeline_fuses_convs_in_fp32_and_mixed_modes_only():
    onnx_bytes, _ = built("resnet", 2)
    for mode, fused in (("allow_mix_precision", True), ("allow_mix_precision_bf16", True), ("force_fp16", False)):
        graph = compile_graph(import_onnx(onnx_bytes), BuildOptions(precision_mode=mode)).graph
        assert any(n.op == "FusedConv" for n in graph.nodes) == fused, mode


def test_fused_graph_survives_the_om_file():
    from opencann.compiler import om

    nodes = [CONV, helper.make_node("Clip", ["c"], ["y"], max=0.5)]
    onnx_bytes = model(nodes, [("x", [2, 4, 7, 6])], ["y"], CONV_INITS, opset=6)
    compiled = compile_graph(import_onnx(onnx_bytes))
    assert ops(compiled.graph) == ["opencann::FusedConv"]
    loaded = om.loads(om.dumps(compiled))
    assert loaded.graph.nodes[0].attrs["alpha"] == -np.inf
    feeds = x_feed()
    np.testing.assert_array_equal(Executor(loaded.graph).run(feeds)[0], Executor(compiled.graph).run(feeds)[0])


def inverted_residual_model(stride=1, shared=False):
    """x -> 1x1 expand + Relu6 -> depthwise 3x3 + Relu6 -> 1x1 project (+ x at stride 1); ``shared``: the
    expansion is also a graph output."""
    inits = [weights("we", (24, 8, 1, 1)), weights("be", (24,)), weights("wd", (24, 1, 3, 3)), weights("bd", (24,)),
             weights("wp", (8, 24, 1, 1)), const("lo", 0.0), const("hi", 6.0)]
    nodes = [helper.make_node("Conv", ["x", "we", "be"], ["e"]),
             helper.make_node("Clip", ["e", "lo", "hi"], ["e1"]),
             helper.make_node("Conv", ["e1", "wd", "bd"], ["d"], pads=[1, 1, 1, 1], strides=[stride, stride], group=24),
             helper.make_node("Clip", ["d", "lo", "hi"], ["d1"]),
             helper.make_node("Conv", ["d1", "wp"], ["p"])]
    if stride == 1:
        nodes.append(helper.make_node("Add", ["p", "x"], ["y"]))
    out = "y" if stride == 1 else "p"
    return model(nodes, [("x", [2, 8, 13, 11])], [out, "e1"] if shared else [out], inits)


@pytest.mark.parametrize("stride", [1, 2])
def test_inverted_residual_chain_becomes_one_fused_block(stride):
    convs = ["Conv", "Clip", "Conv", "Clip", "Conv"] + (["Add"] if stride == 1 else [])
    g = check(inverted_residual_model(stride), x_feed((2, 8, 13, 11)), [fuse_conv, to_channels_last], convs,
              ["Transpose", "opencann::FusedInvertedResidual", "Transpose"])
    block = g.nodes[1]
    assert [v.name if v is not None else None for v in block.inputs] == (
        ["x/nhwc", "Conv_0/W_hwcm", "be", "Conv_2/W_hwcm", "bd", "Conv_4/W_hwcm"] + ([None, "x/nhwc"] if stride == 1
                                                                                  else []))
    assert block.attrs["activations"] == ["Clip", "Clip", ""] and block.attrs["betas"][:2] == [6.0, 6.0]
    assert block.attrs["strides"] == [stride, stride]
    assert block.outputs[0].type.shape == ((2, 13, 11, 8) if stride == 1 else (2, 7, 6, 8))


def test_inverted_residual_with_a_shared_expansion_fuses_without_it():
    g = check(inverted_residual_model(shared=True), x_feed((2, 8, 13, 11)), [fuse_conv, to_channels_last],
              ["Conv", "Clip", "Conv", "Clip", "Conv", "Add"],
              ["Transpose", "opencann::FusedConv", "Transpose", "opencann::FusedInvertedResidual", "Transpose"])
    assert g.nodes[3].inputs[0].name == "e1/nhwc" and g.nodes[3].inputs[1] is None


@pytest.mark.parametrize("shared", [False, True])  # shared: the block has no expansion (None inputs)
def test_fused_block_survives_the_om_file(shared):
    from opencann.compiler import om

    compiled = compile_graph(import_onnx(inverted_residual_model(shared=shared)))
    assert "opencann::FusedInvertedResidual" in ops(compiled.graph)
    loaded = om.loads(om.dumps(compiled))
    feeds = x_feed((2, 8, 13, 11))
    for got, want in zip(Executor(loaded.graph).run(feeds), Executor(compiled.graph).run(feeds), strict=True):
        np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("opset,keepdims", [(17, 0), (18, 0), (17, 1)])
def test_spatial_mean_of_a_chain_reads_its_nhwc_output(opset, keepdims):
    nodes = [CONV, helper.make_node("Relu", ["c"], ["r"])]
    inits = [weights("w", (6, 8, 3, 3)), weights("b", (6,))]
    if opset >= 18:
        nodes.append(helper.make_node("ReduceMean", ["r", "axes"], ["y"], keepdims=keepdims))
        inits.append(numpy_helper.from_array(np.array([-1, 2], np.int64), "axes"))
    else:
        nodes.append(helper.make_node("ReduceMean", ["r"], ["y"], axes=[3, 2], keepdims=keepdims))
    after = ["Transpose", "opencann::FusedConv"] + (["ReduceMean"] if not keepdims else ["Transpose", "ReduceMean"])
    g = check(model(nodes, [("x", [2, 8, 7, 6])], ["y"], inits, opset=opset), x_feed((2, 8, 7, 6)),
              [fuse_conv, to_channels_last], ["Conv", "Relu", "ReduceMean"], after)
    mean = g.nodes[-1]
    assert mean.inputs[0].name == ("r/nhwc" if not keepdims else "r")
    if not keepdims:
        assert (mean.inputs[1].const.tolist() if opset >= 18 else mean.attrs["axes"]) == [1, 2]
