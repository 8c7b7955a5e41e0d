"""Whole LSTM loops as one node (fuse_rnn_loops.fuse_lstm_loops, ops.cpu_rnn_loops): a Keras-shaped forward loop
and its gradient loop, built in the IR, give bit-identical results as LSTMSequenceForward/Backward and as plain
Loops of fused cells; other bodies stay Loops; what the fast path cannot take runs as the Loop."""
import itertools

import numpy as np
import pytest

import opencann.ops.cpu_rnn_loops as loops
import opencann.ops.cpu_rnn_train as cpu_rnn_train
from opencann.compiler.ir import Graph, Node, TensorType, Value
from opencann.compiler.passes.fuse_rnn_loops import fuse_lstm_loops
from opencann.errors import AclError
from opencann.runtime import Executor, workers
from tests.passes import F32

T, B, D, H = 5, 3, 4, 2
I32 = np.dtype(np.int32)
RNG = np.random.default_rng(0)
OPSETS = {"": 18, "opencann": 1}
_ids = itertools.count()


def _const(name: str, value) -> Value:
    return Value(name, const=np.asarray(value))


def _node(op: str, inputs: list, n: int = 1, domain: str = "opencann", **attrs) -> Node:
    return Node(op, inputs, [Value(f"{op}{next(_ids)}") for _ in range(n)], attrs, domain=domain)


def _graph(inputs: list[Value], outputs: list[Value], nodes: list[Node], name: str) -> Graph:
    """A graph whose constant operands are its initializers."""
    consts = {id(v): v for n in nodes for v in n.inputs if v is not None and v.const is not None}
    return Graph(inputs=inputs, outputs=outputs, nodes=nodes, initializers=list(consts.values()), opsets=OPSETS,
                 name=name)


def _loop(carried: list[Value], body: Graph) -> Node:
    cond = _const("true", True)
    return Node("Loop", [None, cond, *carried], [Value(f"loop{k}") for k in range(len(carried))], {"body": body})


def forward_body(extra: str | None = None) -> Graph:
    """Counters i (limit n) and t (limit T), the output list set at 0, h, c, the input list read at t, three pushes
    (c, x, o); ``extra``: an activation on h' (not an LSTM body any more)."""
    names = ("i", "n", "t", "out", "h", "c", "xs", "pc", "px", "po")
    ins = [Value("iter"), Value("cond"), *(Value(f"b_{k}") for k in names)]
    v = dict(zip(names, ins[2:], strict=True))
    x = _node("TensorListGetItem", [v["xs"], v["t"], _const("eshape", [B, D])], element_dtype=1)
    t1 = _node("Add", [v["t"], _const("one_t", np.int32(1))], domain="")
    i1 = _node("Add", [v["i"], _const("one_i", np.int32(1))], domain="")
    lt = _node("Less", [t1.outputs[0], _const("steps", np.int32(T))], domain="")
    li = _node("Less", [i1.outputs[0], v["n"]], domain="")
    cond = _node("And", [li.outputs[0], lt.outputs[0]], domain="")
    cell = _node("LSTMCellForward", [x.outputs[0], Value("w"), v["h"], Value("r"), Value("b"), v["c"]], 7,
                 gates=[1, 0, 3, 2], results=list(range(7)))
    h = cell.outputs[6]
    nodes = [x, t1, i1, lt, li, cond, cell]
    if extra:
        nodes.append(_node(extra, [h], domain=""))
        h = nodes[-1].outputs[0]
    put = _node("TensorListSetItem", [v["out"], _const("zero", np.int32(0)), h])
    pushes = [_node("SequenceInsert", [v[k], item], domain="") for k, item in
              (("pc", v["c"]), ("px", x.outputs[0]), ("po", cell.outputs[3]))]
    nodes += [put, *pushes]
    outs = [cond.outputs[0], i1.outputs[0], v["n"], t1.outputs[0], put.outputs[0], h, cell.outputs[4], v["xs"],
            *(p.outputs[0] for p in pushes)]
    return _graph(ins, outs, nodes, "forward")


def forward_graph(extra: str | None = None) -> Graph:
    """The forward loop over the rows of ``X`` and its outputs: h, c, the output list's element, the pushed lists
    stacked."""
    inputs = [Value(n, TensorType(F32, s)) for n, s in (("X", (T, B, D)), ("w", (D, 4 * H)), ("r", (H, 4 * H)),
                                                         ("b", (4 * H,)), ("h0", (B, H)), ("c0", (B, H)))]
    xs = Node("SplitToSequence", [inputs[0]], [Value("xs")], {"axis": 0, "keepdims": 0})
    out = _node("TensorListReserve", [_const("one", np.int32(1))])
    empty = Node("SequenceEmpty", [], [Value("empty")], {"dtype": 1})
    carried = [_const("i0", np.int32(0)), _const("n", np.int32(T)), _const("t0", np.int32(0)), out.outputs[0],
               inputs[4], inputs[5], xs.outputs[0], *[empty.outputs[0]] * 3]
    loop = _loop(carried, forward_body(extra))
    stacks = [_node("TensorListStack", [loop.outputs[k], _const(f"shape{k}", [B, H])], element_dtype=1)
              for k in (3, 7, 8, 9)]
    return _graph(inputs, [loop.outputs[4], loop.outputs[5], *(s.outputs[0] for s in stacks)],
                  [xs, out, empty, loop, *stacks], "lstm")


