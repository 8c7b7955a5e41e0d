"""fuse_tf_conv: a TFConv's bias (+Relu) group folds into the conv, and a larger group's bias Add moves into it,
with the results within rounding; a pre-activation value read elsewhere, or a bias of the wrong shape, keeps the
graph as it was."""
import numpy as np
import pytest

from opencann.compiler.ir import Graph, Node, TensorType, Value
from opencann.compiler.passes.fuse_tf_conv import fuse_tf_conv
from opencann.compiler.passes.shape_inference import infer_shapes
from opencann.compiler.pipeline import compile_graph
from opencann.ops import cpu_tf
from opencann.runtime import Executor
from tests.passes import F32

RNG = np.random.default_rng(0)
CONV = dict(strides=[1, 1, 1, 1], padding="VALID", dilations=[1, 1, 1, 1], explicit_paddings=[], data_format="NHWC")


def conv_bias(relu: bool, extra_reader: bool = False, bias_shape=(16,), channels: int = 1) -> Graph:
    """``TFConv(x, w) + b`` (then Relu) as the TF importer emits a Keras Conv2D, optionally with the conv's
    output read by another node too."""
    x = Value("x", TensorType(F32, (4, 18, 18, channels)))
    w = Value("w", TensorType(F32, (3, 3, channels, 16)))
    b = Value("b", TensorType(F32, bias_shape))
    conv, add, act, r = Value("conv"), Value("add"), Value("act"), Value("r")
    nodes = [Node("TFConv", [x, w], [conv], CONV, domain="opencann"), Node("Add", [conv, b], [add])]
    outputs = [add]
    if relu:
        nodes.append(Node("Relu", [add], [act]))
        outputs = [act]
    if extra_reader:
        nodes.append(Node("ReduceSum", [conv], [r], {"keepdims": 0}))
        outputs.append(r)
    return infer_shapes(Graph(inputs=[x, w, b], outputs=outputs, nodes=nodes, opsets={"": 17, "opencann": 1}))


def feeds(channels: int = 1, bias_shape=(16,)) -> dict:
    return {"x": RNG.standard_normal((4, 18, 18, channels)).astype(np.float32),
            "w": RNG.standard_normal((3, 3, channels, 16)).astype(np.float32),
            "b": RNG.standard_normal(bias_shape).astype(np.float32)}


def ops(graph: Graph) -> list[str]:
    return [n.op for n in graph.nodes]


@pytest.mark.parametrize("relu", [True, False])
@pytest.mark.parametrize("direct", [True, False])
def test_bias_and_relu_fold_into_the_conv(relu, direct, monkeypatch):
    monkeypatch.setattr(cpu_tf, "WIDE_VECTORS", direct)  # the direct kernel (bias first) or im2col (bias after)
    data = feeds()
    graph = compile_graph(conv_bias(relu)).graph
    assert ops(graph) == ["TFConv", "FusedElementwise" if relu else "Add"]
    want = Executor(graph).run(data)
    fused = fuse_tf_conv(compile_graph(conv_bias(relu)).graph)
    assert ops(fused) == ["TFConv"]
    conv = fused.nodes[0]
    assert [v.name for v in conv.inputs] == ["x", "w", "b"] and conv.attrs["relu"] == int(relu)
    assert conv.outputs[0] is fused.outputs[0] and conv.outputs[0].producer is conv
    got = Executor(fused).run(data)
    for g, e in zip(got, want, strict=True):
        np.testing.assert_allclose(g, e, rtol=1e-5, atol=1e-5 * np.abs(e).max())
    assert (got[0].min() == 0) == relu
    if not direct:
        np.testing.assert_array_equal(got[0], want[0])  # the im2col path adds after the GEMM, as BiasAdd


@pytest.mark.parametrize("graph", [lambda: conv_bias(True, extra_reader=True),
                                   lambda: conv_bias(True, bias_shape=(1, 1, 1, 16))],
                         ids=["read_elsewhere", "4d_bias"])
def test_graphs_it_cannot_fold_stay_as_they_were(graph):
    before = compile_graph(graph()).graph
    names = [(n.op, [v.name for v in n.inputs]) for n in before.nodes]
    assert [(n.op, [v.name for v in n.inputs]) for n in fuse_tf_conv(before).nodes] == names
    assert all(len(n.inputs) == 2 for n in before.nodes if n.op == "TFConv")


