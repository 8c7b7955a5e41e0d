"""The profiler (opencann.runtime.profiler), ``opencann profile`` and ``acl.prof``, on small ONNX models: node
times add up within the run, counts match the graph, profiled outputs equal the plain run's and NumPy's, the
acl session records exactly the executions between start and stop, and misuse raises AclError."""
from __future__ import annotations

import collections
import json

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

import opencann.acl as acl
from opencann.acl import AclError
from opencann.cli.main import main
from opencann.compiler import om
from opencann.compiler.pipeline import compile_graph
from opencann.frontends.onnx import import_onnx
from opencann.runtime import profiler
from opencann.runtime.executor import Plan
from opencann.runtime.profiler import Profiler

RNG = np.random.default_rng(3)
W = RNG.standard_normal((4, 3)).astype(np.float32)
B = RNG.standard_normal(3).astype(np.float32)
X = RNG.standard_normal((2, 4)).astype(np.float32)
FLOAT = TensorProto.FLOAT


def oracle(x: np.ndarray) -> np.ndarray:
    """What mlp_bytes computes: softmax(tanh(relu(x @ W + B)) * 2)."""
    z = np.tanh(np.maximum(x @ W + B, 0)) * 2
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def mlp_bytes() -> bytes:
    nodes = [helper.make_node("MatMul", ["x", "W"], ["mm"], name="mm"),
             helper.make_node("Add", ["mm", "B"], ["add"], name="add"),
             helper.make_node("Relu", ["add"], ["relu"], name="relu"),
             helper.make_node("Tanh", ["relu"], ["tanh"], name="tanh"),
             helper.make_node("Constant", [], ["two"], name="two",
                              value=numpy_helper.from_array(np.array(2, np.float32))),
             helper.make_node("Mul", ["tanh", "two"], ["mul"], name="mul"),
             helper.make_node("Softmax", ["mul"], ["y"], name="softmax")]
    graph = helper.make_graph(nodes, "mlp", [helper.make_tensor_value_info("x", FLOAT, [2, 4])],
                              [helper.make_tensor_value_info("y", FLOAT, [2, 3])],
                              [numpy_helper.from_array(W, "W"), numpy_helper.from_array(B, "B")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()


def loop_bytes() -> bytes:
    """y = Loop 3 times (v = relu(v * x) + 1) from v = x: a subgraph body reading x from the outer scope."""
    body = helper.make_graph(
        [helper.make_node("Mul", ["v_in", "x"], ["m"], name="body_mul"),
         helper.make_node("Relu", ["m"], ["r"], name="body_relu"),
         helper.make_node("Add", ["r", "one"], ["v_out"], name="body_add"),
         helper.make_node("Identity", ["cond_in"], ["cond_out"], name="body_cond")],
        "body", [helper.make_tensor_value_info("i", TensorProto.INT64, []),
                 helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
                 helper.make_tensor_value_info("v_in", FLOAT, [2, 4])],
        [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
         helper.make_tensor_value_info("v_out", FLOAT, [2, 4])],
        [numpy_helper.from_array(np.array(1, np.float32), "one")])
    graph = helper.make_graph(
        [helper.make_node("Loop", ["n", "c", "x"], ["y"], name="loop", body=body)], "looped",
        [helper.make_tensor_value_info("x", FLOAT, [2, 4])], [helper.make_tensor_value_info("y", FLOAT, [2, 4])],
        [numpy_helper.from_array(np.array(3, np.int64), "n"), numpy_helper.from_array(np.array(True), "c")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()


def loop_oracle(x: np.ndarray) -> np.ndarray:
    v = x
    for _ in range(3):
        v = np.maximum(v * x, 0) + 1
    return v


def check_times(report: dict) -> None:
    """Every call took time, and the nodes' time fits in the runs' time."""
    runs = report["iterations"]
    assert runs > 0 and report["run_ms"]["min"] > 0
    assert all(n["calls"] >= runs and n["mean_ms"] > 0 and n["total_ms"] > 0 for n in report["nodes"])
    node_total = sum(n["total_ms"] for n in report["nodes"])
    assert node_total <= report["run_ms"]["mean"] * runs
    assert report["kernel_ms"] == pytest.approx(node_total / runs)
    assert report["overhead_ms"] >= 0
    assert sum(t["total_ms"] for t in report["types"]) == pytest.approx(node_total)
    assert sum(n["percent"] for n in report["nodes"]) <= 100.0 + 1e-9


def test_node_times_fit_in_the_run_and_types_count_the_graph_nodes():
    graph = import_onnx(mlp_bytes())
    counts = collections.Counter(n.op for n in graph.nodes if n.op != "Constant")  # Constants fold at build
    prof = Profiler(Plan(graph))
    report = prof.profile([X], iterations=4, warmup=1)
    check_times(report)
    assert {t["op"]: t["nodes"] for t in report["types"]} == counts
    assert {t["op"]: t["calls"] for t in report["types"]} == {op: 4 * c for op, c in counts.items()}
    assert {n["name"]: n["shapes"] for n in report["nodes"]}["mm"] == [[2, 3]]
    assert report["plain_run_ms"]["min"] > 0


def test_profiled_outputs_equal_the_plain_run_and_detach_restores_the_kernels():
    plan = Plan(compile_graph(import_onnx(mlp_bytes())).graph)
    calls = [s.call for s in plan.steps]
    plain = plan.run_list([X])[0]
    prof = Profiler(plan).attach()
    assert all(s.call is not c for s, c in zip(plan.steps, calls))
    profiled = prof.run([X])[0]
    prof.detach()
    assert [s.call for s in plan.steps] == calls
    np.testing.assert_array_equal(profiled, plain)
    np.testing.assert_allclose(profiled, oracle(X), rtol=1e-5, atol=1e-6)
    assert len(prof.runs) == 1 and all(len(rec.times) == 1 for rec in prof.nodes)


def test_subgraph_bodies_are_profiled_and_not_counted_twice():
    plan = Plan(import_onnx(loop_bytes()))
    prof = Profiler(plan)
    report = prof.profile([X], iterations=3, warmup=1)
    np.testing.assert_allclose(plan.run_list([X])[0], loop_oracle(X), rtol=1e-6)
    check_times(report)
    by_name = {n["name"]: n for n in report["nodes"]}
    assert {"loop", "loop/body/body_mul", "loop/body/body_relu", "loop/body/body_add"} <= set(by_name)
    assert by_name["loop"]["calls"] == 3 and by_name["loop/body/body_mul"]["calls"] == 9
    assert by_name["loop/body/body_relu"]["shapes"] == [[2, 4]]


@pytest.fixture
def onnx_path(tmp_path) -> str:
    path = tmp_path / "mlp.onnx"
    path.write_bytes(mlp_bytes())
    return str(path)


REPORT_KEYS = {"model", "inputs", "warmup", "graph", "iterations", "run_ms", "plain_run_ms", "kernel_ms",
               "overhead_ms", "nodes", "types"}
NODE_KEYS = {"name", "op", "calls", "total_ms", "per_run_ms", "mean_ms", "median_ms", "percent", "shapes"}
TYPE_KEYS = {"op", "nodes", "calls", "total_ms", "per_run_ms", "mean_ms", "median_ms", "percent"}


def test_cli_profile_onnx_and_om(onnx_path, tmp_path, capsys):
    out = tmp_path / "report.json"
    assert main(["profile", onnx_path, "--iterations", "3", "--warmup", "1", "--top", "2",
                 "--output", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "2 of" in printed and "executor overhead" in printed
    report = json.loads(out.read_text())
    assert set(report) == REPORT_KEYS and report["iterations"] == 3
    assert report["inputs"] == [{"name": "x", "dtype": "float32", "shape": [2, 4]}]
    assert all(set(n) == NODE_KEYS for n in report["nodes"]) and all(set(t) == TYPE_KEYS for t in report["types"])
    check_times(report)
    assert not list(tmp_path.glob(".tmp-*"))
    om_file = om.save(compile_graph(import_onnx(mlp_bytes())), str(tmp_path / "mlp"))
    np.save(tmp_path / "x.npy", X)
    assert main(["profile", om_file, "--input", str(tmp_path / "x.npy"), "--iterations", "2", "--by", "type"]) == 0
    assert "op types" in capsys.readouterr().out


def test_cli_profile_errors(onnx_path, tmp_path, capsys):
    assert main(["profile", str(tmp_path / "missing.onnx")]) == 1
    assert "100003" in capsys.readouterr().err
    assert main(["profile", onnx_path, "--iterations", "0"]) == 1
    assert "100000" in capsys.readouterr().err
    assert main(["profile", onnx_path, "--input", "a.npy", "b.npy"]) == 1
    assert "100017" in capsys.readouterr().err


# ---------------------------------------------------------------- acl.prof


def code_of(fn, *args) -> int:
    with pytest.raises(AclError) as info:
        fn(*args)
    return info.value.code


@pytest.fixture
def model():
    """The MLP loaded through acl; acl and acl.prof are finalized afterwards even when a test fails."""
    acl.init()
    acl.set_device(0)
    yield acl.load_from_mem(om.dumps(compile_graph(import_onnx(mlp_bytes()))))
    try:
        acl.prof.finalize()
    except AclError:
        pass
    acl.finalize()
    assert profiler.SESSION is None


def test_acl_prof_records_the_executions_between_start_and_stop(model, tmp_path):
    model.run(X)  # before start: not recorded
    acl.prof.init(str(tmp_path / "prof"))
    config = acl.prof.create_config([0], 0, 0, acl.prof.ACL_PROF_ACL_API | acl.prof.ACL_PROF_TASK_TIME)
    acl.prof.start(config)
    np.testing.assert_allclose(model.run(X)[0], oracle(X), rtol=1e-5, atol=1e-6)
    x_mem = acl.malloc(X.nbytes)
    acl.memcpy(x_mem, X, X.nbytes, acl.MemcpyKind.HOST_TO_DEVICE)
    y_mem = acl.malloc(model.desc.output_size(0))
    model.execute(acl.Dataset([acl.DataBuffer(x_mem)]), acl.Dataset([acl.DataBuffer(y_mem)]))
    path = acl.prof.stop(config)
    model.run(X)  # after stop: not recorded
    data = json.loads(open(path).read())
    assert data["devices"] == [0] and len(data["models"]) == 1
    entry = data["models"][0]
    assert entry["model_id"] == model.id and entry["executions"] == 2 and len(entry["runs_ms"]) == 2
    assert all(n["calls"] == 2 for n in entry["nodes"])
    check_times(entry)
    acl.prof.start(config)  # a second collection: only what runs in it
    model.run(X)
    second = json.loads(open(acl.prof.stop(config)).read())
    assert second["models"][0]["executions"] == 1 and second != data
    acl.prof.destroy_config(config)
    acl.prof.finalize()


def test_acl_prof_api_level_records_runs_only(model, tmp_path):
    acl.prof.init(tmp_path)
    config = acl.prof.create_config([0], 0, 0, acl.prof.ACL_PROF_ACL_API)
    acl.prof.start(config)
    model.run(X)
    acl.prof.finalize()  # stops and writes
    (written,) = tmp_path.glob("opencann_prof_*.json")
    entry = json.loads(written.read_text())["models"][0]
    assert entry["executions"] == 1 and "nodes" not in entry


def test_acl_prof_bad_configs_and_calls(model, tmp_path):
    c = acl.prof.create_config
    bad = acl.prof.ACL_PROF_ACL_API
    for args in (([], 0, 0, bad), ([7], 0, 0, bad), ([0], 0, 0, 0), ([0], 0, 0, acl.prof.ACL_PROF_AICORE_METRICS),
                 ([0], -1, 0, bad), ([0], 0, 0, "all"), ("0", 0, 0, bad), ([0], 0, 5, bad)):
        assert code_of(c, *args) == 100010, args
    config = c([0])
    assert code_of(acl.prof.start, config) == 100001  # before acl.prof.init
    assert code_of(acl.prof.init, "") == 100000
    a_file = tmp_path / "file"
    a_file.write_text("x")
    assert code_of(acl.prof.init, str(a_file)) == 100003
    assert code_of(acl.prof.init, str(a_file / "sub")) == 100003
    acl.prof.init(str(tmp_path / "ok"))
    assert code_of(acl.prof.init, str(tmp_path / "ok")) == 100002
    assert code_of(acl.prof.stop, config) == 500005
    assert code_of(acl.prof.start, "config") == 100010
    acl.prof.start(config)
    assert code_of(acl.prof.start, config) == 500005
    assert code_of(acl.prof.stop, c([0])) == 100010
    acl.prof.stop(config)
    acl.prof.destroy_config(config)
    assert code_of(acl.prof.start, config) == 100010
    acl.prof.finalize()
    assert code_of(acl.prof.finalize) == 100001
    acl.finalize()
    assert code_of(c, [0]) == 100001
    acl.init()


def test_acl_finalize_ends_an_open_profiling_session(model, tmp_path):
    acl.prof.init(tmp_path)
    acl.prof.start(acl.prof.create_config([0]))
    model.run(X)
    acl.finalize()  # stops, writes and finalizes profiling too
    assert profiler.SESSION is None and len(list(tmp_path.glob("opencann_prof_*.json"))) == 1
    assert code_of(acl.prof.finalize) == 100001
    acl.init()
