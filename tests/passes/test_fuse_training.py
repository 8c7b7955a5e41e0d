"""Optimizer-update chains: Keras' per-variable elementwise arithmetic becomes one ElementwiseChain node,
with bit-identical results; values read elsewhere, other dtypes and scalars stay outside."""
import numpy as np

from opencann.compiler.ir import Graph, Node, SequenceType, TensorType, Value
from opencann.compiler.passes.fuse_training import batch_list_ops, chain_updates, hoist_invariants
from opencann.compiler.passes.shape_inference import infer_shapes
from opencann.ops.tf_control import tensor_list_add_n, tensor_list_pop_back, tensor_list_pop_back_many
from opencann.runtime import Executor
from tests.passes import F32

SHAPE = (4, 5)
RNG = np.random.default_rng(0)
FEEDS = {"g": RNG.standard_normal(SHAPE).astype(np.float32), "m": RNG.standard_normal(SHAPE).astype(np.float32),
         "v": RNG.random(SHAPE).astype(np.float32), "w": RNG.standard_normal(SHAPE).astype(np.float32),
         "alpha": np.float32(0.01), "b": RNG.standard_normal(5).astype(np.float32)}


def adam(extra_reader: bool = False) -> Graph:
    """Keras 3's Adam update of one variable (as the TF importer emits it), plus a broadcast bias term and,
    optionally, a node outside the update that reads one of its intermediates."""
    ins = {k: Value(k, TensorType(F32, np.shape(a))) for k, a in FEEDS.items()}
    c1, c2, eps = (Value(n, const=np.array(x, np.float32)) for n, x in (("c1", 0.1), ("c2", 0.001), ("eps", 1e-7)))
    v = {n: Value(n) for n in ("d", "dm", "m2", "gg", "e", "de", "v2", "num", "s", "den", "q", "qb", "w2", "bb",
                               "r", "x")}
    nodes = [Node("Sub", [ins["g"], ins["m"]], [v["d"]]), Node("Mul", [v["d"], c1], [v["dm"]]),
             Node("Add", [ins["m"], v["dm"]], [v["m2"]]), Node("Mul", [ins["g"], ins["g"]], [v["gg"]]),
             Node("Sub", [v["gg"], ins["v"]], [v["e"]]), Node("Mul", [v["e"], c2], [v["de"]]),
             Node("Add", [ins["v"], v["de"]], [v["v2"]]), Node("Mul", [v["m2"], ins["alpha"]], [v["num"]]),
             Node("Sqrt", [v["v2"]], [v["s"]]), Node("Add", [v["s"], eps], [v["den"]]),
             Node("Div", [v["num"], v["den"]], [v["q"]]), Node("Mul", [ins["b"], ins["b"]], [v["bb"]]),
             Node("Add", [v["q"], v["bb"]], [v["qb"]]), Node("Sub", [ins["w"], v["qb"]], [v["w2"]])]
    outputs = [v["m2"], v["v2"], v["w2"]]
    if extra_reader:
        nodes.append(Node("ReduceSum", [v["s"]], [v["r"]], {"keepdims": 0}))
        outputs.append(v["r"])
    graph = Graph(inputs=list(ins.values()), outputs=outputs, nodes=nodes, initializers=[c1, c2, eps],
                  opsets={"": 17})
    return infer_shapes(graph)


def test_update_becomes_one_chain_with_identical_values():
    want = Executor(adam()).run(FEEDS)
    graph = adam()
    after = chain_updates(graph, graph.outputs)
    assert [n.op for n in after.nodes] == ["Mul", "ElementwiseChain"]  # b*b has the bias' shape: outside
    chain = after.nodes[1]
    assert chain.attrs["ops"] == ["Sub", "Mul", "Add", "Mul", "Sub", "Mul", "Add", "Mul", "Sqrt", "Add", "Div",
                                  "Add", "Sub"]
    assert [v.name for v in chain.outputs] == ["m2", "v2", "w2"]
    got = Executor(after).run(FEEDS)
    for g, w in zip(got, want, strict=True):
        assert g.dtype == w.dtype and g.shape == w.shape
        np.testing.assert_array_equal(g, w)
    assert str(chain_updates(after, after.outputs)) == str(after)  # a second run changes nothing


