"""Graph passes: each checked on a small before/after graph."""
import numpy as np
import pytest

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


def conv_bn_graph(op: str, group: int = 1):
    rng = np.random.default_rng(0)
    c_in, c_out = 4, 6
    w_shape = (c_out, c_in // group, 3, 3) if op == "Conv" else (c_in, c_out // group, 3, 3)
    x = Value("x", TensorType(F32, (2, c_in, 5, 5)))
    consts = [Value(n, const=a.astype(np.float32)) for n, a in (
        ("w", rng.standard_normal(w_shape)), ("b", rng.standard_normal(c_out)),
        ("gamma", rng.random(c_out) + 0.5), ("beta", rng.standard_normal(c_out)),
        ("mean", rng.standard_normal(c_out)), ("var", rng.random(c_out) + 0.5))]
    h, y = Value("h"), Value("y")
    nodes = [Node(op, [x, consts[0], consts[1]], [h], {"group": group, "pads": [1, 1, 1, 1]}, name="conv"),
             Node("BatchNormalization", [h, *consts[2:]], [y], {"epsilon": 1e-3}, name="bn"),
             Node("Relu", [y], [Value("z")], name="relu")]
    return Graph(inputs=[x], outputs=[nodes[-1].outputs[0]], nodes=nodes, initializers=consts), rng


@pytest.mark.parametrize("op,group", [("Conv", 1), ("Conv", 2), ("ConvTranspose", 1), ("ConvTranspose", 2)])
def test_fold_batchnorm_into_conv(op, group):
    from opencann.compiler.passes.fold_batchnorm import fold_batchnorm
    from opencann.runtime import Executor

    before, rng = conv_bn_graph(op, group)
    x = rng.standard_normal((2, 4, 5, 5)).astype(np.float32)
    want = Executor(before).run([x])[0]
    after = eliminate_dead_code(fold_batchnorm(conv_bn_graph(op, group)[0]))
    assert [n.op for n in after.nodes] == [op, "Relu"]
    assert {v.name for v in after.initializers} == {"conv/W_bn", "conv/B_bn"}
    after.validate()
    np.testing.assert_allclose(Executor(after).run([x])[0], want, rtol=1e-5, atol=1e-5)


def test_fold_batchnorm_leaves_shared_or_training_batchnorm_alone():
    from opencann.compiler.passes.fold_batchnorm import fold_batchnorm

    g, _ = conv_bn_graph("Conv")
    g.outputs.append(g.nodes[0].outputs[0])  # the conv output is also read elsewhere
    assert [n.op for n in fold_batchnorm(g).nodes] == ["Conv", "BatchNormalization", "Relu"]
    g, _ = conv_bn_graph("Conv")
    g.nodes[1].attrs["training_mode"] = 1
    assert [n.op for n in fold_batchnorm(g).nodes] == ["Conv", "BatchNormalization", "Relu"]
