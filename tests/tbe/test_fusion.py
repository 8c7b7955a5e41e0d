"""The elementwise fusion pass and its TBE kernel: the graph before/after, and the fused graph's outputs against
the unfused graph's (our executor) and onnxruntime's."""
import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from opencann.compiler import om
from opencann.compiler.ir import TensorType
from opencann.compiler.passes.fuse_elementwise import fuse_elementwise
from opencann.compiler.passes.shape_inference import infer_shapes
from opencann.compiler.pipeline import PIPELINE, BuildOptions, compile_graph
from opencann.frontends.onnx import import_onnx
from opencann.runtime.executor import Executor
from opencann.tbe import fusion

RNG = np.random.default_rng(0)
F32, F16 = TensorProto.FLOAT, TensorProto.FLOAT16


def model(nodes, inputs, outputs, inits=(), opset=18) -> bytes:
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info(n, t, s) for n, t, s in inputs],
                              [helper.make_tensor_value_info(n, t, None) for n, t in outputs],
                              [numpy_helper.from_array(np.asarray(v), k) for k, v in inits])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)]).SerializeToString()


def fused(data: bytes, feeds: dict, rtol=1e-6, atol=1e-6):
    """The fused graph, after checking its outputs against the unfused graph's and onnxruntime's."""
    graph = fuse_elementwise(infer_shapes(import_onnx(data)), min_elements=1)
    graph.validate()
    got = Executor(graph).run(feeds)
    want = Executor(import_onnx(data)).run(feeds)
    peer = ort.InferenceSession(data, providers=["CPUExecutionProvider"]).run(None, feeds)
    for g, w, p in zip(got, want, peer, strict=True):
        assert g.dtype == w.dtype and g.shape == w.shape
        np.testing.assert_allclose(g, w, rtol=rtol, atol=atol)
        np.testing.assert_allclose(g.astype(np.float32), p.astype(np.float32), rtol=rtol, atol=atol)
    return graph


def ops(graph) -> list[str]:
    return [n.op for n in graph.nodes]


def body_ops(graph, i=0) -> list[str]:
    return ops([n for n in graph.nodes if n.op == fusion.OP][i].attrs["body"])


def test_chain_with_broadcasting_and_scalar_constants():
    nodes = [helper.make_node("Add", ["x", "b"], ["a"]), helper.make_node("Relu", ["a"], ["r"]),
             helper.make_node("Mul", ["r", "half"], ["m"]), helper.make_node("Tanh", ["m"], ["t"]),
             helper.make_node("Sub", ["t", "col"], ["y"])]
    inits = [("b", RNG.standard_normal(4).astype(np.float32)), ("half", np.float32(0.5)),
             ("col", RNG.standard_normal((3, 1)).astype(np.float32))]
    x = RNG.standard_normal((2, 3, 4)).astype(np.float32)
    graph = fused(model(nodes, [("x", F32, [2, 3, 4])], [("y", F32)], inits), {"x": x})
    assert ops(graph) == [fusion.OP] and body_ops(graph) == ["Add", "Relu", "Mul", "Tanh", "Sub"]
    node = graph.nodes[0]
    assert [v.name for v in node.inputs] == ["x", "b", "col"]  # the scalar 0.5 moved into the body
    assert [v.name for v in node.outputs] == ["y"] and graph.outputs[0] is node.outputs[0]


def test_dag_multi_output_next_to_non_fusible_ops():
    # a feeds MatMul (outside) and the group; c is a graph output that is also read inside; Sin has no mapping
    nodes = [helper.make_node("Mul", ["x", "y"], ["a"]), helper.make_node("Exp", ["a"], ["e"]),
             helper.make_node("Add", ["e", "x"], ["c"]), helper.make_node("Neg", ["c"], ["d"]),
             helper.make_node("MatMul", ["a", "w"], ["mm"]), helper.make_node("Add", ["mm", "e"], ["z"]),
             helper.make_node("Sin", ["d"], ["s"]), helper.make_node("Abs", ["s"], ["u"]),
             helper.make_node("Tanh", ["y"], ["p"]), helper.make_node("Mul", ["p", "d"], ["q"])]  # joins 2 groups
    feeds = {"x": RNG.standard_normal((3, 3)).astype(np.float32), "y": RNG.standard_normal((3, 3)).astype(np.float32)}
    data = model(nodes, [("x", F32, [3, 3]), ("y", F32, [3, 3])], [("c", F32), ("z", F32), ("u", F32), ("q", F32)],
                 [("w", RNG.standard_normal((3, 3)).astype(np.float32))])
    graph = fused(data, feeds)
    # Add(mm, e) cannot join the group: e -> Add would close a cycle through MatMul
    assert ops(graph) == [fusion.OP, "MatMul", "Add", "Sin", "Abs"]
    assert body_ops(graph) == ["Mul", "Exp", "Add", "Neg", "Tanh", "Mul"]
    assert [v.name for v in graph.nodes[0].outputs] == ["a", "e", "c", "d", "q"]
    assert ops(fuse_elementwise(graph, min_elements=1)) == ops(graph)  # idempotent


