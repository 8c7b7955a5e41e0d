"""The IR: construction, validation, ordering, printing and ONNX export."""
import numpy as np
import onnx
import pytest

from opencann.compiler.ir import Graph, Node, SequenceType, TensorType, Value
from opencann.compiler.passes.shape_inference import infer_shapes
from opencann.errors import AclError, ErrorCode
from opencann.frontends.onnx import import_onnx
from opencann.runtime import Executor

F32 = np.dtype(np.float32)


def small_graph() -> Graph:
    x = Value("x", TensorType(F32, ("N", 4)))
    w = Value("w", const=np.arange(12, dtype=np.float32).reshape(4, 3))
    h = Value("h")
    y = Value("y")
    nodes = [Node("Relu", [h], [y], name="relu"), Node("MatMul", [x, w], [h], name="mm")]
    return Graph(inputs=[x], outputs=[y], nodes=nodes, initializers=[w], name="small")


def test_toposort_orders_producers_first():
    g = small_graph()
    g.toposort()
    assert [n.name for n in g.nodes] == ["mm", "relu"]
    g.validate()


def test_validate_reports_use_before_definition():
    g = small_graph()
    with pytest.raises(AclError, match="node Relu 'relu': input 0 'h' is not defined before use") as e:
        g.validate()
    assert e.value.code == ErrorCode.PARSE_MODEL


def test_toposort_reports_cycles():
    a, b = Value("a"), Value("b")
    g = Graph(inputs=[], outputs=[b], nodes=[Node("Neg", [b], [a], name="n1"), Node("Neg", [a], [b], name="n2")])
    with pytest.raises(AclError, match="cycle"):
        g.toposort()


def test_validate_rejects_duplicates_and_missing_outputs():
    x = Value("x", TensorType(F32, (2,)))
    g = Graph(inputs=[x], outputs=[Value("nowhere")], nodes=[])
    with pytest.raises(AclError, match="'nowhere' is never produced"):
        g.validate()
    y = Value("x")
    g = Graph(inputs=[x], outputs=[y], nodes=[Node("Neg", [x], [y])])
    with pytest.raises(AclError, match="defined twice"):
        g.validate()


def test_untyped_input_is_an_error():
    g = Graph(inputs=[Value("x")], outputs=[], nodes=[])
    with pytest.raises(AclError, match="'x' has no type"):
        g.validate()


def test_printer_is_readable():
    g = small_graph()
    g.toposort()
    text = str(g)
    assert "graph small(%x: float32[N,4])" in text
    assert "%w: float32[4,3] = const" in text
    assert "= MatMul(%x, %w)" in text and "return %y" in text
    assert str(SequenceType(TensorType(F32, (None, 2)))) == "seq(float32[?,2])"


def test_export_passes_checker_and_round_trips():
    g = small_graph()
    g.toposort()
    infer_shapes(g)
    assert g.nodes[0].outputs[0].type == TensorType(F32, ("N", 3))
    model = g.to_onnx()
    onnx.checker.check_model(model, full_check=True)
    again = import_onnx(model)
    x = np.random.default_rng(0).standard_normal((5, 4)).astype(np.float32)
    expected = np.maximum(x @ g.initializers[0].const, 0)
    np.testing.assert_allclose(Executor(again).run([x])[0], expected, rtol=1e-6)


def test_export_with_subgraph_and_attributes_passes_checker():
    cond = Value("cond", TensorType(np.bool_, ()))
    x = Value("x", TensorType(F32, (3,)))
    then_out, else_out, y = Value("t", TensorType(F32, (3,))), Value("e", TensorType(F32, (3,))), Value("y")
    then_g = Graph(outputs=[then_out], nodes=[Node("Neg", [x], [then_out])], name="then")
    else_g = Graph(outputs=[else_out], nodes=[Node("Identity", [x], [else_out])], name="else")
    node = Node("If", [cond], [y], {"then_branch": then_g, "else_branch": else_g}, name="if")
    g = Graph(inputs=[cond, x], outputs=[y], nodes=[node], name="branch")
    g.validate()
    assert g.outer_names() == set() and then_g.outer_names() == {"x"}
    onnx.checker.check_model(g.to_onnx(), full_check=True)
    assert "then_branch:" in str(g)
