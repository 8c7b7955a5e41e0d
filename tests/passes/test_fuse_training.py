"""Optimizer-update chains: Keras' per-variable elementwise arithmetic becomes one ElementwiseChain node,
with bit-identical results; values read elsewhere, other dtypes and scalars stay outside."""
import itertools

import numpy as np
import pytest

from opencann.compiler.ir import Graph, Node, SequenceType, TensorType, Value
from opencann.compiler.passes.fuse_rnn_loops import fuse_lstm_cells
from opencann.compiler.passes.fuse_training import (
    batch_list_ops,
    chain_scalars,
    chain_updates,
    fold_attention,
    fold_head_biases,
    fold_scales,
    fold_sum_reshapes,
    fold_transposes,
    hoist_invariants,
    merge_chains,
)
from opencann.compiler.passes.shape_inference import infer_shapes
from opencann.errors import AclError
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


def adam_many(shapes: list[tuple], dtype=F32, broadcast_last: bool = False) -> tuple:
    """Adam updates of one variable per shape, their scalars shared (and feeds with zeros in the second moment:
    0/0 and x/0 in the step); optionally the last variable's update adds a broadcast row (another kind of
    chain)."""
    rng = np.random.default_rng(1)
    consts = [Value(n, const=np.array(x, dtype)) for n, x in (("c1", 0.1), ("c2", 0.001), ("eps", 0.0))]
    c1, c2, eps = consts
    alpha = Value("alpha", TensorType(np.dtype(dtype), ()))
    inputs, nodes, outputs, feeds = [alpha], [], [], {"alpha": np.array(0.01, dtype)}
    for k, shape in enumerate(shapes):
        g, m, v, w = (Value(f"{n}{k}", TensorType(np.dtype(dtype), shape)) for n in "gmvw")
        inputs += [g, m, v, w]
        feeds.update({f"{n}{k}": rng.standard_normal(shape).astype(dtype) for n in "gmw"})
        feeds[f"v{k}"] = np.zeros(shape, dtype)
        feeds[f"g{k}"].flat[:2] = feeds[f"m{k}"].flat[0] = 0  # new m and v 0 at [0] (0/0), v alone at [1] (x/0)
        t = {n: Value(f"{n}{k}") for n in ("d", "dm", "m2", "gg", "e", "de", "v2", "num", "s", "den", "q", "w2")}
        nodes += [Node("Sub", [g, m], [t["d"]]), Node("Mul", [t["d"], c1], [t["dm"]]),
                  Node("Add", [m, t["dm"]], [t["m2"]]), Node("Mul", [g, g], [t["gg"]]),
                  Node("Sub", [t["gg"], v], [t["e"]]), Node("Mul", [t["e"], c2], [t["de"]]),
                  Node("Add", [v, t["de"]], [t["v2"]]), Node("Mul", [t["m2"], alpha], [t["num"]]),
                  Node("Sqrt", [t["v2"]], [t["s"]]), Node("Add", [t["s"], eps], [t["den"]]),
                  Node("Div", [t["num"], t["den"]], [t["q"]])]
        if broadcast_last and k == len(shapes) - 1:
            row = Value("row", TensorType(np.dtype(dtype), shape[-1:]))
            inputs.append(row)
            feeds["row"] = rng.standard_normal(shape[-1:]).astype(dtype)
            q = Value(f"qr{k}")
            nodes.append(Node("Add", [t["q"], row], [q]))
            t["q"] = q
        nodes.append(Node("Sub", [w, t["q"]], [t["w2"]]))
        outputs += [t["m2"], t["v2"], t["w2"]]
    graph = Graph(inputs=inputs, outputs=outputs, nodes=nodes, initializers=consts, opsets={"": 17})
    return infer_shapes(graph), feeds


SHAPES = [(3, 4), (7,), (2, 3, 5), (1,)]


@pytest.mark.parametrize("dtype", [F32, np.dtype(np.float64), np.dtype(np.float16)])
def test_chains_of_one_kind_merge_into_one_node_with_identical_values(dtype):
    graph, feeds = adam_many(SHAPES, dtype)
    want = Executor(graph).run(feeds)
    chained = chain_updates(graph, graph.outputs)
    assert [n.op for n in chained.nodes] == ["ElementwiseChain"] * len(SHAPES)
    after = merge_chains(chained)
    assert [n.op for n in after.nodes] == ["ElementwiseChains"]
    merged = after.nodes[0]
    assert merged.attrs["pieces"] == len(SHAPES)
    assert [v.name for v in merged.inputs[-4:]] == ["c1", "c2", "alpha", "eps"]  # shared scalars
    got = Executor(after).run(feeds)
    assert np.isnan(want[2].flat[0]) and np.isinf(want[2].flat[1])  # 0/0 and x/0 covered
    for g, w in zip(got, want, strict=True):
        assert g.dtype == w.dtype and g.shape == w.shape
        np.testing.assert_array_equal(g, w)


