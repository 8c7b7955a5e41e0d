"""Constant folding: constant subgraphs, static shapes and PyTorch's shape chains become initializers."""
import numpy as np
import pytest
from onnx import TensorProto

from opencann.compiler import om
from opencann.compiler.ir import Graph, Node, TensorType, Value
from opencann.compiler.passes.constant_fold import constant_fold
from opencann.compiler.passes.dead_code import eliminate_dead_code
from opencann.runtime import Executor
from tests.passes import F32, check_pass, run_ort

I64 = np.dtype(np.int64)


def const(name, arr):
    return Value(name, const=np.asarray(arr))


def reshape_chain(batch) -> Graph:
    """y = Reshape(x, Concat([-1], Unsqueeze(Gather(Shape(x), 1)))) + Constant * w, as PyTorch exports it."""
    x = Value("x", TensorType(F32, (batch, 3)))
    w, idx, axes, minus1 = const("w", np.float32([1, 2, 3])), const("idx", np.int64(1)), const("axes", [0]), \
        const("m1", [-1])
    vals = {n: Value(n) for n in ("k", "kw", "s", "d", "du", "t", "r", "y")}
    nodes = [Node("Constant", [], [vals["k"]], {"value": np.float32([0.5, -1, 2])}, name="k"),
             Node("Mul", [vals["k"], w], [vals["kw"]], name="kw"),
             Node("Shape", [x], [vals["s"]], name="shape"),
             Node("Gather", [vals["s"], idx], [vals["d"]], {"axis": 0}, name="gather"),
             Node("Unsqueeze", [vals["d"], axes], [vals["du"]], name="unsqueeze"),
             Node("Concat", [minus1, vals["du"]], [vals["t"]], {"axis": 0}, name="concat"),
             Node("Reshape", [x, vals["t"]], [vals["r"]], name="reshape"),
             Node("Add", [vals["r"], vals["kw"]], [vals["y"]], name="add")]
    g = Graph(inputs=[x], outputs=[vals["y"]], nodes=nodes, initializers=[w, idx, axes, minus1])
    g.opsets = {"": 17}
    return g


def test_folds_constants_and_static_shape_chains():
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    after = check_pass(lambda: reshape_chain(2), constant_fold, {"x": x}, ["Reshape", "Add"])
    consts = {v.name: v.const for v in after.initializers}
    np.testing.assert_array_equal(consts["t"], [-1, 3])
    np.testing.assert_array_equal(consts["kw"], np.float32([0.5, -2, 6]))
    assert consts["t"].dtype == I64 and after.nodes[0].inputs[1].name == "t"


def test_gather_of_a_symbolic_shape_folds_at_its_static_dimensions():
    def fold(g):
        return eliminate_dead_code(constant_fold(g))

    x = np.ones((5, 3), np.float32)  # the batch dimension stays dynamic: 5 rows through a graph typed [N, 3]
    after = check_pass(lambda: reshape_chain("N"), fold, {"x": x}, ["Reshape", "Add"])
    assert "s" not in {v.name for v in after.initializers}


def test_a_folded_graph_output_is_still_returned(tmp_path):
    def build():
        x = Value("x", TensorType(F32, (2,)))
        w = const("w", np.float32([1, 2]))
        c, y = Value("c"), Value("y")
        g = Graph(inputs=[x], outputs=[y, c], nodes=[Node("Add", [w, w], [c]), Node("Mul", [x, c], [y])],
                  initializers=[w])
        g.opsets = {"": 17}
        return g

    x = np.float32([3, 4])
    after = check_pass(build, constant_fold, {"x": x}, ["Mul"])
    assert [v.name for v in after.outputs] == ["y", "c"] and "c" in {v.name for v in after.initializers}
    y, c = Executor(after).run({"x": x})
    np.testing.assert_array_equal(c, [2, 4])
    loaded = om.load(om.save(om.CompiledModel(after), tmp_path / "m.om"))
    for got in (Executor(loaded.graph).run({"x": x}), run_ort(loaded.graph, {"x": x})):
        np.testing.assert_array_equal(got[0], [6, 16])
        np.testing.assert_array_equal(got[1], [2, 4])


@pytest.mark.parametrize("op,inputs,attrs,shape", [
    ("ConstantOfShape", [np.int64([1024, 1024])], {}, (1024, 1024)),  # 4 MiB from 16 bytes
    ("Expand", [np.float32([1]), np.int64([300000])], {}, (300000,)),
    ("RandomUniform", [], {"shape": [2], "dtype": TensorProto.FLOAT}, (2,)),
])
def test_growing_and_random_operators_are_not_folded(op, inputs, attrs, shape):
    consts = [const(f"c{i}", a) for i, a in enumerate(inputs)]
    y = Value("y", TensorType(F32, shape))
    g = Graph(inputs=[], outputs=[y], nodes=[Node(op, consts, [y], attrs)], initializers=consts)
    assert [n.op for n in constant_fold(g).nodes] == [op]


def test_small_growth_is_folded():
    def build():
        s, y = const("s", np.int64([4, 4])), Value("y", TensorType(F32, (4, 4)))  # inferred types tell the size
        return Graph(outputs=[y], nodes=[Node("ConstantOfShape", [s], [y], {"value": np.float32([7])})],
                     initializers=[s])

    after = check_pass(build, constant_fold, {}, [])
    np.testing.assert_array_equal(after.initializers[-1].const, np.full((4, 4), 7, np.float32))


def test_a_dynamic_batch_reshape_target_copies_the_dimension():
    def build():
        """x[N, 3, 4].view(x.shape[0], -1), as PyTorch exports it with a dynamic batch."""
        x = Value("x", TensorType(F32, ("N", 3, 4)))
        consts = [const("zero", np.int64(0)), const("axes", [0]), const("m1", [-1])]
        s, d, du, t, y = (Value(n) for n in ("s", "d", "du", "t", "y"))
        nodes = [Node("Shape", [x], [s]), Node("Gather", [s, consts[0]], [d]), Node("Unsqueeze", [d, consts[1]], [du]),
                 Node("Concat", [du, consts[2]], [t], {"axis": 0}), Node("Reshape", [x, t], [y])]
        return Graph(inputs=[x], outputs=[y], nodes=nodes, initializers=consts, opsets={"": 17})

    x = np.arange(60, dtype=np.float32).reshape(5, 3, 4)
    after = check_pass(build, lambda g: eliminate_dead_code(constant_fold(g)), {"x": x}, ["Reshape"])
    assert after.nodes[0].inputs[1].const.tolist() == [0, -1]


def test_folded_results_keep_their_shape_and_own_their_memory():
    def build():
        w = const("w", np.arange(6, dtype=np.float32).reshape(2, 3))
        t, k, y = Value("t"), Value("k"), Value("y")
        nodes = [Node("Transpose", [w], [t], {"perm": [1, 0]}),
                 Node("Constant", [], [k], {"value": np.array(2.0, F32)}), Node("Mul", [t, k], [y])]
        return Graph(outputs=[y, t, k], nodes=nodes, initializers=[w], opsets={"": 17})

    after = check_pass(build, constant_fold, {}, [])
    consts = {v.name: v.const for v in after.initializers}
    assert consts["k"].shape == () and consts["t"].flags.c_contiguous and not np.shares_memory(consts["t"], consts["w"])
