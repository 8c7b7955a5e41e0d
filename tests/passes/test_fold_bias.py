"""Bias folding: per-channel Add/Sub/Mul/Div after Conv into its weights and bias; MatMul + Add -> Gemm."""
import numpy as np
import pytest

from opencann.compiler.ir import Graph, Node, TensorType, Value
from opencann.compiler.passes.dead_code import eliminate_dead_code
from opencann.compiler.passes.fold_bias import fold_bias
from opencann.compiler.passes.shape_inference import infer_shapes
from tests.passes import F32, check_pass

RNG = np.random.default_rng(0)
X4 = RNG.standard_normal((2, 4, 5, 5)).astype(np.float32)


def conv_graph(op: str, epilogue: list, bias: bool = True, group: int = 1) -> Graph:
    """x -> op(x, W[, B]) -> epilogue (op name, constant, constant first?)... -> Relu."""
    rng = np.random.default_rng(1)
    w_shape = (6, 4 // group, 3, 3) if op == "Conv" else (4, 6 // group, 3, 3)
    x = Value("x", TensorType(F32, (2, 4, 5, 5)))
    consts = [Value("W", const=rng.standard_normal(w_shape).astype(np.float32))]
    if bias:
        consts.append(Value("B", const=rng.standard_normal(6).astype(np.float32)))
    h = Value("h")
    nodes = [Node(op, [x, *consts], [h], {"pads": [1, 1, 1, 1], "group": group}, name="conv")]
    for i, (e, c, first) in enumerate(epilogue):
        cv = Value(f"c{i}", const=np.asarray(c, np.float32))
        consts.append(cv)
        out = Value(f"e{i}")
        nodes.append(Node(e, [cv, h] if first else [h, cv], [out], name=f"e{i}"))
        h = out
    nodes.append(Node("Relu", [h], [Value("y")], name="relu"))
    return infer_shapes(Graph(inputs=[x], outputs=[nodes[-1].outputs[0]], nodes=nodes, initializers=consts,
                              opsets={"": 17}))


def run(g: Graph) -> Graph:
    return eliminate_dead_code(fold_bias(g))


C6 = RNG.standard_normal(6).astype(np.float32)
POSITIVE = RNG.random(6).astype(np.float32) + 0.5


@pytest.mark.parametrize("op,epilogue,bias,group,ops", [
    ("Conv", [("Add", C6.reshape(1, 6, 1, 1), False)], True, 1, ["Conv", "Relu"]),
    ("Conv", [("Add", C6.reshape(6, 1, 1), True)], False, 1, ["Conv", "Relu"]),
    ("Conv", [("Sub", C6.reshape(6, 1, 1), False)], True, 2, ["Conv", "Relu"]),
    ("Conv", [("Mul", POSITIVE.reshape(6, 1, 1), True), ("Add", C6.reshape(6, 1, 1), False)], True, 1,
     ["Conv", "Relu"]),
    ("Conv", [("Div", POSITIVE.reshape(1, 6, 1, 1), False), ("Add", [0.5], False)], False, 2, ["Conv", "Relu"]),
    ("ConvTranspose", [("Add", C6.reshape(1, 6, 1, 1), True)], True, 2, ["ConvTranspose", "Relu"]),
    ("ConvTranspose", [("Mul", POSITIVE.reshape(6, 1, 1), True)], True, 1, ["ConvTranspose", "Mul", "Relu"]),
    ("Conv", [("Add", RNG.standard_normal((1, 1, 5, 5)), False)], True, 1, ["Conv", "Add", "Relu"]),  # per pixel
    ("Conv", [("Sub", C6.reshape(6, 1, 1), True)], True, 1, ["Conv", "Sub", "Relu"]),  # c - conv
])
def test_conv_epilogues(op, epilogue, bias, group, ops):
    check_pass(lambda: conv_graph(op, epilogue, bias, group), run, {"x": X4}, ops, rtol=1e-5)


def test_a_conv_read_elsewhere_keeps_its_epilogue():
    g = conv_graph("Conv", [("Add", C6.reshape(6, 1, 1), False)])
    g.outputs.append(g.nodes[0].outputs[0])
    assert [n.op for n in run(g).nodes] == ["Conv", "Add", "Relu"]


def matmul_graph(x_shape, producer: str = "MatMul", first: bool = True, c_shape=(3,)) -> Graph:
    rng = np.random.default_rng(2)
    x = Value("x", TensorType(F32, x_shape))
    w = Value("W", const=rng.standard_normal((5, 3)).astype(np.float32))
    b = Value("b", const=rng.standard_normal(c_shape).astype(np.float32))
    h, y = Value("h"), Value("y")
    attrs = {"alpha": 0.5} if producer == "Gemm" else {}
    nodes = [Node(producer, [x, w], [h], attrs), Node("Add", [b, h] if first else [h, b], [y])]
    return infer_shapes(Graph(inputs=[x], outputs=[y], nodes=nodes, initializers=[w, b], opsets={"": 17}))


@pytest.mark.parametrize("x_shape,producer,first,c_shape,ops", [
    ((4, 5), "MatMul", True, (3,), ["Gemm"]),
    ((4, 5), "MatMul", False, (1, 3), ["Gemm"]),
    ((4, 5), "Gemm", False, (1,), ["Gemm"]),
    ((4, 5), "MatMul", True, (4, 3), ["MatMul", "Add"]),  # a full matrix: not a bias
    ((2, 4, 5), "MatMul", True, (3,), ["MatMul", "Add"]),  # 3-D: left to the Gemm-epilogue fusion
])
def test_matmul_bias(x_shape, producer, first, c_shape, ops):
    x = RNG.standard_normal(x_shape).astype(np.float32)
    after = check_pass(lambda: matmul_graph(x_shape, producer, first, c_shape), run, {"x": x}, ops, rtol=1e-5)
    assert [v.name for v in after.outputs] == ["y"]
