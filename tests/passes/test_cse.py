"""Common-subexpression elimination: duplicate nodes and initializers merged, unsafe ones kept."""
import numpy as np
from onnx import TensorProto

from opencann.compiler.ir import Graph, Node, TensorType, Value
from opencann.compiler.passes.cse import cse
from tests.passes import F32, check_pass

X = np.linspace(-2, 2, 12, dtype=np.float32).reshape(3, 4)


def twins() -> Graph:
    """Two identical branches Add(Relu(x), w) with equal but separate weights, then Transposes that differ."""
    x = Value("x", TensorType(F32, (3, 4)))
    w1, w2 = (Value(n, const=np.arange(4, dtype=np.float32)) for n in ("w1", "w2"))
    w3 = Value("w3", const=np.arange(4, dtype=np.float64).astype(np.float32) + 1)  # other bytes: kept
    v = {n: Value(n) for n in ("a1", "a2", "b1", "b2", "c", "t1", "t2", "y", "z")}
    nodes = [Node("Relu", [x], [v["a1"]]), Node("Relu", [x], [v["a2"]]),
             Node("Add", [v["a1"], w1], [v["b1"]]), Node("Add", [v["a2"], w2], [v["b2"]]),
             Node("Add", [v["b2"], w3], [v["c"]]), Node("Mul", [v["b1"], v["c"]], [v["y"]]),
             Node("Transpose", [v["y"]], [v["t1"]], {"perm": [1, 0]}), Node("Transpose", [v["y"]], [v["t2"]]),
             Node("Sub", [v["t1"], v["t2"]], [v["z"]])]
    return Graph(inputs=[x], outputs=[v["z"]], nodes=nodes, initializers=[w1, w2, w3], opsets={"": 17})


def test_merges_identical_nodes_and_initializers():
    after = check_pass(twins, cse, {"x": X}, ["Relu", "Add", "Add", "Mul", "Transpose", "Transpose", "Sub"])
    assert [v.name for v in after.initializers] == ["w1", "w3"]
    mul = after.nodes[3]
    assert mul.inputs[0] is after.nodes[1].outputs[0] and mul.inputs[1] is after.nodes[2].outputs[0]
    assert after.nodes[2].inputs[0].name == "b1"


def test_keeps_random_operators_and_graph_outputs_apart():
    x = Value("x", TensorType(F32, (3, 4)))
    outs = [Value(n) for n in ("r1", "r2", "n1", "n2")]
    nodes = [Node("RandomUniformLike", [x], [outs[0]], {"dtype": TensorProto.FLOAT}),
             Node("RandomUniformLike", [x], [outs[1]], {"dtype": TensorProto.FLOAT}),
             Node("Neg", [x], [outs[2]]), Node("Neg", [x], [outs[3]])]
    g = cse(Graph(inputs=[x], outputs=outs, nodes=nodes, opsets={"": 17}))
    assert [n.op for n in g.nodes] == ["RandomUniformLike", "RandomUniformLike", "Neg", "Neg"]


def test_attributes_that_compare_equal_but_differ_are_not_merged():
    x = Value("x", TensorType(F32, (3, 4)))
    a, b, y = Value("a"), Value("b"), Value("y")
    nodes = [Node("LeakyRelu", [x], [a], {"alpha": 0.0}), Node("LeakyRelu", [x], [b], {"alpha": -0.0}),
             Node("Add", [a, b], [y])]
    g = cse(Graph(inputs=[x], outputs=[y], nodes=nodes, opsets={"": 17}))
    assert [n.op for n in g.nodes] == ["LeakyRelu", "LeakyRelu", "Add"]