def test_chains_of_another_kind_or_read_in_the_graph_stay_apart():
    graph, feeds = adam_many(SHAPES, broadcast_last=True)
    want = Executor(graph).run(feeds)
    after = merge_chains(chain_updates(graph, graph.outputs))
    assert [n.op for n in after.nodes] == ["ElementwiseChains", "ElementwiseChain"]
    assert after.nodes[0].attrs["pieces"] == len(SHAPES) - 1
    for g, w in zip(Executor(after).run(feeds), want, strict=True):
        np.testing.assert_array_equal(g, w)
    graph, feeds = adam_many(SHAPES)
    chained = chain_updates(graph, graph.outputs)
    total = Value("total")
    chained.nodes.append(Node("ReduceSum", [chained.outputs[-1]], [total], {"keepdims": 0}))
    chained.outputs.append(total)
    assert [n.op for n in merge_chains(chained).nodes] == ["ElementwiseChains", "ElementwiseChain", "ReduceSum"]


def test_merged_chains_run_in_blocks_over_many_elements(monkeypatch):
    """More elements than one block of the compiled kernel: every block's results land in place. At most
    MAX_MERGED elements a node: the chains of one kind merge in runs."""
    from opencann.compiler.passes import fuse_training

    monkeypatch.setattr(fuse_training, "MAX_MERGED", 1100)
    graph, feeds = adam_many([(1000,), (33,), (517,), (70,), (9,)])
    want = Executor(graph).run(feeds)
    after = merge_chains(chain_updates(graph, graph.outputs))
    assert [n.attrs["pieces"] for n in after.nodes] == [2, 3]
    for g, w in zip(Executor(after).run(feeds), want, strict=True):
        np.testing.assert_array_equal(g, w)


def bias_corrections(early_reader: bool = False) -> Graph:
    """Adam's scalar bias corrections (as Keras emits them) from an int step count, and a separate scalar sum;
    optionally a node between the two groups reads an intermediate of the first."""
    step = Value("step", TensorType(np.dtype(np.int64), ()))
    lr, total = Value("lr", TensorType(F32, ())), Value("total", TensorType(F32, ()))
    b1, b2, one = (Value(n, const=np.array(x, np.float32)) for n, x in (("b1", 0.9), ("b2", 0.999), ("one", 1.0)))
    v = {n: Value(n) for n in ("t", "p1", "p2", "s2", "s1", "r", "m", "a", "x", "y", "z", "early")}
    nodes = [Node("Cast", [step], [v["t"]], {"to": 1}), Node("Pow", [b1, v["t"]], [v["p1"]]),
             Node("Pow", [b2, v["t"]], [v["p2"]]), Node("Sub", [one, v["p2"]], [v["s2"]]),
             Node("Sub", [one, v["p1"]], [v["s1"]]), Node("Sqrt", [v["s2"]], [v["r"]]),
             Node("Mul", [lr, v["r"]], [v["m"]]), Node("Div", [v["m"], v["s1"]], [v["a"]]),
             Node("Mul", [total, b1], [v["x"]]), Node("Add", [v["x"], total], [v["y"]]),
             Node("Neg", [v["y"]], [v["z"]])]
    outputs = [v["a"], v["y"], v["z"]]
    if early_reader:
        nodes.insert(4, Node("ReduceSum", [v["s2"]], [v["early"]], {"keepdims": 0}))
        outputs.append(v["early"])
    graph = Graph(inputs=[step, lr, total], outputs=outputs, nodes=nodes, initializers=[b1, b2, one],
                  opsets={"": 17})
    return infer_shapes(graph)


SCALAR_FEEDS = {"step": np.array(3, np.int64), "lr": np.array(0.001, np.float32), "total": np.array(2.5, np.float32)}


