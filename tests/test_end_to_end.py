"""End-to-end: models real users run, exported from PyTorch, match onnxruntime within 1e-4 relative."""
import numpy as np
import onnxruntime as ort
import pytest

from opencann.compiler.pipeline import compile_graph
from opencann.frontends.onnx import import_onnx
from opencann.runtime import Executor
from tests.models import MODELS, build


def ort_run(model: bytes, x: np.ndarray) -> np.ndarray:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    sess = ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x})[0]


def assert_close(got: np.ndarray, want: np.ndarray, rtol: float = 1e-4) -> None:
    assert got.shape == want.shape and got.dtype == want.dtype
    np.testing.assert_allclose(got, want, rtol=rtol, atol=rtol * float(np.abs(want).max()))


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("batch", [1, 3])
def test_model_matches_onnxruntime(name, batch):
    model, x = build(name, batch)
    ex = Executor(import_onnx(model))
    assert_close(ex.run([x])[0], ort_run(model, x))


@pytest.mark.parametrize("name", MODELS)
def test_compiled_model_matches_onnxruntime(name):
    """The atc pipeline's passes (BatchNorm folding, dead code, shape inference) keep the numerics."""
    model, x = build(name, 2)
    compiled = compile_graph(import_onnx(model))
    if name in ("resnet", "mobilenet"):
        assert not any(n.op == "BatchNormalization" for n in compiled.graph.nodes)
    assert_close(Executor(compiled.graph).run([x])[0], ort_run(model, x))


def test_executor_releases_dead_values_and_counts_runs():
    model, x = build("mlp")
    ex = Executor(import_onnx(model))
    first = ex.run([x])[0]
    assert_close(ex.run({"input": x})[0], first, rtol=0)
    assert ex.runs == 2
    live_after = {name for step in ex.plan.steps for name in step.drop}
    produced = {v.name for n in ex.plan.graph.nodes for v in n.outputs} - set(ex.output_names)
    assert produced <= live_after, "every intermediate value is dropped after its last use"
