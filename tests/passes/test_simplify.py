"""Simplification: no-op removal and Reshape/Transpose/Squeeze pair cancellation, graph outputs kept."""
import numpy as np
import pytest
from onnx import TensorProto

from opencann.compiler.ir import Graph, Node, TensorType, Value
from opencann.compiler.passes.dead_code import eliminate_dead_code
from opencann.compiler.passes.shape_inference import infer_shapes
from opencann.compiler.passes.simplify import simplify
from tests.passes import F32, check_pass

X = np.arange(24, dtype=np.float32).reshape(2, 3, 4) - 10


def chain(*steps) -> Graph:
    """x[2,3,4] -> Relu -> steps... -> y; a step is (op, attrs, constant inputs, output shape or None)."""
    x = Value("x", TensorType(F32, (2, 3, 4)))
    h = Value("h", TensorType(F32, (2, 3, 4)))
    nodes, inits = [Node("Relu", [x], [h], name="relu")], []
    for i, (op, attrs, consts, shape) in enumerate(steps):
        cs = [Value(f"c{i}_{k}", const=np.asarray(c)) for k, c in enumerate(consts)]
        inits += cs
        out = Value(f"v{i}", TensorType(F32, shape) if shape else None)
        nodes.append(Node(op, [h, *cs], [out], attrs, name=f"n{i}"))
        h = out
    nodes.append(Node("Neg", [h], [Value("y")], name="neg"))
    g = Graph(inputs=[x], outputs=[nodes[-1].outputs[0]], nodes=nodes, initializers=inits, opsets={"": 17})
    return infer_shapes(g)  # as in the compile pipeline


def run(g: Graph) -> Graph:
    return eliminate_dead_code(simplify(g))


@pytest.mark.parametrize("steps,ops", [
    ([("Identity", {}, [], None), ("Identity", {}, [], None)], ["Relu", "Neg"]),
    ([("Dropout", {}, [np.float32(0.5)], None)], ["Relu", "Neg"]),
    ([("Cast", {"to": TensorProto.FLOAT}, [], None)], ["Relu", "Neg"]),
    ([("Cast", {"to": TensorProto.DOUBLE}, [], None)], ["Relu", "Cast", "Neg"]),
    ([("Transpose", {"perm": [1, 0, 2]}, [], None), ("Transpose", {"perm": [1, 0, 2]}, [], None)], ["Relu", "Neg"]),
    ([("Transpose", {"perm": [2, 0, 1]}, [], None), ("Transpose", {"perm": [0, 2, 1]}, [], None)],
     ["Relu", "Transpose", "Neg"]),
    ([("Transpose", {"perm": [0, 1, 2]}, [], None)], ["Relu", "Neg"]),
    ([("Reshape", {}, [np.int64([6, 4])], None), ("Reshape", {}, [np.int64([4, -1])], None)],
     ["Relu", "Reshape", "Neg"]),
    ([("Reshape", {}, [np.int64([2, 3, 4])], (2, 3, 4))], ["Relu", "Neg"]),
    ([("Reshape", {}, [np.int64([6, 4])], None), ("Reshape", {}, [np.int64([0, 2, -1])], None)],
     ["Relu", "Reshape", "Reshape", "Neg"]),  # 0 copies the intermediate's dimension: kept
    ([("Unsqueeze", {}, [np.int64([0, -1])], (1, 2, 3, 4, 1)), ("Squeeze", {}, [np.int64([4, 0])], None)],
     ["Relu", "Neg"]),
    ([("Unsqueeze", {}, [np.int64([0, 1])], None), ("Squeeze", {}, [np.int64([0])], None)],
     ["Relu", "Unsqueeze", "Squeeze", "Neg"]),  # different axes
    ([("Reshape", {}, [np.int64([2, 1, 12])], (2, 1, 12)), ("Squeeze", {}, [np.int64([1])], (2, 12)),
      ("Unsqueeze", {}, [np.int64([1])], (2, 1, 12))], ["Relu", "Reshape", "Neg"]),
    ([("Reshape", {}, [np.int64([6, 4])], (6, 4)), ("Flatten", {"axis": 1}, [], (6, 4))], ["Relu", "Reshape", "Neg"]),
])
def test_simplify(steps, ops):
    after = check_pass(lambda: chain(*steps), run, {"x": X}, ops)
    assert [v.name for v in after.outputs] == ["y"]


def test_composed_transpose_and_reshape_targets():
    after = run(chain(("Transpose", {"perm": [2, 0, 1]}, [], None), ("Transpose", {"perm": [0, 2, 1]}, [], None)))
    assert after.nodes[1].attrs["perm"] == [2, 1, 0] and after.nodes[1].inputs[0].name == "h"
    after = run(chain(("Reshape", {}, [np.int64([6, 4])], None), ("Reshape", {}, [np.int64([4, -1])], None)))
    assert after.nodes[1].inputs[0].name == "h" and after.nodes[1].inputs[1].const.tolist() == [4, -1]


def test_identity_producing_a_graph_output_hands_it_to_the_producer():
    def build():
        x = Value("x", TensorType(F32, (2, 3, 4)))
        h, y, z = Value("h"), Value("y"), Value("z")
        nodes = [Node("Relu", [x], [h], name="relu"), Node("Identity", [h], [y]), Node("Identity", [x], [z]),
                 Node("Neg", [h], [Value("n")], name="neg")]
        return Graph(inputs=[x], outputs=[y, z, nodes[-1].outputs[0]], nodes=nodes, opsets={"": 17})

    after = check_pass(build, run, {"x": X}, ["Relu", "Identity", "Neg"])  # Identity(x) -> z must stay
    assert [v.name for v in after.outputs] == ["y", "z", "n"]
    assert after.nodes[0].outputs[0].name == "y" and after.nodes[2].inputs[0].name == "y"


def test_dropout_whose_mask_is_read_or_training_stays():
    def build(training):
        x = Value("x", TensorType(F32, (2, 3, 4)))
        y, mask = Value("y"), Value("mask")
        ins = [x, Value("r", const=np.float32(0.0)), Value("t", const=np.bool_(training))]
        return Graph(inputs=[x], outputs=[y, mask], nodes=[Node("Dropout", ins, [y, mask])],
                     initializers=ins[1:], opsets={"": 17})

    assert [n.op for n in simplify(build(False)).nodes] == ["Dropout"]
    g = build(True)
    g.outputs = g.outputs[:1]
    assert [n.op for n in simplify(g).nodes] == ["Dropout"]
