"""fold_embedding: an embedding Gather [-> Transpose] feeding a plain LSTM becomes one opencann::EmbeddingLSTM; outputs
against the unoptimized graph, the graph compiled without the pass and onnxruntime; what must stay unfolded."""
import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from opencann.compiler import om, pipeline
from opencann.compiler.passes import fold_embedding as fe
from opencann.compiler.pipeline import BuildOptions, compile_graph
from opencann.frontends.onnx import import_onnx
from opencann.runtime import Executor
from tests.models import build
from tests.passes import ops

FOLDED = "opencann::EmbeddingLSTM"


def compiled(onnx_bytes: bytes, fold: bool = True, mode: str = "force_fp32"):
    """The pipeline's graph, with or without fold_embedding."""
    saved = list(pipeline.PIPELINE)
    if not fold:
        pipeline.PIPELINE[:] = [p for p in saved if p[0] != "fold_embedding"]
    try:
        return compile_graph(import_onnx(onnx_bytes), BuildOptions(precision_mode=mode)).graph
    finally:
        pipeline.PIPELINE[:] = saved


def check(onnx_bytes: bytes, feeds: dict, folded: bool):
    """Compile with and without the pass; the op list changes as expected, the outputs agree with the unoptimized
    graph, the graph compiled without the pass and onnxruntime; a second run changes nothing."""
    before, after = compiled(onnx_bytes, fold=False), compiled(onnx_bytes)
    after.validate()
    assert (FOLDED in ops(after)) == folded
    if folded:
        assert "Gather" not in ops(after)[:ops(after).index(FOLDED)] and "LSTM" not in ops(after)
        assert len(after.nodes) < len(before.nodes)
    else:
        assert ops(after) == ops(before)
    text = str(after)
    assert str(fe.fold_embedding(after)) == text
    args = [feeds[v.name] for v in import_onnx(onnx_bytes).inputs]
    peer = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"]).run(None, feeds)
    for want in (Executor(import_onnx(onnx_bytes)).run(args), Executor(before).run(args), peer):
        for got, w in zip(Executor(after).run(args), want, strict=True):
            np.testing.assert_allclose(got, w, rtol=1e-5, atol=1e-6)
    return after


@pytest.mark.parametrize("batch", [1, 5])
def test_pytorch_embedding_lstm_classifier_is_folded(batch, tmp_path):
    """tests.models' LSTM classifier (nn.Embedding -> nn.LSTM(batch_first), h[-1] -> Linear): Gather -> Transpose ->
    LSTM -> Gather become one node, also after an .om round trip."""
    onnx_bytes, tokens = build("lstm", batch, "small")
    after = check(onnx_bytes, {"input": tokens}, folded=True)
    node = after.nodes[ops(after).index(FOLDED)]
    assert node.attrs["batch_major"] == 1 and node.inputs[1].const.shape == (1000, 256)
    assert node.attrs["sequence"] == 0 and node.outputs[0].type.shape == (0, 1, batch, 64)  # Y is read by nobody
    assert node.attrs["squeeze"] == 1 and node.outputs[1].type.shape == (batch, 64)  # h[-1], [batch, hidden]
    assert ops(after) == [FOLDED, "Gemm"]
    path = om.save(om.CompiledModel(after), tmp_path / "lstm.om")
    loaded = om.load(path).graph
    assert ops(loaded) == ops(after)
    np.testing.assert_array_equal(Executor(loaded).run([tokens])[0], Executor(after).run([tokens])[0])


