"""The executor (kernel binding, errors, buffer reuse) and the CPU device (buffers, streams, events)."""
import threading
import time

import numpy as np
import onnx
import pytest
from onnx import helper

from opencann.compiler.ir import Graph, Node, TensorType, Value
from opencann.devices.cpu import ALIGNMENT, CpuDevice
from opencann.errors import AclError, ErrorCode
from opencann.frontends.onnx import import_onnx
from opencann.ops.registry import op
from opencann.runtime import Executor

DOMAIN = "test.executor"
calls: list[bool] = []


@op("NegInPlace", domain=DOMAIN)
def _neg(x, out=None):
    calls.append(out is not None)
    return np.negative(x, out=out)


@op("ViewOf", domain=DOMAIN)
def _view(x):
    return x[::-1]


@op("HeadSum", domain=DOMAIN)
def _head_sum(x, out=None):
    calls.append(out is not None)
    return x[:2] + x[2:]


@op("Neg", domain=DOMAIN)
def _neg_fresh(x):
    return -x


def chain(ops: list[str]) -> Graph:
    x = Value("x", TensorType(np.float32, (4,)))
    values = [x] + [Value(f"v{i}") for i in range(len(ops))]
    nodes = [Node(o, [values[i]], [values[i + 1]], domain=DOMAIN, name=f"n{i}") for i, o in enumerate(ops)]
    return Graph(inputs=[x], outputs=[values[-1]], nodes=nodes, opsets={"": 23, DOMAIN: 1})


def test_dead_private_buffers_are_reused_and_caller_arrays_never_written():
    calls.clear()
    x = np.arange(4, dtype=np.float32)
    (y,) = Executor(chain(["NegInPlace"] * 3)).run([x])
    np.testing.assert_array_equal(y, -np.arange(4))
    np.testing.assert_array_equal(x, np.arange(4))
    assert calls == [False, True, True]


def test_buffers_with_live_views_are_not_reused():
    calls.clear()
    x = Value("x", TensorType(np.float32, (4,)))
    a, view, b = Value("a"), Value("view"), Value("b")
    nodes = [Node("NegInPlace", [x], [a], domain=DOMAIN), Node("ViewOf", [a], [view], domain=DOMAIN),
             Node("NegInPlace", [a], [b], domain=DOMAIN)]  # a dies here, but `view` still reads its memory
    graph = Graph(inputs=[x], outputs=[b, view], nodes=nodes, opsets={"": 23, DOMAIN: 1})
    y, v = Executor(graph).run([np.arange(4, dtype=np.float32)])
    np.testing.assert_array_equal(v, -np.arange(4)[::-1])
    np.testing.assert_array_equal(y, np.arange(4))
    assert calls == [False, False]


def test_a_dying_input_of_another_static_shape_is_not_offered_as_out():
    """Kernels take ``out`` only when it matches the result: a statically different shape is not passed."""
    calls.clear()
    x = Value("x", TensorType(np.float32, (4,)))
    a, b = Value("a", TensorType(np.float32, (4,))), Value("b", TensorType(np.float32, (2,)))
    nodes = [Node("Neg", [x], [a], domain=DOMAIN), Node("HeadSum", [a], [b], domain=DOMAIN)]
    (y,) = Executor(Graph(inputs=[x], outputs=[b], nodes=nodes, opsets={"": 23, DOMAIN: 1})).run(
        [np.arange(4, dtype=np.float32)])
    np.testing.assert_array_equal(y, [-2, -4])
    assert calls == [False]
    (y,) = Executor(chain(["Neg", "HeadSum"])).run([np.arange(4, dtype=np.float32)])  # shapes unknown: offered
    np.testing.assert_array_equal(y, [-2, -4])
    assert calls == [False, True]


def test_unsupported_operators_are_listed_together():
    nodes = [helper.make_node("FancyOp", ["x"], ["y"], name="a", domain="x.y"),
             helper.make_node("FancyOp", ["y"], ["z"], name="b", domain="x.y"),
             helper.make_node("OtherOp", ["z"], ["w"], name="c", domain="x.y")]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])],
                          [helper.make_tensor_value_info("w", onnx.TensorProto.FLOAT, [1])])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("x.y", 1)])
    with pytest.raises(AclError) as e:
        Executor(import_onnx(model))
    assert e.value.code == ErrorCode.OP_NOT_FOUND
    assert "x.y::FancyOp (opset 1): nodes a, b" in str(e.value) and "x.y::OtherOp (opset 1): nodes c" in str(e.value)


