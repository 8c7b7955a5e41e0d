"""Peak memory of import + compile, in units of the model's weight bytes (tracemalloc: NumPy and Python objects).

The model: four 512x512 float32 weights, each read through a Transpose that constant folding turns into a
new initializer, then MatMul + Add (fold_bias) and Relu, the shapes of a PyTorch export. The weights must be
held about once: the compiled graph's constants (1x), one folded Transpose's result before its source is
dropped, and small change: 1.26x measured. Before folded sources were dropped as their Transpose was
folded (and the weights taken out of the model ahead of ONNX shape inference), the same import + compile
peaked at 2.0x: every Transpose's result next to its source. ONNX's own C++ copies of the model are not
seen by tracemalloc (benchmarks/onnx_models.py measures the resident set).
"""
import gc
import tracemalloc

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from opencann.compiler.pipeline import compile_graph
from opencann.frontends.onnx import import_onnx
from opencann.runtime import Executor

D, LAYERS = 512, 4
MAX_RATIO = 1.6  # constants once (1.0) + one folded weight (1/LAYERS) + graph and plan objects


def _model(rng: np.random.Generator) -> tuple[bytes, list[np.ndarray]]:
    weights = [rng.standard_normal((D, D), dtype=np.float32) / np.float32(D ** 0.5) for _ in range(LAYERS)]
    inits, nodes, x = [], [], "x"
    for i, w in enumerate(weights):
        inits += [numpy_helper.from_array(w, f"w{i}"), numpy_helper.from_array(np.full(D, 0.1, np.float32), f"b{i}")]
        nodes += [helper.make_node("Transpose", [f"w{i}"], [f"wt{i}"], perm=[1, 0]),
                  helper.make_node("MatMul", [x, f"wt{i}"], [f"m{i}"]),
                  helper.make_node("Add", [f"m{i}", f"b{i}"], [f"a{i}"]),
                  helper.make_node("Relu", [f"a{i}"], [f"y{i}"])]
        x = f"y{i}"
    graph = helper.make_graph(nodes, "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, D])],
                              [helper.make_tensor_value_info(x, TensorProto.FLOAT, [2, D])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    return model.SerializeToString(), weights


def test_import_and_compile_hold_the_weights_about_once():
    rng = np.random.default_rng(0)
    data, weights = _model(rng)
    weight_bytes = sum(w.nbytes for w in weights)
    compile_graph(import_onnx(data))  # imports and kernel registrations made on first use are not the model's
    gc.collect()
    tracemalloc.start()
    try:
        graph = compile_graph(import_onnx(data)).graph
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < MAX_RATIO * weight_bytes, f"peak {peak / weight_bytes:.2f}x the weights"
    x = rng.standard_normal((2, D), dtype=np.float32)
    want = x
    for w in weights:
        want = np.maximum(want @ w.T + np.float32(0.1), 0)
    np.testing.assert_allclose(Executor(graph).run([x])[0], want, rtol=1e-4, atol=1e-4)


def test_imported_weights_match_the_model_and_a_model_proto_is_left_alone():
    data, weights = _model(np.random.default_rng(1))
    graph = import_onnx(data)
    consts = {v.name: v.const for v in graph.initializers}
    for i, w in enumerate(weights):
        np.testing.assert_array_equal(consts[f"w{i}"], w)
    proto = onnx.load_from_string(data)
    import_onnx(proto)
    assert numpy_helper.to_array(proto.graph.initializer[0]).tobytes() == weights[0].tobytes()