@pytest.mark.parametrize("return_sum", [True, False])
def test_a_statistics_group_gives_its_bias_add_to_the_conv(return_sum):
    """``mean(conv + b)`` and ``conv + b - mean`` in one group (a batch norm's statistics): the Add and the bias
    input leave the group; where the group returned the sum, the conv produces that value now."""
    def build():
        graph = conv_bias(False, channels=3)
        add = graph.outputs[0]
        mean, d = Value("mean"), Value("d")
        graph.nodes += [Node("ReduceMean", [add], [mean], {"axes": [0, 1, 2], "keepdims": 1}),
                        Node("Sub", [add, mean], [d])]
        graph.outputs = [add, d, mean] if return_sum else [d, mean]
        return infer_shapes(graph)

    data = feeds(channels=3)
    before = compile_graph(build()).graph
    assert ops(before) == ["TFConv", "FusedElementwise"] and len(before.nodes[1].inputs) == 2
    want = Executor(before).run(data)
    fused = fuse_tf_conv(compile_graph(build()).graph)
    conv, group = fused.nodes
    assert (conv.op, len(conv.inputs), conv.attrs["relu"]) == ("TFConv", 3, 0)
    assert group.inputs == [conv.outputs[0]] and [n.op for n in group.attrs["body"].nodes] == ["ReduceMean", "Sub"]
    assert (conv.outputs[0] is fused.outputs[0]) == return_sum and len(group.outputs) == 2
    got = Executor(fused).run(data)
    for g, e in zip(got, want, strict=True):
        np.testing.assert_allclose(g, e, rtol=1e-5, atol=1e-5 * np.abs(e).max())


def filter_and_bias_grads(order: str, read_between: bool = False) -> Graph:
    """``ConvBackpropFilter(x, sizes, dy)`` and ``BiasAddGrad(dy)`` (``order``: which comes first), and optionally a
    node between them reading the bias gradient."""
    x, dy = Value("x", TensorType(F32, (4, 10, 10, 3))), Value("dy", TensorType(F32, (4, 8, 8, 16)))
    sizes = Value("sizes", const=np.array([3, 3, 3, 16], np.int32))
    dw, db, twice = Value("dw"), Value("db"), Value("twice")
    filter_grad = Node("ConvBackpropFilter", [x, sizes, dy], [dw], CONV, domain="opencann")
    bias_grad = Node("BiasAddGrad", [dy], [db], {"data_format": "NHWC"}, domain="opencann")
    nodes = [filter_grad, bias_grad] if order == "filter_first" else [bias_grad, filter_grad]
    if read_between:
        nodes.insert(1, Node("Add", [db, db], [twice]))
    return infer_shapes(Graph(inputs=[x, dy], outputs=[dw, db] + ([twice] if read_between else []), nodes=nodes,
                              initializers=[sizes], opsets={"": 17, "opencann": 1}))


@pytest.mark.parametrize("order", ["filter_first", "bias_first"])
def test_a_bias_gradient_joins_its_filter_gradient(order):
    data = {"x": RNG.standard_normal((4, 10, 10, 3)).astype(np.float32),
            "dy": RNG.standard_normal((4, 8, 8, 16)).astype(np.float32)}
    want = Executor(filter_and_bias_grads(order)).run(data)
    fused = fuse_tf_conv(filter_and_bias_grads(order))
    assert ops(fused) == ["ConvBackpropFilter"] and fused.nodes[0].attrs["bias_grad"] == 1
    assert [v.name for v in fused.nodes[0].outputs] == ["dw", "db"]
    got = Executor(fused).run(data)
    np.testing.assert_array_equal(got[0], want[0])
    np.testing.assert_allclose(got[1], want[1], rtol=1e-5)


@pytest.mark.parametrize("order", ["filter_first", "bias_first"])
def test_a_bias_gradient_read_before_its_filter_gradient_can_run_joins_where_it_can(order):
    """Bias gradient first and read before the filter gradient: the filter gradient moves up to it (its inputs are
    graph inputs); filter gradient first: the joint node stays first."""
    fused = fuse_tf_conv(filter_and_bias_grads(order, read_between=True))
    assert ops(fused) == ["ConvBackpropFilter", "Add"]
    fused.validate()


def test_a_bias_gradient_read_before_its_filter_gradients_inputs_exist_stays_apart():
    graph = filter_and_bias_grads("bias_first", read_between=True)
    x0, conv = Value("x0", graph.inputs[0].type), graph.nodes[-1]
    graph.inputs[0] = x0
    graph.nodes.insert(2, Node("Relu", [x0], [conv.inputs[0]]))  # x is made after the bias gradient's reader
    graph.validate()
    before = ops(graph)
    assert ops(fuse_tf_conv(graph)) == before and "bias_grad" not in graph.nodes[-1].attrs
