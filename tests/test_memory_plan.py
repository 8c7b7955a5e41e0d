"""The static memory planner (opencann.runtime.memory_plan) and its report in ``opencann atc --mode 6``.

onnxruntime's figures come from its profiler: each node event carries ``output_size`` (bytes of its
outputs) and ``mem_in_use_peak`` (bytes in use in its CPU arena, weights included); ORT's activation
peak is the largest ``mem_in_use_peak`` of two runs minus the bytes in use before the first node of the first
(the second run allocates its memory pattern, one block, before its first node).
"""
import json
import threading

import numpy as np
import pytest

from opencann.cli.main import main
from opencann.compiler.ir import Graph, Node, TensorType, Value
from opencann.compiler.passes.shape_inference import infer_shapes
from opencann.compiler.pipeline import compile_graph
from opencann.errors import AclError
from opencann.frontends.onnx import import_onnx
from opencann.runtime.executor import Plan
from opencann.runtime.memory_plan import ALIGNMENT, INPLACE_OPS, plan_arena, plan_memory
from tests.models import build


def vec(name: str, n: int) -> Value:
    return Value(name, TensorType(np.float32, (n,)))


def check_valid(graph: Graph, plan) -> None:
    """Every sized activation is in one buffer; buffers alive at the same step never share bytes."""
    names = [n for b in plan.buffers for n in b.names]
    assert len(names) == len(set(names)) == sum(1 for n in graph.nodes for v in n.outputs if v.name) - len(plan.unknown)
    for i, a in enumerate(plan.buffers):
        assert a.offset % ALIGNMENT == 0 and a.offset + a.size <= plan.arena_bytes
        for b in plan.buffers[i + 1:]:
            if a.start <= b.end and b.start <= a.end:
                assert a.offset + a.size <= b.offset or b.offset + b.size <= a.offset, (a, b)
    assert plan.live_bytes <= plan.arena_bytes <= aligned_total(plan)