def test_missing_inputs_and_unknown_attributes_are_clear_errors():
    with pytest.raises(AclError, match="missing input"):
        Executor(chain(["NegInPlace"])).run({})
    graph = chain(["NegInPlace"])
    graph.nodes[0].attrs["alpha"] = 1.0
    with pytest.raises(AclError, match="unknown attribute 'alpha'"):
        Executor(graph)


def test_buffers_are_aligned_and_copies_checked():
    dev = CpuDevice()
    buf = dev.alloc(100)
    assert buf.ptr % ALIGNMENT == 0 and buf.nbytes == 100
    src = np.arange(25, dtype=np.float32)
    dev.copy(buf, src, 100)
    np.testing.assert_array_equal(dev.view(buf, np.float32, (25,)), src)
    with pytest.raises(AclError, match="exceeds"):
        dev.copy(buf, np.zeros(40, np.float32), 160)
    with pytest.raises(AclError, match="exceeds"):
        dev.view(buf, np.float64, (25,))


def test_stream_runs_work_in_order_asynchronously():
    dev = CpuDevice()
    stream, order = dev.stream(), []
    gate = threading.Event()
    stream.enqueue(gate.wait)
    for i in range(100):
        stream.enqueue(lambda i=i: order.append(i))
    assert order == []  # the host was not blocked by the gated work
    gate.set()
    stream.synchronize()
    assert order == list(range(100))
    stream.destroy()


def test_events_time_and_order_work_across_streams():
    dev = CpuDevice()
    s1, s2 = dev.stream(), dev.stream()
    start, end, done = dev.event(), dev.event(), []
    start.record(s1)
    s1.enqueue(lambda: time.sleep(0.05))
    s1.enqueue(lambda: done.append("s1"))
    end.record(s1)
    s2.wait_event(end)
    s2.enqueue(lambda: done.append("s2"))
    s2.synchronize()
    assert done == ["s1", "s2"] and end.query()
    assert start.elapsed_ms(end) >= 45
    s1.destroy()
    s2.destroy()


def test_stream_errors_surface_at_synchronize():
    stream = CpuDevice().stream()
    stream.enqueue(lambda: 1 / 0)
    with pytest.raises(AclError) as e:
        stream.synchronize()
    assert e.value.code == ErrorCode.INTERNAL_ERROR
    stream.destroy()


class CountingScope(dict):
    """An enclosing scope that counts its lookups."""

    reads = 0

    def __getitem__(self, name):
        self.reads += 1
        return super().__getitem__(name)


def test_a_body_reads_its_captured_values_once_per_scope():
    from opencann.runtime.executor import Plan, Subgraph

    i, w, t, y = Value("i", TensorType(np.float32, (2,))), Value("w"), Value("t"), Value("y")
    c = Value("c", const=np.float32(2))
    body = Graph(inputs=[i], outputs=[y], nodes=[Node("Mul", [i, w], [t]), Node("Add", [t, c], [y])],
                 initializers=[c], opsets={"": 17})
    scope = CountingScope(w=np.array([3, 4], np.float32), unrelated=np.zeros(1))
    sub = Subgraph(Plan(body), scope)
    x = np.array([1, 2], np.float32)
    for _ in range(3):
        np.testing.assert_array_equal(sub(x)[0], [5, 10])
    assert scope.reads == 1  # w, read at the first call only
    with pytest.raises(AclError, match="takes 1 inputs, got 2"):
        sub(x, x)


@op("FlipInPlace", domain=DOMAIN)
def _flip(x, out=None):
    calls.append(out is not None)
    return np.logical_not(x, out=out)


def test_loop_iterations_share_a_condition_input_no_kernel_may_write():
    """Every iteration gets the same read-only ``True`` as its condition input: a kernel offered ``out`` for a
    dying input never receives it, so the next iteration still reads True (3 iterations, not 1 or 2)."""
    it, cond, v = Value("it", TensorType(np.int64, ())), Value("cond", TensorType(np.bool_, ())), Value("v")
    one = Value("one", const=np.array(1, np.int64))
    c1, c2, v2 = Value("c1"), Value("c2"), Value("v2")
    body = Graph(inputs=[it, cond, v], outputs=[c2, v2, c1],
                 nodes=[Node("FlipInPlace", [cond], [c1], domain=DOMAIN), Node("Not", [c1], [c2]),
                        Node("Add", [v, one], [v2])], initializers=[one], opsets={"": 17, DOMAIN: 1})
    m, v0, out, scan = Value("m", const=np.array(3, np.int64)), Value("v0"), Value("out"), Value("scan")
    graph = Graph(inputs=[v0], outputs=[out, scan], nodes=[Node("Loop", [m, None, v0], [out, scan], {"body": body})],
                  initializers=[m], opsets={"": 17, DOMAIN: 1})
    calls.clear()
    got = Executor(graph).run([np.array(0, np.int64)])
    assert int(got[0]) == 3 and got[1].tolist() == [False] * 3
    assert calls == [False] * 3