def test_scalar_arithmetic_becomes_one_chain_per_group_with_identical_values():
    want = Executor(bias_corrections()).run(SCALAR_FEEDS)
    after = chain_scalars(bias_corrections())
    assert [n.op for n in after.nodes] == ["Cast", "ElementwiseChain", "ElementwiseChain"]
    assert after.nodes[1].attrs["ops"] == ["Pow", "Pow", "Sub", "Sub", "Sqrt", "Mul", "Div"]
    assert [v.name for v in after.nodes[2].outputs] == ["y", "z"]  # y is also returned
    for g, w in zip(Executor(after).run(SCALAR_FEEDS), want, strict=True):
        assert g.dtype == w.dtype and g.shape == w.shape == ()
        np.testing.assert_array_equal(g, w)


def test_a_group_read_before_its_last_member_stays_apart():
    after = chain_scalars(bias_corrections(early_reader=True))
    assert [n.op for n in after.nodes][:5] == ["Cast", "Pow", "Pow", "Sub", "ReduceSum"]
    assert [n.op for n in after.nodes].count("ElementwiseChain") == 1
    np.testing.assert_array_equal(Executor(after).run(SCALAR_FEEDS)[1],
                                  Executor(bias_corrections()).run(SCALAR_FEEDS)[1])


def test_transposed_matmul_operands_become_gemm_flags():
    """X^T @ dY and dY @ W^T read their operand transposed in Gemm; a transpose also returned, or a batched (3-D)
    MatMul, stays as it is."""
    rng = np.random.default_rng(2)
    feeds = {k: rng.standard_normal(shape).astype(np.float32)
             for k, shape in (("x", (8, 5)), ("dy", (8, 3)), ("w", (6, 3)), ("s", (2, 4, 4)))}
    ins = {k: Value(k, TensorType(F32, a.shape)) for k, a in feeds.items()}
    v = {n: Value(n) for n in ("xt", "gw", "wt", "gx", "wt2", "twice", "st", "bat")}
    t2 = {"perm": [1, 0]}
    nodes = [Node("Transpose", [ins["x"]], [v["xt"]], t2), Node("MatMul", [v["xt"], ins["dy"]], [v["gw"]]),
             Node("Transpose", [ins["w"]], [v["wt"]], t2), Node("MatMul", [ins["dy"], v["wt"]], [v["gx"]]),
             Node("Transpose", [ins["w"]], [v["wt2"]], t2), Node("MatMul", [ins["dy"], v["wt2"]], [v["twice"]]),
             Node("Transpose", [ins["s"]], [v["st"]], {"perm": [0, 2, 1]}),
             Node("MatMul", [ins["s"], v["st"]], [v["bat"]])]
    graph = infer_shapes(Graph(inputs=list(ins.values()), outputs=[v["gw"], v["gx"], v["twice"], v["wt2"], v["bat"]],
                               nodes=nodes, opsets={"": 17}))
    after = fold_transposes(graph)
    assert [(n.op, n.attrs.get("transA", 0), n.attrs.get("transB", 0)) for n in after.nodes] == [
        ("Gemm", 1, 0), ("Gemm", 0, 1), ("Transpose", 0, 0), ("MatMul", 0, 0), ("Transpose", 0, 0), ("MatMul", 0, 0)]
    x, dy, w, s = (feeds[k] for k in ("x", "dy", "w", "s"))
    for got, want in zip(Executor(after).run(feeds), [x.T @ dy, dy @ w.T, dy @ w.T, w.T, s @ s.transpose(0, 2, 1)],
                         strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def head_projections() -> tuple[Graph, dict]:
    """Keras' attention projections: MatMul -> Reshape into heads -> Add of a per-head bias (a variable; a constant
    on the left with a leading 1; a reshape that also regroups the leading axes), and three that stay: a bias that
    broadcasts over the heads, a split product also read elsewhere, a reshape that does not keep W's columns
    together."""
    rng = np.random.default_rng(3)
    feeds = {k: rng.standard_normal(shape).astype(np.float32)
             for k, shape in (("x", (2, 3, 8)), ("w", (8, 6)), ("b", (2, 3)), ("b3", (3,)), ("b6", (6,)), ("b2", (2,)))}
    ins = {k: Value(k, TensorType(F32, a.shape)) for k, a in feeds.items()}
    bc = Value("bc", const=rng.standard_normal((1, 2, 3)).astype(np.float32))
    splits = [Value(f"shape{i}", const=np.array(dims, np.int64))
              for i, dims in enumerate(([2, 3, 2, 3], [3, 2, 6], [2, 9, 2]))]
    cases = [(ins["b"], 0), (bc, 0), (ins["b6"], 1), (ins["b3"], 0), (ins["b"], 0), (ins["b2"], 2)]
    nodes, outputs = [], []
    for i, (bias, split) in enumerate(cases):
        m, r, y = Value(f"m{i}"), Value(f"r{i}"), Value(f"y{i}")
        nodes += [Node("MatMul", [ins["x"], ins["w"]], [m], name=f"mm{i}"),
                  Node("Reshape", [m, splits[split]], [r], name=f"split{i}"),
                  Node("Add", [bias, r] if i == 1 else [r, bias], [y], name=f"add{i}")]
        outputs += [y, r] if i == 4 else [y]
    graph = Graph(inputs=list(ins.values()), outputs=outputs, nodes=nodes, initializers=[bc, *splits], opsets={"": 17})
    return infer_shapes(graph), feeds


def test_head_biases_go_into_the_product_epilogue_with_identical_values():
    graph, feeds = head_projections()
    want = Executor(graph).run(feeds)
    graph, _ = head_projections()
    after = fold_head_biases(graph)
    assert [(n.op, n.name) for n in after.nodes][:8] == [
        ("Reshape", "add0/bias_row"), ("FusedMatMul", "mm0/biased"), ("Reshape", "split0/biased"),
        ("FusedMatMul", "mm1/biased"), ("Reshape", "split1/biased"),  # the constant bias: a constant row
        ("Reshape", "add2/bias_row"), ("FusedMatMul", "mm2/biased"), ("Reshape", "split2/biased")]
    assert [n.op for n in after.nodes][8:] == ["MatMul", "Reshape", "Add"] * 3
    assert after.nodes[3].inputs[2].const.shape == (6,)
    got = Executor(after).run(feeds)
    for g, w in zip(got, want, strict=True):
        np.testing.assert_array_equal(g, w)
    x, w, b = feeds["x"], feeds["w"], feeds["b"]
    np.testing.assert_allclose(got[0], (x @ w).reshape(2, 3, 2, 3) + b, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got[2], (x @ w).reshape(3, 2, 6) + feeds["b6"], rtol=1e-5, atol=1e-6)


def scaled_scores() -> tuple[Graph, dict]:
    """Attention's scale: Mul -> Softmax forward, SoftmaxGrad -> Mul backward (the product read twice); and a
    scaled Softmax over another axis, a scale read twice and a float64-looking scale, which stay."""
    rng = np.random.default_rng(4)
    feeds = {"s": rng.standard_normal((2, 2, 4, 4)).astype(np.float32) * 5,
             "dy": rng.standard_normal((2, 2, 4, 4)).astype(np.float32)}
    ins = {k: Value(k, TensorType(F32, a.shape)) for k, a in feeds.items()}
    c, c64 = Value("c", const=np.array(0.25, np.float32)), Value("c64", const=np.array(0.25, np.float64))
    v = {n: Value(n) for n in ("ss", "p", "g", "gs", "da", "db", "t", "q", "t2", "q2", "u")}
    nodes = [Node("Mul", [ins["s"], c], [v["ss"]]), Node("Softmax", [v["ss"]], [v["p"]], {"axis": -1}),
             Node("SoftmaxGrad", [ins["dy"], v["p"]], [v["g"]], domain="opencann"),
             Node("Mul", [c, v["g"]], [v["gs"]]), Node("Neg", [v["gs"]], [v["da"]]), Node("Abs", [v["gs"]], [v["db"]]),
             Node("Mul", [ins["s"], c], [v["t"]]), Node("Softmax", [v["t"]], [v["q"]], {"axis": 1}),
             Node("Mul", [ins["dy"], c], [v["t2"]]), Node("Softmax", [v["t2"]], [v["q2"]], {"axis": 3}),
             Node("Exp", [v["t2"]], [v["u"]])]
    graph = Graph(inputs=list(ins.values()), outputs=[v[n] for n in ("p", "da", "db", "q", "q2", "u")], nodes=nodes,
                  initializers=[c, c64], opsets={"": 17, "opencann": 1})
    return infer_shapes(graph), feeds


def test_score_scales_fold_into_softmax_and_its_gradient_with_identical_values():
    graph, feeds = scaled_scores()
    want = Executor(graph).run(feeds)
    graph, _ = scaled_scores()
    after = fold_scales(graph)
    assert [(n.domain, n.op, n.attrs.get("scale")) for n in after.nodes][:4] == [
        ("opencann", "ScaledSoftmax", 0.25), ("opencann", "SoftmaxGrad", 0.25), ("", "Neg", None), ("", "Abs", None)]
    assert [n.op for n in after.nodes][4:] == ["Mul", "Softmax", "Mul", "Softmax", "Exp"]
    got = Executor(after).run(feeds)
    for g, w in zip(got, want, strict=True):
        np.testing.assert_array_equal(g, w)
    p = np.exp(feeds["s"] / 4 - (feeds["s"] / 4).max(-1, keepdims=True))
    np.testing.assert_allclose(got[0], p / p.sum(-1, keepdims=True), rtol=1e-5, atol=1e-7)
    graph, _ = scaled_scores()
    graph.nodes[0].inputs[1] = graph.initializers[1]  # a float64 scale: left alone
    assert [n.op for n in fold_scales(graph).nodes][:2] == ["Mul", "Softmax"]
    graph, _ = scaled_scores()
    graph.opsets[""] = 12
    del graph.nodes[1].attrs["axis"]  # opset 12's default axis 1: over the last three axes
    assert [n.op for n in fold_scales(graph).nodes][:2] == ["Mul", "Softmax"]


def bias_gradient_sums() -> tuple[Graph, dict]:
    """Per-head bias gradients: ReduceSum over the leading axes (keepdims) then Reshape to the kept axes, twice (axes
    given negative once); and three that stay: a reshape to another shape, a sum also returned, a sum without
    keepdims."""
    x = np.random.default_rng(5).standard_normal((2, 3, 4, 5)).astype(np.float32)
    ins = Value("x", TensorType(F32, x.shape))
    consts = [Value(n, const=np.array(c, np.int64)) for n, c in
              (("lead", [0, 1]), ("lead_neg", [-4, 1]), ("heads", [4, 5]), ("flat", [20]))]
    lead, lead_neg, heads, flat = consts
    v = {n: Value(n) for n in ("s0", "g0", "s1", "g1", "s2", "g2", "s3", "g3", "s4", "g4")}
    nodes = [Node("ReduceSum", [ins, lead], [v["s0"]], {"keepdims": 1}), Node("Reshape", [v["s0"], heads], [v["g0"]]),
             Node("ReduceSum", [ins, lead_neg], [v["s1"]], {"keepdims": 1}),
             Node("Reshape", [v["s1"], heads], [v["g1"]]),
             Node("ReduceSum", [ins, lead], [v["s2"]], {"keepdims": 1}), Node("Reshape", [v["s2"], flat], [v["g2"]]),
             Node("ReduceSum", [ins, lead], [v["s3"]], {"keepdims": 1}), Node("Reshape", [v["s3"], heads], [v["g3"]]),
             Node("ReduceSum", [ins, lead], [v["s4"]], {"keepdims": 0}), Node("Reshape", [v["s4"], heads], [v["g4"]])]
    graph = Graph(inputs=[ins], outputs=[v[n] for n in ("g0", "g1", "g2", "g3", "s3", "g4")], nodes=nodes,
                  initializers=consts, opsets={"": 17})
    return infer_shapes(graph), {"x": x}


def test_bias_gradient_sums_drop_their_reshape_with_identical_values():
    graph, feeds = bias_gradient_sums()
    want = Executor(graph).run(feeds)
    graph, _ = bias_gradient_sums()
    after = fold_sum_reshapes(graph)
    assert [(n.op, n.attrs.get("keepdims")) for n in after.nodes] == [
        ("ReduceSum", 0), ("ReduceSum", 0), ("ReduceSum", 1), ("Reshape", None), ("ReduceSum", 1), ("Reshape", None),
        ("ReduceSum", 0), ("Reshape", None)]
    got = Executor(after).run(feeds)
    for g, w in zip(got, want, strict=True):
        np.testing.assert_array_equal(g, w)
    np.testing.assert_allclose(got[0], feeds["x"].sum((0, 1)), rtol=1e-5, atol=1e-6)


def test_fold_attention_runs_the_three_folds():
    graphs = [head_projections()[0], scaled_scores()[0], bias_gradient_sums()[0]]
    counts = [len(g.nodes) for g in graphs]
    assert [len(fold_attention(g).nodes) for g in graphs] == [counts[0] - 1, counts[1] - 2, counts[2] - 2]


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



# ---- LSTM cells (fuse_rnn_loops, cpu_rnn_train)

B, I, H = 3, 5, 4


def _fused(inputs: list, outputs: list[Value], nodes: list[Node], params: list[Value], results: list[Value]) -> Node:
    body = Graph(inputs=params, outputs=results, nodes=nodes, opsets={"": 17, "opencann": 1})
    return Node("FusedElementwise", inputs, outputs, {"body": body}, domain="opencann")


_ids = itertools.count()


def _n(op: str, *inputs: Value, domain: str = "") -> Node:
    return Node(op, list(inputs), [Value(f"{op}{next(_ids)}")], domain=domain)


def _out(node: Node) -> Value:
    return node.outputs[0]


def cell(g_op: str = "Tanh") -> Graph:
    """A Keras LSTM cell as a loop body holds it after fusion, with its gate blocks in the order f, i, o, g
    and each fused body reading its inputs in a shuffled order, computing with commuted operands."""
    t = {n: Value(n, TensorType(F32, s)) for n, s in (("x", (B, I)), ("h", (B, H)), ("c", (B, H)),
                                                     ("w", (I, 4 * H)), ("r", (H, 4 * H)), ("b", (4 * H,)))}
    m1, m2, z = Value("m1"), Value("m2"), Value("z")
    p = [Value(f"p{k}") for k in range(3)]  # m2, b, m1
    s1 = _n("Add", p[2], p[0])
    s2 = _n("Sum", p[1], _out(s1))
    add = _fused([m2, t["b"], m1], [z], [s1, s2], p, [_out(s2)])
    parts = [Value(f"z{k}") for k in range(4)]
    q = [Value(f"q{k}") for k in range(5)]  # c, z2 (o), z0 (f), z1 (i), z3 (g)
    i, f, g, o = _n("Sigmoid", q[3]), _n("Sigmoid", q[2]), _n(g_op, q[4]), _n("Sigmoid", q[1])
    ig, fc = _n("Mul", _out(i), _out(g)), _n("Mul", q[0], _out(f))
    cn = _n("Add", _out(ig), _out(fc))
    tc = _n("Tanh", _out(cn))
    hn = _n("Mul", _out(tc), _out(o))
    outs = [Value(n) for n in ("hn", "cn", "i")]
    fe = _fused([t["c"], parts[2], parts[0], parts[1], parts[3]], outs, [i, f, g, o, ig, fc, cn, tc, hn], q,
                [_out(hn), _out(cn), _out(i)])
    nodes = [Node("MatMul", [t["x"], t["w"]], [m1]), Node("MatMul", [t["h"], t["r"]], [m2]), add,
             Node("Split", [z], parts, {"axis": 1, "num_outputs": 4}), fe]
    return infer_shapes(Graph(inputs=list(t.values()), outputs=outs, nodes=nodes, opsets={"": 18, "opencann": 1}))


def _sigmoid(v):
    return 1 / (1 + np.exp(-v))


def test_lstm_cell_becomes_one_node_and_matches_numpy():
    feeds = {n: RNG.standard_normal(v.type.shape).astype(np.float32) for n, v in
             ((v.name, v) for v in cell().inputs)}
    after = fuse_lstm_cells(cell())
    assert [n.op for n in after.nodes] == ["LSTMCellForward"]
    assert after.nodes[0].attrs["gates"] == [1, 0, 3, 2] and after.nodes[0].attrs["results"] == [6, 4, 0]
    z = (feeds["x"].astype(np.float64) @ feeds["w"] + feeds["h"] @ feeds["r"] + feeds["b"]).reshape(B, 4, H)
    f, i, o, g = _sigmoid(z[:, 0]), _sigmoid(z[:, 1]), _sigmoid(z[:, 2]), np.tanh(z[:, 3])
    c = f * feeds["c"] + i * g
    got = Executor(after).run(feeds)
    for a, want in zip(got, (o * np.tanh(c), c, i), strict=True):
        assert a.dtype == F32 and a.shape == (B, H)
        np.testing.assert_allclose(a, want, rtol=1e-5, atol=1e-6)


def test_other_cells_are_left_alone():
    assert [n.op for n in fuse_lstm_cells(cell("Relu")).nodes] == ["MatMul", "MatMul", "FusedElementwise", "Split",
                                                                  "FusedElementwise"]


CELL_GRAD = ("dh1", "dh2", "tc", "o", "dc", "c", "f", "g", "i")


def cell_grad() -> Graph:
    """An LSTM cell's gradient as the gradient loop body holds it: the fused gate gradients (inputs shuffled,
    operands commuted), their Concat (blocks f, i, g, o), the bias gradient and four products (two with a
    Transpose, two accumulated, one with its operand untransposed), each accumulation in its own operand order."""
    t = {n: Value(n, TensorType(F32, (B, H))) for n in CELL_GRAD}
    t.update({n: Value(n, TensorType(F32, s)) for n, s in (("w", (I, 4 * H)), ("x", (B, I)), ("r", (H, 4 * H)),
                                                           ("hpt", (H, B)), ("acc_w", (I, 4 * H)),
                                                           ("acc_r", (H, 4 * H)), ("acc_b", (4 * H,)))})
    order = ["i", "dc", "tc", "dh2", "f", "o", "g", "c", "dh1"]
    e = {k: Value(f"e{k}") for k in order}
    dh = _n("Sum", e["dh1"], e["dh2"])
    m_o = _n("Mul", e["tc"], _out(dh))
    do = _n("SigmoidGrad", e["o"], _out(m_o), domain="opencann")
    m_t = _n("Mul", _out(dh), e["o"])
    tg = _n("TanhGrad", e["tc"], _out(m_t), domain="opencann")
    dcs = _n("Add", _out(tg), e["dc"])
    m_f = _n("Mul", _out(dcs), e["c"])
    df = _n("SigmoidGrad", e["f"], _out(m_f), domain="opencann")
    dcp = _n("Mul", e["f"], _out(dcs))
    m_i = _n("Mul", _out(dcs), e["g"])
    di = _n("SigmoidGrad", e["i"], _out(m_i), domain="opencann")
    m_g = _n("Mul", e["i"], _out(dcs))
    dg = _n("TanhGrad", e["g"], _out(m_g), domain="opencann")
    v = {k: Value(k) for k in ("do", "dcp", "df", "di", "dg", "dz", "bg", "sb", "t1", "dx", "t2", "dw", "sw", "t3",
                               "dhp", "dr", "sr")}
    body = [dh, m_o, do, m_t, tg, dcs, m_f, df, dcp, m_i, di, m_g, dg]
    nodes = [_fused([t[k] for k in order], [v[k] for k in ("do", "dcp", "df", "di", "dg")], body,
                    [e[k] for k in order], [_out(n) for n in (do, dcp, df, di, dg)]),
             Node("Concat", [v["df"], v["di"], v["dg"], v["do"]], [v["dz"]], {"axis": 1}),
             Node("BiasAddGrad", [v["dz"]], [v["bg"]], domain="opencann"),
             Node("Sum", [t["acc_b"], v["bg"]], [v["sb"]]),
             Node("Transpose", [t["w"]], [v["t1"]], {"perm": [1, 0]}), Node("MatMul", [v["dz"], v["t1"]], [v["dx"]]),
             Node("Transpose", [t["x"]], [v["t2"]], {"perm": [1, 0]}), Node("MatMul", [v["t2"], v["dz"]], [v["dw"]]),
             Node("Sum", [t["acc_w"], v["dw"]], [v["sw"]]),
             Node("Transpose", [t["r"]], [v["t3"]], {"perm": [1, 0]}), Node("MatMul", [v["dz"], v["t3"]], [v["dhp"]]),
             Node("MatMul", [t["hpt"], v["dz"]], [v["dr"]]), Node("Add", [v["dr"], t["acc_r"]], [v["sr"]])]
    return infer_shapes(Graph(inputs=list(t.values()), outputs=[v[k] for k in ("dcp", "dx", "sw", "dhp", "sr", "sb")],
                              nodes=nodes, opsets={"": 18, "opencann": 1}))


def test_lstm_cell_gradient_becomes_one_node_and_matches_numpy():
    feeds = {v.name: RNG.standard_normal(v.type.shape).astype(np.float32) for v in cell_grad().inputs}
    for k in ("tc", "o", "f", "g", "i"):  # activations: in (-1, 1)
        feeds[k] = np.tanh(feeds[k])
    after = fuse_lstm_cells(cell_grad())
    assert [n.op for n in after.nodes] == ["LSTMCellBackward"]
    attrs = after.nodes[0].attrs
    assert attrs["gates"] == [1, 0, 2, 3] and attrs["products"] == [0, 1, 0, 3]
    assert attrs["accumulate"] == [0, 1, 0, 1] and attrs["bias"] == 1 and attrs["dc_out"] == 1
    a = {k: v.astype(np.float64) for k, v in feeds.items()}
    dh = a["dh1"] + a["dh2"]
    dc = a["dc"] + dh * a["o"] * (1 - a["tc"] ** 2)
    dz = np.concatenate([dc * a["c"] * a["f"] * (1 - a["f"]), dc * a["g"] * a["i"] * (1 - a["i"]),
                         dc * a["i"] * (1 - a["g"] ** 2), dh * a["tc"] * a["o"] * (1 - a["o"])], axis=1)
    want = [dc * a["f"], dz @ a["w"].T, a["acc_w"] + a["x"].T @ dz, dz @ a["r"].T, a["hpt"] @ dz + a["acc_r"],
            a["acc_b"] + dz.sum(axis=0)]
    for got, w in zip(Executor(after).run(feeds), want, strict=True):
        assert got.dtype == F32 and got.shape == w.shape
        np.testing.assert_allclose(got, w, rtol=1e-5, atol=1e-5)


def test_a_gate_gradient_read_elsewhere_keeps_the_group():
    graph = cell_grad()
    graph.outputs.append(graph.nodes[1].inputs[0])  # df leaves the body too
    assert [n.op for n in fuse_lstm_cells(graph).nodes][:2] == ["FusedElementwise", "Concat"]


def item_gradient() -> Graph:
    """A gradient loop body's accumulation of one element's gradient into a list (the one-item list is the AddN's
    first operand)."""
    acc, n, i, x = Value("acc"), Value("n", TensorType(np.dtype(np.int32), ())), Value("i"), Value("x")
    r, s, out = Value("r"), Value("s"), Value("out")
    nodes = [Node("TensorListReserve", [n], [r], domain="opencann"),
             Node("TensorListSetItem", [r, i, x], [s], domain="opencann"),
             Node("TensorListAddN", [s, acc], [out], domain="opencann")]
    return Graph(inputs=[acc, n, i, x], outputs=[out], nodes=nodes, opsets={"": 17, "opencann": 1})


def test_one_item_added_to_a_list_is_one_node():
    after = batch_list_ops(item_gradient())
    assert [n.op for n in after.nodes] == ["TensorListAddItem"]
    x = RNG.standard_normal((2, 3)).astype(np.float32)
    acc = [None, np.ones((2, 3), np.float32), None]
    for i in (0, 1):
        feeds = {"acc": acc, "n": np.int32(3), "i": np.int32(i), "x": x}
        (got,), (want,) = Executor(after).run(feeds), Executor(item_gradient()).run(feeds)
        assert [g is None for g in got] == [w is None for w in want] == [i != 0, False, True]
        np.testing.assert_array_equal(got[i], want[i])
    assert acc[0] is None  # the accumulator is never mutated
    with pytest.raises(AclError, match="differ in length"):
        Executor(after).run({"acc": acc, "n": np.int32(2), "i": np.int32(0), "x": x})
    graph = item_gradient()
    graph.outputs.append(graph.nodes[1].outputs[0])  # the one-item list is read elsewhere: kept
    assert [n.op for n in batch_list_ops(graph).nodes] == ["TensorListReserve", "TensorListSetItem", "TensorListAddN"]


def test_cell_kernels_reject_what_they_cannot_run():
    from opencann.ops.cpu_rnn_train import lstm_cell_backward, lstm_cell_forward

    z = np.zeros((B, H), np.float32)
    with pytest.raises(AclError, match="do not fit the state"):
        lstm_cell_forward(np.zeros((B + 1, I), np.float32), np.zeros((I, 4 * H), np.float32), z,
                          np.zeros((H, 4 * H), np.float32), np.zeros(4 * H, np.float32), z, gates=[0, 1, 2, 3],
                          results=[6])
    with pytest.raises(AclError, match="float32"):
        lstm_cell_backward(*[z.astype(np.float64)] * 9, gates=[0, 1, 2, 3], products=[], accumulate=[], bias=0,
                           dc_out=1)
    with pytest.raises(AclError, match="differ in shape"):
        lstm_cell_backward(*[z] * 8, z[:, :2].copy(), gates=[0, 1, 2, 3], products=[], accumulate=[], bias=0,
                           dc_out=1)