def test_values_read_outside_the_update_stay_outside():
    want = Executor(adam(extra_reader=True)).run(FEEDS)
    graph = adam(extra_reader=True)
    after = chain_updates(graph, graph.outputs[:3])
    # sqrt(v2) is read outside: it, and the second moment's update it reads, stay single nodes
    assert [n.op for n in after.nodes] == ["Mul", "Sub", "Mul", "Add", "Sqrt", "Mul", "ElementwiseChain", "ReduceSum"]
    assert after.nodes[6].attrs["ops"] == ["Sub", "Mul", "Add", "Mul", "Add", "Div", "Add", "Sub"]
    for g, w in zip(Executor(after).run(FEEDS), want, strict=True):
        np.testing.assert_array_equal(g, w)


def test_float64_is_chained_and_dynamic_shapes_are_left_alone():
    x = Value("x", TensorType(np.dtype(np.float64), SHAPE))
    y = Value("y", TensorType(F32, ("n", 5)))
    a, b, c, d = (Value(n) for n in "abcd")
    nodes = [Node("Mul", [x, x], [a]), Node("Add", [a, x], [b]), Node("Mul", [y, y], [c]), Node("Add", [c, y], [d])]
    graph = infer_shapes(Graph(inputs=[x, y], outputs=[b, d], nodes=nodes, opsets={"": 17}))
    assert [n.op for n in chain_updates(graph, graph.outputs).nodes] == ["ElementwiseChain", "Mul", "Add"]


def accumulators() -> Graph:
    """A loop body's gradient bookkeeping: two appends to carried lists and two pops of carried lists (one
    popping a hole, one popped item also a body output), plus an append whose result is read inside."""
    lists = [Value(f"l{i}") for i in range(5)]
    x = Value("x", TensorType(F32, (2, 3)))
    shape = Value("shape", const=np.array([2, 3], np.int32))
    v = {n: Value(n) for n in ("nx", "p0", "p1", "r2", "i2", "r3", "i3", "s", "p4", "n4")}
    nodes = [Node("Neg", [x], [v["nx"]]), Node("SequenceInsert", [lists[0], x], [v["p0"]]),
             Node("SequenceInsert", [lists[1], v["nx"]], [v["p1"]]),
             Node("TensorListPopBack", [lists[2], shape], [v["r2"], v["i2"]], {"element_dtype": 1},
                  domain="opencann"),
             Node("TensorListPopBack", [lists[3], shape], [v["r3"], v["i3"]], {"element_dtype": 1},
                  domain="opencann"),
             Node("Add", [v["i2"], v["i3"]], [v["s"]]), Node("SequenceInsert", [lists[4], v["s"]], [v["p4"]]),
             Node("SequenceLength", [v["p4"]], [v["n4"]])]
    return Graph(inputs=[*lists, x], outputs=[v[n] for n in ("p0", "p1", "r2", "r3", "i2", "s", "p4", "n4")],
                 nodes=nodes, initializers=[shape], opsets={"": 17, "opencann": 1})


def test_list_appends_and_pops_of_carried_lists_become_one_node_each():
    feeds = {"l0": [], "l1": [np.ones((2, 3), np.float32)], "l2": [np.full((2, 3), 2, np.float32), None],
             "l3": [np.full((2, 3), 3, np.float32)], "l4": [], "x": FEEDS["w"][:2, :3].copy()}
    want = Executor(accumulators()).run(feeds)
    after = batch_list_ops(accumulators())
    assert [n.op for n in after.nodes] == ["TensorListPopBackMany", "Neg", "Add", "SequenceInsert",
                                           "SequenceLength", "TensorListPushBackMany"]
    got = Executor(after).run(feeds)
    assert [len(g) if isinstance(g, list) else None for g in got] == [1, 2, 1, 0, None, None, 1, None]
    for g, w in zip(got, want, strict=True):
        for a, b in zip(g if isinstance(g, list) else [g], w if isinstance(w, list) else [w], strict=True):
            np.testing.assert_array_equal(a, b)