def test_layernorm_reductions_with_epilogue_and_dynamic_batch():
    nodes = [helper.make_node("ReduceMean", ["x", "axes"], ["mu"]), helper.make_node("Sub", ["x", "mu"], ["d"]),
             helper.make_node("Pow", ["d", "two"], ["sq"]), helper.make_node("ReduceMean", ["sq", "axes"], ["var"]),
             helper.make_node("Add", ["var", "eps"], ["ve"]), helper.make_node("Sqrt", ["ve"], ["sd"]),
             helper.make_node("Div", ["d", "sd"], ["n"]), helper.make_node("Mul", ["n", "g"], ["ng"]),
             helper.make_node("Add", ["ng", "beta"], ["y"])]
    inits = [("axes", np.array([-1], np.int64)), ("two", np.float32(2)), ("eps", np.float32(1e-5)),
             ("g", RNG.standard_normal(16).astype(np.float32)), ("beta", RNG.standard_normal(16).astype(np.float32))]
    data = model(nodes, [("x", F32, ["N", 5, 16])], [("y", F32)], inits)
    graph = fused(data, {"x": RNG.standard_normal((1, 5, 16)).astype(np.float32)}, rtol=1e-5, atol=1e-5)
    assert ops(graph) == [fusion.OP] and len(body_ops(graph)) == 9
    x = RNG.standard_normal((3, 5, 16)).astype(np.float32)  # another batch: the same node builds a second kernel
    peer = ort.InferenceSession(data, providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    np.testing.assert_allclose(Executor(graph).run({"x": x})[0], peer, rtol=1e-5, atol=1e-5)
    assert len(fusion.kernel_for(graph.nodes[0].attrs["body"]).kernels) == 2  # one per batch size


def test_float16_select_compare_cast_clip_and_activations():
    nodes = [helper.make_node("Less", ["x", "y"], ["lt"]), helper.make_node("Where", ["lt", "x", "y"], ["w"]),
             helper.make_node("Clip", ["w", "lo", "hi"], ["c"]), helper.make_node("LeakyRelu", ["c"], ["l"], alpha=0.2),
             helper.make_node("Sigmoid", ["l"], ["s"]), helper.make_node("Cast", ["s"], ["s32"], to=F32),
             helper.make_node("Erf", ["s32"], ["e"]), helper.make_node("Cast", ["e"], ["y16"], to=F16),
             helper.make_node("Max", ["y16", "x", "y"], ["m"])]
    inits = [("lo", np.float16(-1.5)), ("hi", np.float16(1.0))]
    feeds = {"x": RNG.standard_normal((4, 7)).astype(np.float16), "y": RNG.standard_normal((1, 7)).astype(np.float16)}
    graph = fused(model(nodes, [("x", F16, [4, 7]), ("y", F16, [1, 7])], [("m", F16)], inits), feeds,
                  rtol=2e-3, atol=2e-3)
    assert ops(graph) == [fusion.OP] and len(body_ops(graph)) == 9


def test_activations_composed_from_primitives_over_the_whole_range():
    """Erf (a float32 rational approximation), Gelu, Softplus and HardSigmoid against our reference kernels,
    including huge, infinite and NaN inputs."""
    nodes = [helper.make_node("Erf", ["x"], ["e"]), helper.make_node("Gelu", ["x"], ["g"]),
             helper.make_node("Gelu", ["x"], ["gt"], approximate="tanh"), helper.make_node("Softplus", ["x"], ["s"]),
             helper.make_node("HardSigmoid", ["x"], ["h"], alpha=0.3),
             helper.make_node("Sum", ["e", "g", "s", "gt", "h"], ["y"])]
    data = model(nodes, [("x", F32, [4004])], [("y", F32), ("e", F32), ("gt", F32), ("h", F32)], opset=20)
    x = np.concatenate([np.linspace(-12, 12, 4000), [np.inf, -np.inf, np.nan, 1e30]]).astype(np.float32)
    graph = fuse_elementwise(infer_shapes(import_onnx(data)), min_elements=1)
    assert ops(graph) == [fusion.OP]
    for got, want in zip(Executor(graph).run({"x": x}), Executor(import_onnx(data)).run({"x": x}), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)


def test_nothing_to_fuse_is_left_alone():
    nodes = [helper.make_node("Relu", ["x"], ["r"]), helper.make_node("Sin", ["r"], ["s"]),
             helper.make_node("Exp", ["s"], ["e"]), helper.make_node("Cast", ["e"], ["i"], to=TensorProto.INT32)]
    graph = infer_shapes(import_onnx(model(nodes, [("x", F32, [4])], [("i", TensorProto.INT32)])))
    before = ops(graph)
    assert ops(fuse_elementwise(graph, min_elements=1)) == before == ["Relu", "Sin", "Exp", "Cast"]
    nodes = [helper.make_node("Relu", ["x"], ["r"]), helper.make_node("Exp", ["r"], ["e"])]
    small = infer_shapes(import_onnx(model(nodes, [("x", F32, [4, 1000])], [("e", F32)])))
    assert ops(fuse_elementwise(small)) == ["Relu", "Exp"]  # below MIN_ELEMENTS: not worth a compile
    assert ops(fuse_elementwise(small, min_elements=4000)) == [fusion.OP]


def test_pipeline_runs_the_pass_and_om_round_trip(tmp_path):
    assert [name for name, _ in PIPELINE][-1] == "fuse_elementwise"
    nodes = [helper.make_node("Mul", ["x", "x"], ["sq"]), helper.make_node("Sigmoid", ["sq"], ["s"]),
             helper.make_node("Add", ["s", "x"], ["y"])]
    data = model(nodes, [("x", F32, ["N", 6])], [("y", F32)])
    compiled = compile_graph(import_onnx(data), BuildOptions())
    assert ops(compiled.graph) == [fusion.OP]
    compiled.graph.nodes[0].outputs[0].type = None  # the fused node's own inference, from its body
    assert infer_shapes(compiled.graph).outputs[0].type == TensorType(np.float32, ("N", 6))
    loaded = om.loads(om.dumps(compiled))
    x = RNG.standard_normal((2, 6)).astype(np.float32)
    expected = x * x
    expected = 1 / (1 + np.exp(-expected)) + x
    np.testing.assert_allclose(Executor(loaded.graph).run({"x": x})[0], expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("mode", ["force_fp16", "allow_mix_precision"])
def test_precision_modes_fuse_after_conversion(mode):
    nodes = [helper.make_node("MatMul", ["x", "w"], ["m"]), helper.make_node("Mul", ["m", "x"], ["a"]),
             helper.make_node("Tanh", ["a"], ["t"]), helper.make_node("Neg", ["t"], ["y"])]
    data = model(nodes, [("x", F32, ["N", 8])], [("y", F32)], [("w", RNG.standard_normal((8, 8)).astype(np.float32))])
    graph = compile_graph(import_onnx(data), BuildOptions(precision_mode=mode)).graph
    fused_ops = [n for n in graph.nodes if n.op == fusion.OP]
    assert len(fused_ops) == 1 and "Tanh" not in ops(graph)
    # the precision pass's casts join the group: fp16 -> fp32 at the end (force_fp16), after MatMul (mixed)
    expected = ["Mul", "Tanh", "Neg", "Cast"] if mode == "force_fp16" else ["Cast", "Mul", "Tanh", "Neg"]
    assert ops(fused_ops[0].attrs["body"]) == expected
    x = RNG.standard_normal((2, 8)).astype(np.float32)
    (y,) = Executor(graph).run({"x": x})
    want = ort.InferenceSession(data, providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    assert y.dtype == np.float32
    np.testing.assert_allclose(y, want, rtol=2e-2, atol=2e-2)