def feeds() -> dict[str, np.ndarray]:
    shapes = {"X": (T, B, D), "w": (D, 4 * H), "r": (H, 4 * H), "b": (4 * H,), "h0": (B, H), "c0": (B, H)}
    return {k: RNG.standard_normal(s).astype(np.float32) for k, s in shapes.items()}


def _sigmoid(v):
    return 1 / (1 + np.exp(-v))


@pytest.fixture
def fallbacks(monkeypatch) -> list:
    """One entry per run of a fused loop as the plain Loop."""
    calls, plain = [], loops.loop
    monkeypatch.setattr(loops, "loop", lambda *a, **k: calls.append(1) or plain(*a, **k))
    return calls


def test_forward_loop_is_one_node_bit_identical_to_the_loop_and_matching_numpy(fallbacks):
    data = feeds()
    fused = fuse_lstm_loops(forward_graph())
    assert [n.op for n in fused.nodes][3] == "LSTMSequenceForward"
    got, want = Executor(fused).run(data), Executor(forward_graph()).run(data)
    assert not fallbacks
    for a, b in zip(got, want, strict=True):
        np.testing.assert_array_equal(a, b)
    h, c = data["h0"].astype(np.float64), data["c0"].astype(np.float64)
    for step in range(T):
        z = (data["X"][step] @ data["w"] + h @ data["r"] + data["b"]).reshape(B, 4, H)
        f, i, o, g = _sigmoid(z[:, 0]), _sigmoid(z[:, 1]), _sigmoid(z[:, 2]), np.tanh(z[:, 3])
        np.testing.assert_allclose(got[5][step], o, rtol=1e-5, atol=1e-6)  # the pushed o
        c = f * c + i * g
        h = o * np.tanh(c)
    np.testing.assert_allclose(got[0], h, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got[2][0], h, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(got[4], data["X"])  # the pushed inputs


def test_other_bodies_stay_loops():
    assert "Loop" in [n.op for n in fuse_lstm_loops(forward_graph("Relu")).nodes]


@pytest.mark.parametrize("case", ["no_mkl", "hole"])
def test_what_the_fast_path_cannot_take_runs_as_the_loop(monkeypatch, fallbacks, case):
    data = feeds()
    graph = fuse_lstm_loops(forward_graph())
    if case == "no_mkl":
        monkeypatch.setattr(loops, "sgemm_address", lambda: 0)
        got, want = Executor(graph).run(data), Executor(forward_graph()).run(data)
        for a, b in zip(got, want, strict=True):
            np.testing.assert_array_equal(a, b)
    else:  # the input list has a hole: read as zeros, as the Loop does
        graph.nodes[0] = Node("TensorListReserve", [_const("steps_n", np.int32(T))], [Value("xs")], domain="opencann")
        got = Executor(_graph(graph.inputs, graph.outputs, graph.nodes, "holes")).run(data)
        np.testing.assert_array_equal(got[4], np.zeros((T, B, D), F32))
    assert fallbacks == [1]


POPPED = (("tc", (B, H)), ("o", (B, H)), ("c", (B, H)), ("f", (B, H)), ("g", (B, H)), ("gi", (B, H)),
          ("pw", (D, 4 * H)), ("px", (B, D)), ("pr", (H, 4 * H)), ("ph", (B, H)))


def backward_body() -> Graph:
    """Keras' gradient loop body: the cell's gradient reading dh from a list (then zeroed) and the values the
    forward loop pushed, popped; dx added into a list at the popped step; the weight gradients accumulated."""
    names = ("i", "n", "dhl", "dh", "dc", "dxs", "aw", "ar", "ab", *(k for k, _ in POPPED), "count", "t")
    ins = [Value("g_iter"), Value("g_cond"), *(Value(f"g_{k}") for k in names)]
    v = dict(zip(names, ins[2:], strict=True))
    pops = {k: _node("TensorListPopBack", [v[k], _const(f"g_shape_{k}", np.int32(-1))], 2,
                     element_dtype=6 if k in ("count", "t") else 1) for k in (*(k for k, _ in POPPED), "count", "t")}
    got = {k: p.outputs[1] for k, p in pops.items()}
    index = _const("g_zero", np.int32(0))
    read = _node("TensorListGetItem", [v["dhl"], index, _const("g_eshape", [B, H])], element_dtype=1)
    zeroed = _node("TensorListSetItem", [v["dhl"], index, _const("g_zeros", np.zeros((B, H), F32))])
    cell = _node("LSTMCellBackward", [v["dh"], read.outputs[0], *(got[k] for k in ("tc", "o")), v["dc"],
                                      *(got[k] for k in ("c", "f", "g", "gi", "pw", "px", "pr", "ph")),
                                      v["aw"], v["ar"], v["ab"]], 6, gates=[0, 1, 2, 3], products=[0, 1, 0, 1],
                 accumulate=[0, 1, 0, 1], bias=1, dc_out=1)
    reserve = _node("TensorListReserve", [got["count"]])
    one = _node("TensorListSetItem", [reserve.outputs[0], got["t"], cell.outputs[1]])
    add = _node("TensorListAddN", [v["dxs"], one.outputs[0]])
    i1 = _node("Add", [v["i"], _const("g_one", np.int32(1))], domain="")
    less = _node("Less", [i1.outputs[0], v["n"]], domain="")
    nodes = [*pops.values(), read, zeroed, cell, reserve, one, add, i1, less]
    outs = [less.outputs[0], i1.outputs[0], v["n"], zeroed.outputs[0], cell.outputs[3], cell.outputs[0],
            add.outputs[0], cell.outputs[2], cell.outputs[4], cell.outputs[5], *(p.outputs[0] for p in pops.values())]
    return _graph(ins, outs, nodes, "gradient")


def backward_graph() -> Graph:
    """The gradient loop over lists made from the inputs; outputs: dh, dc, the summed gradients, dx stacked."""
    tensors = [("DH", (1, B, H)), ("DH0", (B, H)), ("DC0", (B, H)), ("X", (T, B, D)), ("AW", (D, 4 * H)),
               ("AR", (H, 4 * H)), ("AB", (4 * H,)), *((k.upper(), (T, *s)) for k, s in POPPED)]
    inputs = [Value(n, TensorType(F32, s)) for n, s in tensors] + [Value("COUNT", TensorType(I32, (T,))),
                                                                   Value("TS", TensorType(I32, (T,)))]
    split = {v.name: _node("SplitToSequence", [v], domain="", axis=0, keepdims=0) for v in inputs
             if v.name not in ("DH0", "DC0", "AW", "AR", "AB")}
    zeros = _node("TensorListZerosLike", [split["X"].outputs[0]])
    seq = {k: n.outputs[0] for k, n in split.items()}
    carried = [_const("g_i0", np.int32(0)), _const("g_n", np.int32(T)), seq["DH"], inputs[1], inputs[2],
               zeros.outputs[0], *inputs[4:7], *(seq[k.upper()] for k, _ in POPPED), seq["COUNT"], seq["TS"]]
    loop = _loop(carried, backward_body())
    stack = _node("TensorListStack", [loop.outputs[5], _const("g_xshape", [B, D])], element_dtype=1)
    return _graph(inputs, [*(loop.outputs[k] for k in (3, 4, 6, 7, 8)), stack.outputs[0]],
                  [*split.values(), zeros, loop, stack], "lstm_grad")


def backward_feeds() -> dict[str, np.ndarray]:
    out = {v.name: RNG.standard_normal(v.type.shape).astype(np.float32) for v in backward_graph().inputs[:-2]}
    for k in ("TC", "O", "F", "G", "GI"):
        out[k] = np.tanh(out[k])
    out["COUNT"], out["TS"] = np.full(T, T, np.int32), np.arange(T, dtype=np.int32)
    return out


@pytest.fixture(params=[1, 2], ids=["serial", "two_threads"])
def threads(request, monkeypatch):
    """The workers' size; with two, the gradient's products split over them however small (the calls are
    counted)."""
    before, splits = workers.size(), []
    if request.param == 2:
        monkeypatch.setattr(cpu_rnn_train, "PARALLEL_MACS", 0)
        plain = workers.parallel_for
        monkeypatch.setattr(workers, "parallel_for", lambda fn, n: splits.append(n) or plain(fn, n))
    workers.set_size(request.param)
    yield request.param, splits
    workers.set_size(before)


def test_gradient_loop_is_one_node_bit_identical_to_the_loop(fallbacks, threads):
    data = backward_feeds()
    fused = fuse_lstm_loops(backward_graph())
    assert "LSTMSequenceBackward" in [n.op for n in fused.nodes]
    got = Executor(fused).run(data)
    assert threads[1] == ([4] if threads[0] == 2 else [])  # dx, dW, dR, the bias: one piece each
    want = Executor(backward_graph()).run(data)
    assert not fallbacks
    for a, b in zip(got, want, strict=True):
        np.testing.assert_array_equal(a, b)
    # the first step pops the last elements: dx of step T-1 lands at its popped index T-1
    assert np.abs(got[5][-1]).sum() > 0 and not np.array_equal(got[5][0], got[5][-1])


def test_a_gradient_loop_the_fast_path_cannot_take_fails_as_the_loop(fallbacks):
    data = backward_feeds()
    data["COUNT"] = data["COUNT"] + 1  # the accumulated list's length is not the popped count
    for graph in (fuse_lstm_loops(backward_graph()), backward_graph()):
        with pytest.raises(AclError, match="differ in length"):
            Executor(graph).run(data)
    assert fallbacks == [1]
