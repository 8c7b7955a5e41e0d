"""Graph passes: each checked on a small before/after graph."""
import numpy as np

from opencann.compiler.ir import Graph, Node, TensorType, Value
from opencann.compiler.passes.dead_code import eliminate_dead_code

F32 = np.dtype(np.float32)


def test_dead_code_elimination_keeps_only_what_outputs_need():
    x = Value("x", TensorType(F32, (2,)))
    w, unused = Value("w", const=np.ones(2, np.float32)), Value("u", const=np.ones(2, np.float32))
    a, b, c = Value("a"), Value("b"), Value("c")
    nodes = [Node("Add", [x, w], [a], name="used"), Node("Mul", [x, unused], [b], name="dead"),
             Node("Neg", [b], [c], name="dead2")]
    g = eliminate_dead_code(Graph(inputs=[x], outputs=[a], nodes=nodes, initializers=[w, unused]))
    assert [n.name for n in g.nodes] == ["used"]
    assert [v.name for v in g.initializers] == ["w"]
    g.validate()
