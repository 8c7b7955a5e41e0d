"""The executor's launch list (slots, prebound attributes, folded Constants, subgraph scopes, errors) and
the thread-count setting. ``python tests/test_dispatch.py`` prints the per-node dispatch overhead."""
import os
import subprocess
import sys
import threading
import time

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from opencann.compiler.ir import Graph, Node, TensorType, Value
from opencann.errors import AclError
from opencann.frontends.onnx import import_onnx
from opencann.ops.registry import op
from opencann.runtime import Executor
from opencann.runtime.threads import get_num_threads, set_num_threads

DOMAIN = "test.dispatch"


@op("Nop", domain=DOMAIN)
def _nop(x):
    return x


@op("Boom", domain=DOMAIN)
def _boom(x):
    raise ValueError("bad value")


def chain(n: int, op_name: str = "Add") -> Graph:
    """``x + 1 + 1 ...`` (n Adds), or n ``op_name`` nodes of the test domain."""
    x = Value("x", TensorType(np.float32, (1,)))
    one = Value("one", const=np.ones(1, np.float32))
    vals = [x] + [Value(f"v{i}") for i in range(n)]
    if op_name == "Add":
        nodes = [Node("Add", [vals[i], one], [vals[i + 1]], name=f"n{i}") for i in range(n)]
    else:
        nodes = [Node(op_name, [vals[i]], [vals[i + 1]], domain=DOMAIN, name=f"n{i}") for i in range(n)]
    return Graph(inputs=[x], outputs=[vals[-1]], nodes=nodes, initializers=[one], opsets={"": 17, DOMAIN: 1})


def test_long_chain_runs_and_releases_every_intermediate():
    ex = Executor(chain(1000))
    assert ex.run([np.zeros(1, np.float32)])[0][0] == 1000
    assert ex.run({"x": np.full(1, 5, np.float32)})[0][0] == 1005
    assert all((s.simple or s.reuse) and s.in_slots[0] in s.drop_slots for s in ex.plan.steps)


def test_attributes_are_bound_once_and_constants_fold_at_build():
    nodes = [helper.make_node("Constant", [], ["c"], value=helper.make_tensor("v", TensorProto.FLOAT, [2], [1, 2])),
             helper.make_node("LeakyRelu", ["x"], ["a"], alpha=0.5), helper.make_node("Mul", ["a", "c"], ["y"])]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2]),
                           helper.make_tensor_value_info("c", TensorProto.FLOAT, [2])])
    ex = Executor(import_onnx(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])))
    assert [s.node.op for s in ex.plan.steps] == ["LeakyRelu", "Mul"]
    assert ex.plan.steps[0].call.keywords == {"alpha": 0.5}
    y, c = ex.run([np.array([-2, 3], np.float32)])
    np.testing.assert_array_equal(y, [-1, 6])
    np.testing.assert_array_equal(c, [1, 2])


def test_errors_name_the_node():
    g = chain(3, "Nop")
    g.nodes[1].op = "Boom"
    with pytest.raises(AclError, match="node Boom 'n1' failed: ValueError: bad value"):
        Executor(g).run([np.zeros(1, np.float32)])


def _nested_if_model() -> onnx.ModelProto:
    """y = (x + a) * b when cond, else x - b, with a and b read from the main graph inside nested bodies."""
    out = lambda name: helper.make_tensor_value_info(name, TensorProto.FLOAT, [2])  # noqa: E731
    inner = helper.make_graph([helper.make_node("Add", ["x", "a"], ["t"]), helper.make_node("Mul", ["t", "b"], ["r"])],
                              "inner", [], [out("r")])
    then = helper.make_graph([helper.make_node("If", ["cond"], ["u"], then_branch=inner, else_branch=inner)],
                             "then", [], [out("u")])
    other = helper.make_graph([helper.make_node("Sub", ["x", "b"], ["v"])], "else", [], [out("v")])
    nodes = [helper.make_node("Relu", ["x0"], ["x"]), helper.make_node("Neg", ["b0"], ["b"]),
             helper.make_node("If", ["cond"], ["y"], then_branch=then, else_branch=other)]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x0", TensorProto.FLOAT, [2]),
                                       helper.make_tensor_value_info("cond", TensorProto.BOOL, []),
                                       helper.make_tensor_value_info("a", TensorProto.FLOAT, [2]),
                                       helper.make_tensor_value_info("b0", TensorProto.FLOAT, [2])], [out("y")])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def test_nested_subgraphs_read_outer_values_by_name():
    ex = Executor(import_onnx(_nested_if_model()))
    x, a, b = np.array([1, -2], np.float32), np.array([3, 4], np.float32), np.array([2, 2], np.float32)
    np.testing.assert_array_equal(ex.run([x, np.array(True), a, b])[0], (np.maximum(x, 0) + a) * -b)
    np.testing.assert_array_equal(ex.run([x, np.array(False), a, b])[0], np.maximum(x, 0) + b)


def test_concurrent_runs_have_their_own_workspaces():
    ex = Executor(chain(200))
    results, errors = {}, []

    def worker(k: int) -> None:
        try:
            for _ in range(20):
                results[k] = ex.run([np.full(1, k, np.float32)])[0][0]
                assert results[k] == k + 200
        except AssertionError as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and results == {k: k + 200 for k in range(4)}


def test_set_num_threads_reaches_blas_and_numba():
    from threadpoolctl import threadpool_info

    before = get_num_threads()
    try:
        set_num_threads(1)
        assert get_num_threads() == {"blas": 1, "numba": 1}
        assert all(i["num_threads"] == 1 for i in threadpool_info() if i["user_api"] == "blas")
        with pytest.raises(AclError, match="positive int"):
            set_num_threads(0)
    finally:
        set_num_threads(before["blas"])


def test_thread_count_from_the_environment():
    code = "import opencann.runtime; from opencann.runtime.threads import get_num_threads; print(get_num_threads())"
    env = {**os.environ, "OPENCANN_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "2"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "{'blas': 1, 'numba': 1}"


def per_node_us(ex: Executor, rounds: int = 30) -> float:
    x = np.zeros(1, np.float32)
    best = min(_timed(ex, x) for _ in range(rounds))
    return best / len(ex.plan.steps) * 1e6


def _timed(ex: Executor, x) -> float:
    t0 = time.perf_counter()
    ex.run([x])
    return time.perf_counter() - t0


if __name__ == "__main__":
    for name in ("Nop", "Add"):
        print(f"1,000 {name} nodes: {per_node_us(Executor(chain(1000, name))):.2f} us per node (best of 30)")
