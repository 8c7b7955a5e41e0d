"""Elementwise fusion inside loop bodies (once per iteration, so small groups are fused too) and of TensorFlow's
gradient operators: the graph before/after, and the fused graph's outputs against the unfused graph's (our
executor), onnxruntime's and NumPy's."""
import numpy as np
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from opencann.compiler.ir import Graph, Node, TensorType, Value
from opencann.compiler.passes.fuse_elementwise import fuse_elementwise
from opencann.compiler.passes.shape_inference import infer_shapes
from opencann.frontends.onnx import import_onnx
from opencann.runtime.executor import Executor
from opencann.tbe import fusion

RNG = np.random.default_rng(0)
F32 = TensorProto.FLOAT


def lstm_loop() -> bytes:
    """A Loop whose body is an LSTM-like cell on [4, 8] (gates from the carried h and a captured weight), plus a
    carried float scalar counter; scans out h."""
    v = helper.make_tensor_value_info
    body_nodes = [helper.make_node("MatMul", ["h", "w"], ["z"]),
                  helper.make_node("Sigmoid", ["z"], ["i"]), helper.make_node("Tanh", ["z"], ["g"]),
                  helper.make_node("Mul", ["i", "g"], ["ig"]), helper.make_node("Mul", ["i", "c"], ["ic"]),
                  helper.make_node("Add", ["ig", "ic"], ["c2"]), helper.make_node("Tanh", ["c2"], ["tc"]),
                  helper.make_node("Mul", ["i", "tc"], ["h2"]), helper.make_node("Identity", ["h2"], ["hs"]),
                  helper.make_node("Add", ["s", "one"], ["s1"]), helper.make_node("Mul", ["s1", "one"], ["s2"]),
                  helper.make_node("Identity", ["cond"], ["cond_out"])]
    body = helper.make_graph(body_nodes, "cell",
                             [v("iter", TensorProto.INT64, []), v("cond", TensorProto.BOOL, []), v("h", F32, [4, 8]),
                              v("c", F32, [4, 8]), v("s", F32, [])],
                             [v("cond_out", TensorProto.BOOL, []), v("h2", F32, [4, 8]), v("c2", F32, [4, 8]),
                              v("s2", F32, []), v("hs", F32, [4, 8])],
                             [numpy_helper.from_array(np.float32(1.0), "one")])
    nodes = [helper.make_node("Loop", ["M", "", "h0", "c0", "s0"], ["h", "c", "s", "hs"], body=body)]
    graph = helper.make_graph(nodes, "g", [v("h0", F32, [4, 8]), v("c0", F32, [4, 8]), v("s0", F32, [])],
                              [v(n, F32, None) for n in ("h", "c", "s", "hs")],
                              [numpy_helper.from_array(np.int64(5), "M"),
                               numpy_helper.from_array(RNG.standard_normal((8, 8)).astype(np.float32), "w")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]).SerializeToString()


def typed(data: bytes) -> Graph:
    """The imported loop model with its body's carried values typed (as the TF importer types them)."""
    graph = import_onnx(data)
    for v, shape in zip(graph.nodes[0].attrs["body"].inputs[2:], ((4, 8), (4, 8), ()), strict=True):
        v.type = TensorType(np.float32, shape)
    return infer_shapes(graph)


def test_loop_body_cell_becomes_one_kernel_scalars_stay():
    data = lstm_loop()
    graph = fuse_elementwise(typed(data))  # default threshold: bodies fuse below it
    graph.validate()
    body = graph.nodes[0].attrs["body"]
    fused = [n for n in body.nodes if n.op == fusion.OP]
    assert len(fused) == 1
    assert [n.op for n in fused[0].attrs["body"].nodes] == ["Sigmoid", "Tanh", "Mul", "Mul", "Add", "Tanh", "Mul",
                                                         "Identity"]
    assert sorted(n.op for n in body.nodes if n.op != fusion.OP) == ["Add", "Identity", "MatMul", "Mul"]
    feeds = {"h0": RNG.standard_normal((4, 8)).astype(np.float32), "c0": RNG.standard_normal((4, 8)).astype(np.float32),
             "s0": np.array(2.0, np.float32)}
    got = Executor(graph).run(feeds)
    want = Executor(import_onnx(data)).run(feeds)
    peer = ort.InferenceSession(data, providers=["CPUExecutionProvider"]).run(None, feeds)
    for g, w, p in zip(got, want, peer, strict=True):
        assert g.shape == w.shape and g.dtype == w.dtype
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(g, p, rtol=1e-5, atol=1e-6)
    assert got[2] == 7.0 and got[3].shape == (5, 4, 8)