@op("ScaleAdd", domain=DOMAIN)
def _scale_add(x, y, *, k=1.0):
    return x * k + y


_scale_add.bind_attrs = lambda k=1.0: lambda x, y: x * k + y + 100  # a kernel's own binding: what the launch list calls


def test_kernels_with_a_bind_hook_run_their_bound_closure_on_every_input():
    x, y, z = Value("x", TensorType(np.float32, (3,))), Value("y", TensorType(np.float32, (3,))), Value("z")
    graph = Graph(inputs=[x, y], outputs=[z], nodes=[Node("ScaleAdd", [x, y], [z], {"k": 2.0}, domain=DOMAIN)],
                  opsets={"": 23, DOMAIN: 1})
    a, b = np.arange(3, dtype=np.float32), np.full(3, 10, np.float32)
    for _ in range(2):
        np.testing.assert_array_equal(Executor(graph).run([a, b])[0], a * 2 + b + 100)



@op("Boom", domain=DOMAIN)
def _boom(x):
    raise ValueError("boom")


def _rotating_body(fail: bool = False) -> Graph:
    """Loop body (i, cond, v) -> (i < 10, halves of w - v swapped, -v): one-input, several-input and multi-output
    steps reading a captured ``w`` (``fail``: a kernel raises first)."""
    it, cond = Value("it", TensorType(np.int64, ())), Value("cond", TensorType(np.bool_, ()))
    ten = Value("ten", const=np.array(10, np.int64))
    v, w, n, a, s1, s2, r, c = (Value(k) for k in ("v", "w", "n", "a", "s1", "s2", "r", "c"))
    nodes = [Node("Neg", [v], [n]), Node("Add", [n, w], [a]),
             Node("Split", [a], [s1, s2], {"axis": 0, "num_outputs": 2}),
             Node("Concat", [s2, s1], [r], {"axis": 0}), Node("Less", [it, ten], [c])]
    if fail:
        nodes.insert(0, Node("Boom", [v], [Value("bad")], name="boom", domain=DOMAIN))
    return Graph(inputs=[it, cond, v], outputs=[c, r, n], nodes=nodes, initializers=[ten],
                 opsets={"": 18, DOMAIN: 1})


def _loop_graph(body: Graph, trips: int) -> Graph:
    m, v0, w = Value("m", const=np.array(trips, np.int64)), Value("v0"), Value("w")
    out, scan = Value("out"), Value("scan")
    return Graph(inputs=[v0, w], outputs=[out, scan], nodes=[Node("Loop", [m, None, v0], [out, scan], {"body": body})],
                 initializers=[m], opsets={"": 18, DOMAIN: 1})


def test_loop_bodies_run_through_the_tight_runner_with_the_values_of_the_general_path():
    from opencann.runtime.executor import Plan, Subgraph

    v, w = np.arange(4, dtype=np.float32), np.array([1, 2, 3, 4], np.float32)
    want_v, scans = v, []
    for _ in range(3):
        scans.append(-want_v)
        a = w - want_v
        want_v = np.concatenate([a[2:], a[:2]])
    out, scan = Executor(_loop_graph(_rotating_body(), 3)).run([v, w])
    np.testing.assert_array_equal(out, want_v)
    np.testing.assert_array_equal(scan, np.stack(scans))
    sub = Subgraph(Plan(_rotating_body()), {"w": w})
    inputs = (np.array(0, np.int64), np.array(True), v)
    run = sub.runner()
    for _ in range(2):  # each call starts from the body's own workspace
        for got, ref in zip(run(inputs), sub(*inputs), strict=True):
            np.testing.assert_array_equal(got, ref)
    with pytest.raises(AclError, match="node Boom 'boom' failed: ValueError: boom"):
        Executor(_loop_graph(_rotating_body(fail=True), 2)).run([v, w])