def aligned_total(plan) -> int:
    return sum(-(-b.size // ALIGNMENT) * ALIGNMENT for b in plan.buffers)


def test_freed_buffers_are_reused_and_elementwise_ops_work_in_place():
    x, a, b, c, d = vec("x", 64), vec("a", 256), vec("b", 256), vec("c", 256), vec("d", 64)
    w = Value("w", const=np.ones((64, 256), np.float32))
    nodes = [Node("MatMul", [x, w], [a]), Node("Relu", [a], [b]), Node("Exp", [b], [c]),
             Node("ReduceSum", [c], [d], {"keepdims": 0})]
    d.type = TensorType(np.float32, ())
    g = Graph(inputs=[x], outputs=[d, a], nodes=nodes, initializers=[w], opsets={"": 17})
    plan = plan_memory(g)
    check_valid(g, plan)
    offsets = plan.offsets()
    assert offsets["c"][0] == offsets["b"][0] != offsets["a"][0]  # a is a graph output: never overwritten
    assert plan.inplace == 1 and plan.naive_bytes == 3 * 1024 + 4
    assert plan.arena_bytes == 2 * 1024 + ALIGNMENT


def test_a_dead_buffer_is_reused_by_a_later_one():
    x = vec("x", 16)
    vals = [vec(f"v{i}", 1024) for i in range(4)]
    nodes = [Node("Tile", [x, Value(f"r{i}", const=np.array([64]))], [vals[i]]) for i in range(2)]
    nodes += [Node("Sub", [vals[0], vals[1]], [vals[2]]), Node("Neg", [vals[2]], [vals[3]])]
    g = Graph(inputs=[x], outputs=[vals[3]], nodes=nodes, opsets={"": 17})
    plan = plan_memory(g)
    check_valid(g, plan)
    assert plan.arena_bytes == 2 * 4096 and plan.naive_bytes == 4 * 4096 and plan.inplace == 2


@pytest.mark.parametrize("name", ["mlp", "resnet", "lstm"])
def test_plans_of_the_test_models_are_valid(name):
    model, _ = build(name, 1)
    for graph in (infer_shapes(import_onnx(model)), infer_shapes(compile_graph(import_onnx(model)).graph)):
        plan = plan_memory(graph)
        check_valid(graph, plan)
        assert not plan.unknown
        assert plan.arena_bytes < plan.naive_bytes or len(plan.buffers) < 3  # alignment can cost a little
        produced_by = {v.name: n for n in graph.nodes for v in n.outputs}
        for b in plan.buffers:
            assert all(produced_by[n].op in INPLACE_OPS for n in b.names[1:])


def ort_profile(model: bytes, x, optimize: bool) -> list[dict]:
    """The node events of two onnxruntime runs of ``model`` (the first one sets its memory pattern)."""
    ort = pytest.importorskip("onnxruntime")
    import os
    import tempfile

    opts = ort.SessionOptions()
    opts.enable_profiling = True
    opts.profile_file_prefix = os.path.join(tempfile.mkdtemp(), "ort")
    opts.intra_op_num_threads = 1
    if not optimize:
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"])
    feed = {sess.get_inputs()[0].name: x}
    sess.run(None, feed)
    sess.run(None, feed)
    with open(sess.end_profiling()) as f:
        events = [e for e in json.load(f) if e.get("cat") == "Node" and e["name"].endswith("_kernel_time")]
    return events


def ort_activation_peak(events: list[dict]) -> int:
    first = events[0]["args"]
    base = int(first["mem_bytes_in_use"]) - int(first["mem_in_use_delta"])
    return max(int(e["args"]["mem_in_use_peak"]) for e in events) - base


@pytest.mark.parametrize("name", ["mlp", "resnet"])
def test_sizes_agree_with_onnxruntime_and_peaks_are_printed(name, capsys):
    model, x = build(name, 1)
    graph = infer_shapes(import_onnx(model))
    events = ort_profile(model, x, optimize=False)
    ort_sizes = {e["name"].removesuffix("_kernel_time"): int(e["args"]["output_size"]) for e in events}
    assert len(ort_sizes) == len(events) // 2
    ours = {n.name: sum(np.prod(v.type.shape, dtype=np.int64) * v.type.dtype.itemsize for v in n.outputs)
            for n in graph.nodes if n.name in ort_sizes}
    assert ours and ours == {k: ort_sizes[k] for k in ours}
    plan = plan_memory(infer_shapes(compile_graph(import_onnx(model)).graph))
    ort_peak = ort_activation_peak(ort_profile(model, x, optimize=True))
    with capsys.disabled():
        print(f"\n{name}: opencann planned arena {plan.arena_bytes} B (naive {plan.naive_bytes} B), "
              f"onnxruntime activation peak {ort_peak} B")
    assert 0 < plan.arena_bytes <= aligned_total(plan) and ort_peak > 0


def test_atc_mode_6_reports_the_planned_peak(tmp_path, capsys):
    model, _ = build("mlp", 1)
    path = tmp_path / "mlp.onnx"
    path.write_bytes(model)
    assert main(["atc", "--model", str(path), "--framework", "5", "--output", str(tmp_path / "mlp")]) == 0
    capsys.readouterr()
    assert main(["atc", "--mode", "6", "--om", str(tmp_path / "mlp.om")]) == 0
    out = capsys.readouterr().out
    assert "activation memory: peak " in out and "planned arena (naive sum " in out


# --- the executor's arena (plan_arena + Plan) --------------------------------------------------------

def _matmul_chain() -> Graph:
    """a = x @ w; v = Reshape(a) (a view); b = x @ w2; y = v + b: a's buffer must outlive b's step."""
    x = Value("x", TensorType(np.float32, (4, 8)))
    w, w2 = Value("w", const=np.eye(8, dtype=np.float32)), Value("w2", const=np.full((8, 8), 2, np.float32))
    shape = Value("shape", const=np.array([8, 4], np.int64))
    a, v, b = Value("a", TensorType(np.float32, (4, 8))), Value("v"), Value("b", TensorType(np.float32, (4, 8)))
    c, y = Value("c", TensorType(np.float32, (8, 4))), Value("y", TensorType(np.float32, (8, 4)))
    nodes = [Node("MatMul", [x, w], [a]), Node("Reshape", [a, shape], [v]), Node("MatMul", [x, w2], [b]),
             Node("Reshape", [b, shape], [c]), Node("Add", [v, c], [y])]
    return Graph(inputs=[x], outputs=[y, v], nodes=nodes, initializers=[w, w2, shape], opsets={"": 17})


def test_arena_lifetimes_extend_through_views_to_the_graph_outputs():
    g = _matmul_chain()
    plan = plan_arena(g, {"a", "b"}, [0, 2, 4])  # the Add's output is fresh; Reshape's may be a view
    a, b = sorted(plan.buffers, key=lambda buf: buf.names[0])
    assert a.end == len(g.nodes)  # its view v is a graph output
    assert b.end == 4  # its view c is read by the Add
    assert a.offset + a.size <= b.offset or b.offset + b.size <= a.offset
    assert plan_arena(g, {"a", "b"}, [0, 2]).buffers[1].end == len(g.nodes)  # y may be a view of b too
    short = plan_arena(g, {"a", "b"}, range(5))  # views not followed: both die at their last reader
    assert [buf.end for buf in short.buffers] == [1, 3] and short.arena_bytes == 128


def test_outputs_are_views_copied_out_of_the_arena_and_never_overwritten():
    plan = Plan(_matmul_chain())
    assert {s.node.op for s in plan.steps if s.arena >= 0} == {"MatMul"}
    x1, x2 = np.ones((4, 8), np.float32), np.full((4, 8), 3, np.float32)
    y1, v1 = plan.run_list([x1])
    arena = plan._pool[0][0]
    y2, v2 = plan.run_list([x2])
    assert plan._pool[0][0] is arena and len(plan._pool) == 1  # one arena, reused
    assert all(view.ctypes.data % ALIGNMENT == 0 for view in plan._pool[0][1])
    for out in (y1, v1, y2, v2):
        assert not np.may_share_memory(out, arena)
    np.testing.assert_array_equal(v1, x1.reshape(8, 4))
    np.testing.assert_array_equal(y1, x1.reshape(8, 4) + (x1 @ np.full((8, 8), 2, np.float32)).reshape(8, 4))
    np.testing.assert_array_equal(y2, x2.reshape(8, 4) + (x2 @ np.full((8, 8), 2, np.float32)).reshape(8, 4))


def test_other_shapes_than_planned_run_without_the_arena():
    plan = Plan(_matmul_chain())
    x = np.ones((2, 8), np.float32)  # the graph was typed for 4 rows; Reshape to (8, 4) fails either way
    with pytest.raises(AclError, match="Reshape"):
        plan.run_list([x])
    assert not plan._pool


def _compiled(name: str, batch: int) -> tuple[Graph, np.ndarray]:
    model, x = build(name, batch)
    return compile_graph(import_onnx(model)).graph, x


@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("name", ["mlp", "resnet", "mobilenet", "transformer", "lstm"])
def test_models_give_the_same_outputs_with_and_without_the_arena(name, batch):
    graph, x = _compiled(name, batch)
    with_arena, without = Plan(graph), Plan(graph, arena=False)
    assert (with_arena._layout is not None) == (name != "lstm") and without._layout is None  # lstm: no out kernels
    first = with_arena.run_list([x])
    held = [o.copy() for o in first]
    rng = np.random.default_rng(1)
    other = rng.standard_normal(x.shape).astype(x.dtype) if x.dtype.kind == "f" else np.roll(x, 1)
    second = with_arena.run_list([other])
    for got, held_copy, want in zip(first, held, without.run_list([x]), strict=True):
        np.testing.assert_array_equal(got, held_copy)  # not overwritten by the second run
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)  # BLAS may round by alignment
    for got, want in zip(second, without.run_list([other]), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)


def test_eight_threads_run_one_plan_each_with_its_own_arena():
    graph, x = _compiled("resnet", 1)
    plan = Plan(graph)
    inputs = [np.random.default_rng(k).standard_normal(x.shape).astype(np.float32) for k in range(8)]
    want = [Plan(graph, arena=False).run_list([i])[0] for i in inputs]
    got, errors = {}, []

    def worker(k: int) -> None:
        try:
            for _ in range(5):
                got[k] = plan.run_list([inputs[k]])[0]
                np.testing.assert_allclose(got[k], want[k], rtol=1e-6, atol=1e-6)
        except AssertionError as e:  # pragma: no cover - reported below
            errors.append(e)

    workers = [threading.Thread(target=worker, args=(k,)) for k in range(8)]
    for t in workers:
        t.start()
    for t in workers:
        t.join()
    assert not errors and len(got) == 8
    assert 1 <= len(plan._pool) <= 8 and len({id(a) for a, _ in plan._pool}) == len(plan._pool)


def test_unplanned_convolutions_never_write_over_their_dying_input():
    """Without static shapes there is no arena; a conv whose input dies there is handed that input as out
    (a channels-last depthwise conv reads its neighbours: writing over its input would corrupt them)."""
    from opencann.ops.conv import conv as ref_conv

    rng = np.random.default_rng(0)
    w = rng.standard_normal((3, 3, 1, 4)).astype(np.float32)  # (kh, kw, C / group, M)
    weights = [Value("w1", const=w), Value("w2", const=w)]
    x, a, y = Value("x", TensorType(np.float32, None)), Value("a"), Value("y")
    attrs = {"pads": [1, 1, 1, 1], "group": 4, "channels_last": 1}
    nodes = [Node("FusedConv", [x, weights[0]], [a], attrs, domain="opencann"),
             Node("FusedConv", [a, weights[1]], [y], attrs, domain="opencann")]
    plan = Plan(Graph(inputs=[x], outputs=[y], nodes=nodes, initializers=weights, opsets={"": 17, "opencann": 1}))
    assert plan._layout is None and plan.steps[1].reuse
    data = rng.standard_normal((2, 6, 6, 4)).astype(np.float32)
    w_nchw = w.transpose(3, 2, 0, 1)
    want = data.transpose(0, 3, 1, 2)
    for _ in range(2):
        want = ref_conv(want, w_nchw, pads=[1, 1, 1, 1], group=4)
    np.testing.assert_allclose(plan.run_list([data])[0], want.transpose(0, 2, 3, 1), rtol=1e-4, atol=1e-4)