def test_pops_without_holes_and_two_list_sums_take_the_short_path():
    lists = [[RNG.standard_normal((2, 3)).astype(np.float32) for _ in range(k)] for k in (1, 3, 2)]
    shapes = [np.array([2, 3], np.int32)] * 3
    got = tensor_list_pop_back_many(*lists, *shapes, element_dtypes=[1] * 3)
    want = [tensor_list_pop_back(items, s, element_dtype=1) for items, s in zip(lists, shapes, strict=True)]
    assert [len(r) for r in got[:3]] == [0, 2, 1]
    for r, last, (w_rest, w_last) in zip(got[:3], got[3:], want, strict=True):
        assert last is w_last and all(a is b for a, b in zip(r, w_rest, strict=True))
    acc, one = [lists[1][0], None, lists[1][2]], [None, lists[2][0], lists[2][1]]
    two = tensor_list_add_n(acc, one)
    three = tensor_list_add_n(acc, one, [None] * 3)  # the general path, as a reference
    assert two[0] is acc[0] and two[1] is one[1] and three[1] is one[1]
    np.testing.assert_array_equal(two[2], acc[2] + one[2])
    np.testing.assert_array_equal(three[2], two[2])
    assert acc[1] is None  # the inputs are never mutated


def measuring_loop() -> Graph:
    """A Loop (3 trips) whose body measures the list it carries unchanged (hoistable), measures the list it
    appends to (not: it changes every iteration) and adds the first length to a carried float."""
    seq = SequenceType(TensorType(F32, (2,)))
    lst, acc, x = Value("lst", seq), Value("acc", seq), Value("x", TensorType(F32, (2,)))
    m = Value("m", const=np.array(3))
    b = {n: Value(n) for n in ("it", "cond", "lst_in", "acc_in", "x_in", "n", "c", "x2", "acc2", "k", "cond2")}
    body = Graph(inputs=[b["it"], b["cond"], b["lst_in"], b["acc_in"], b["x_in"]],
                 outputs=[b["cond2"], b["lst_in"], b["acc2"], b["x2"], b["k"]],
                 nodes=[Node("SequenceLength", [b["lst_in"]], [b["n"]]),
                        Node("Cast", [b["n"]], [b["c"]], {"to": 1}), Node("Add", [b["x_in"], b["c"]], [b["x2"]]),
                        Node("SequenceInsert", [b["acc_in"], b["x2"]], [b["acc2"]]),
                        Node("SequenceLength", [b["acc2"]], [b["k"]]), Node("Identity", [b["cond"]], [b["cond2"]])],
                 name="body", opsets={"": 17})
    out = [Value(n) for n in ("lst_out", "acc_out", "x_out", "ks")]
    loop = Node("Loop", [m, None, lst, acc, x], out, {"body": body})
    return Graph(inputs=[lst, acc, x], outputs=out, nodes=[loop], initializers=[m], opsets={"": 17})


def test_loop_invariant_measurements_move_in_front_of_the_loop():
    feeds = {"lst": [np.zeros(2, np.float32)] * 4, "acc": [], "x": np.array([1, 2], np.float32)}
    want = Executor(measuring_loop()).run(feeds)
    after = hoist_invariants(measuring_loop())
    after.validate()
    assert [n.op for n in after.nodes] == ["SequenceLength", "Cast", "Loop"]
    assert after.nodes[0].inputs[0].name == "lst"
    assert [n.op for n in after.nodes[2].attrs["body"].nodes] == ["Add", "SequenceInsert", "SequenceLength", "Identity"]
    got = Executor(after).run(feeds)
    np.testing.assert_array_equal(got[2], [13, 14])
    np.testing.assert_array_equal(got[3], [1, 2, 3])
    for g, w in zip(got, want, strict=True):
        for a, c in zip(g if isinstance(g, list) else [g], w if isinstance(w, list) else [w], strict=True):
            np.testing.assert_array_equal(a, c)