def test_one_off_graph_keeps_its_threshold_and_fused_bodies_are_not_refused():
    nodes = [helper.make_node("Relu", ["x"], ["r"]), helper.make_node("Exp", ["r"], ["e"])]
    v = helper.make_tensor_value_info
    data = helper.make_model(helper.make_graph(nodes, "g", [v("x", F32, [4, 8])], [v("e", F32, None)]),
                             opset_imports=[helper.make_opsetid("", 18)]).SerializeToString()
    assert [n.op for n in fuse_elementwise(infer_shapes(import_onnx(data))).nodes] == ["Relu", "Exp"]
    graph = fuse_elementwise(typed(lstm_loop()))
    again = fuse_elementwise(graph)  # idempotent: a fused node's body is never fused again
    body = again.nodes[0].attrs["body"]
    assert [n.op for n in body.nodes].count(fusion.OP) == 1
    assert all(n.op != fusion.OP for n in [n for n in body.nodes if n.op == fusion.OP][0].attrs["body"].nodes)


def test_tensorflow_gradient_ops_fuse_with_unknown_output_shapes():
    """SigmoidGrad and TanhGrad (no shape inference: output shapes unknown) join the group around them."""
    t = TensorType(np.float32, (3, 5))
    y, dy, acc = Value("y", t), Value("dy", t), Value("acc", t)
    sg, tg = Value("sg", TensorType(np.float32)), Value("tg", TensorType(np.float32))  # shapes unknown
    s, out = Value("s", t), Value("o", t)
    nodes = [Node("SigmoidGrad", [y, dy], [sg], domain="opencann"), Node("TanhGrad", [y, sg], [tg], domain="opencann"),
             Node("Sum", [acc, tg], [s]), Node("Mul", [s, y], [out])]

    def graph():
        return Graph(inputs=[y, dy, acc], outputs=[out], nodes=list(nodes), opsets={"": 18, "opencann": 1})

    feeds = {"y": RNG.uniform(-1, 1, (3, 5)).astype(np.float32), "dy": RNG.standard_normal((3, 5)).astype(np.float32),
             "acc": RNG.standard_normal((3, 5)).astype(np.float32)}
    want = Executor(graph()).run(feeds)[0]
    fused = fuse_elementwise(graph(), min_elements=1)
    assert [n.op for n in fused.nodes] == [fusion.OP] and sg.type.shape == (3, 5)
    assert [n.op for n in fused.nodes[0].attrs["body"].nodes] == ["SigmoidGrad", "TanhGrad", "Sum", "Mul"]
    got = Executor(fused).run(feeds)[0]
    yy, d = feeds["y"], feeds["dy"]
    numpy = (feeds["acc"] + d * yy * (1 - yy) * (1 - yy * yy)) * yy
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(got, numpy, rtol=1e-5, atol=1e-6)


def test_views_take_the_compiled_path_as_copies():
    """A Split's columns (not C-contiguous) feed the fused kernel's compiled function, not the checked call."""
    t = TensorType(np.float32, (4, 3))
    a, b, s, y = Value("a", t), Value("b", t), Value("s", t), Value("y", t)
    graph = Graph(inputs=[a, b], outputs=[y], nodes=[Node("Sigmoid", [a], [s]), Node("Mul", [s, b], [y])],
                  opsets={"": 18})
    kernel = fusion.kernel_for(fuse_elementwise(graph, min_elements=1).nodes[0].attrs["body"])
    wide = RNG.standard_normal((4, 6)).astype(np.float32)
    x, z = wide[:, :3], wide[:, 3:]
    want = 1 / (1 + np.exp(-x)) * z
    np.testing.assert_allclose(kernel(x, z), want, rtol=1e-6, atol=1e-6)
    (key, (checked, compiled, types)), = kernel.kernels.items()
    assert compiled is not None
    kernel.kernels[key] = (None, compiled, types)  # the checked call is gone: views must not need it
    np.testing.assert_allclose(kernel(x, z), want, rtol=1e-6, atol=1e-6)