def lstm_model(*, transpose: bool = False, attrs: dict | None = None, states: bool = True, expose: bool = False,
               vocab: int = 9, dtype=TensorProto.INT32, bias: bool = True, last: tuple[int, ...] = (),
               keep_c: bool = False) -> bytes:
    """tokens -> Gather(E) [-> Transpose] -> LSTM(hidden 4) -> Y, Y_h, Y_c (+ the embedding when ``expose``); the
    initial states are graph inputs when ``states``. Tokens are [steps 6, batch 3] (time-major) or [3, 6]. With
    ``last`` indices, the outputs are instead Gather(Y_h, index) for each (and Y_c when ``keep_c``)."""
    rng = np.random.default_rng(7)
    hidden, width = 4, 5
    inits = [numpy_helper.from_array((rng.standard_normal(s) * 0.6).astype(np.float32), n) for n, s in (
        ("E", (vocab, width)), ("W", (1, 4 * hidden, width)), ("R", (1, 4 * hidden, hidden)), ("B", (1, 8 * hidden)))]
    nodes = [helper.make_node("Gather", ["E", "tokens"], ["emb"])]
    x = "emb"
    if transpose:
        nodes.append(helper.make_node("Transpose", ["emb"], ["x"], perm=[1, 0, 2]))
        x = "x"
    nodes.append(helper.make_node("LSTM", [x, "W", "R", "B" if bias else "", "", *(["h0", "c0"] if states else [])],
                                  ["Y", "Y_h", "Y_c"], hidden_size=hidden, **(attrs or {})))
    for i, index in enumerate(last):
        inits.append(numpy_helper.from_array(np.array(index, np.int64), f"i{i}"))
        nodes.append(helper.make_node("Gather", ["Y_h", f"i{i}"], [f"last{i}"]))
    inputs = [helper.make_tensor_value_info("tokens", dtype, (3, 6) if transpose else (6, 3))]
    inputs += [helper.make_tensor_value_info(n, TensorProto.FLOAT, (1, 3, hidden)) for n in ("h0", "c0")][
        :2 if states else 0]
    names = [f"last{i}" for i in range(len(last))] + ["Y_c"] * keep_c if last else ["Y", "Y_h", "Y_c"]
    outputs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in names]
    outputs += [helper.make_tensor_value_info("emb", TensorProto.FLOAT, None)] if expose else []
    graph = helper.make_graph(nodes, "g", inputs, outputs, inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()


def feeds(transpose: bool = False, dtype=np.int32, states: bool = True) -> dict:
    rng = np.random.default_rng(8)
    out = {"tokens": rng.integers(-9, 9, (3, 6) if transpose else (6, 3)).astype(dtype)}
    if states:
        out.update(h0=rng.standard_normal((1, 3, 4)).astype(np.float32),
                   c0=rng.standard_normal((1, 3, 4)).astype(np.float32))
    return out


@pytest.mark.parametrize("transpose,dtype,states,bias", [(False, TensorProto.INT32, True, True),
                                                         (True, TensorProto.INT64, False, False)])
def test_time_major_and_batch_first_lookups_with_or_without_states_and_bias_are_folded(transpose, dtype, states, bias):
    np_dtype = np.int32 if dtype == TensorProto.INT32 else np.int64
    after = check(lstm_model(transpose=transpose, dtype=dtype, states=states, bias=bias),
                  feeds(transpose, dtype=np_dtype, states=states), folded=True)
    assert ops(after) == [FOLDED]
    assert after.nodes[0].attrs == {"batch_major": int(transpose), "sequence": 1, "squeeze": 0}


@pytest.mark.parametrize("last,keep_c,squeezed", [((-1,), False, True), ((0,), False, True), ((0,), True, False),
                                                  ((0, -1), False, False)])
def test_a_last_state_gather_is_folded_when_it_alone_reads_the_states(last, keep_c, squeezed):
    after = check(lstm_model(last=last, keep_c=keep_c), feeds(), folded=True)
    assert ops(after) == [FOLDED] + ["Gather"] * (len(last) - squeezed)
    assert after.nodes[0].attrs == {"batch_major": 0, "sequence": 0, "squeeze": int(squeezed)}


@pytest.mark.parametrize("kind", ["reverse", "clip", "exposed", "large"])
def test_what_is_not_folded(kind, monkeypatch):
    """A reverse or clipped LSTM, an embedding read elsewhere too, a table over MAX_TABLE_BYTES."""
    if kind == "large":
        monkeypatch.setattr(fe, "MAX_TABLE_BYTES", 9 * 16 * 4 - 1)
    attrs = {"reverse": {"direction": "reverse"}, "clip": {"clip": 0.5}}.get(kind)
    check(lstm_model(attrs=attrs, expose=kind == "exposed"), feeds(), folded=False)


def test_low_precision_builds_keep_the_lstm():
    g = compiled(lstm_model(), mode="allow_fp32_to_fp16")
    assert FOLDED not in ops(g) and "LSTM" in ops(g)
