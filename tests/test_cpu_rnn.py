"""The Numba RNN/GRU/LSTM kernels (opencann.ops.cpu_rnn) against the reference kernels and onnxruntime."""
import numpy as np
import onnx
import pytest
from onnx import helper

from opencann.compiler import dtypes
from opencann.errors import AclError
from opencann.ops import cpu_rnn, registry
from opencann.ops import rnn as ref

GATES = {"LSTM": 4, "GRU": 3, "RNN": 1}
# (op, attributes, extra inputs: lens / initial states / peepholes); hidden 5, input 3, 6 steps, batch 3
CASES = [
    ("LSTM", {}, ()),
    ("LSTM", {"direction": "reverse"}, ("lens",)),
    ("LSTM", {"direction": "bidirectional", "clip": 0.7}, ("lens", "init", "peep")),
    ("LSTM", {"input_forget": 1}, ("init", "peep")),
    ("LSTM", {"activations": ["HardSigmoid", "LeakyRelu", "Softsign"], "activation_alpha": [0.3, 0.2],
              "activation_beta": [0.4]}, ("init",)),
    ("LSTM", {"activations": ["Sigmoid", "Elu", "ScaledTanh", "Relu", "Affine", "Softplus"],
              "activation_alpha": [1.1, 0.8, 1.5], "activation_beta": [0.7, -0.2], "direction": "bidirectional"},
     ("lens",)),
    ("LSTM", {"layout": 1}, ("lens", "init", "peep")),
    ("GRU", {}, ()),
    ("GRU", {"linear_before_reset": 1, "direction": "bidirectional"}, ("lens", "init")),
    ("GRU", {"direction": "reverse", "clip": 0.5}, ("init",)),
    ("GRU", {"activations": ["HardSigmoid", "ThresholdedRelu"], "activation_alpha": [0.25, 0.1],
             "activation_beta": [0.45]}, ("lens",)),
    ("GRU", {"layout": 1, "linear_before_reset": 1}, ("lens", "init")),
    ("RNN", {}, ()),
    ("RNN", {"direction": "bidirectional", "activations": ["Relu", "Tanh"], "clip": 1.5}, ("lens", "init")),
    ("RNN", {"direction": "reverse", "activations": ["Affine"], "activation_alpha": [0.5],
             "activation_beta": [0.1]}, ("init",)),
    ("RNN", {"layout": 1}, ("lens",)),
]
ORT_UNSUPPORTED = ("layout", "HardSigmoid", "Softplus", "ThresholdedRelu")  # raise or differ in onnxruntime


def inputs(op: str, attrs: dict, extras, dtype, seed: int = 0) -> list:
    rng = np.random.default_rng(seed)
    n_dir = 2 if attrs.get("direction") == "bidirectional" else 1
    steps, batch, width, hidden, g = 6, 3, 3, 5, GATES[op]
    shape = (batch, steps, width) if attrs.get("layout") else (steps, batch, width)
    state_shape = (batch, n_dir, hidden) if attrs.get("layout") else (n_dir, batch, hidden)
    rand = lambda *s: (rng.standard_normal(s) * 0.6).astype(dtype)  # noqa: E731
    x = [rand(*shape), rand(n_dir, g * hidden, width), rand(n_dir, g * hidden, hidden), rand(n_dir, 2 * g * hidden)]
    x.append(np.array([6, 2, 4], np.int32) if "lens" in extras else None)
    x.append(rand(*state_shape) if "init" in extras else None)
    if op == "LSTM":
        x.append(rand(*state_shape) if "init" in extras else None)
        x.append(rand(n_dir, 3 * hidden) if "peep" in extras else None)
    return x


def kernels(op: str):
    d = registry.lookup(op, 22)
    return d.kernel_for("cpu"), d.reference


def ort_outputs(op: str, attrs: dict, x: list) -> list:
    ort = pytest.importorskip("onnxruntime")
    names = [f"in{i}" if v is not None else "" for i, v in enumerate(x)]
    outs = ["Y", "Y_h", "Y_c"][:3 if op == "LSTM" else 2]
    node = helper.make_node(op, names, outs, hidden_size=5, **attrs)
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info(n, dtypes.to_onnx(v.dtype), v.shape)
                                            for n, v in zip(names, x, strict=True) if v is not None],
                              [helper.make_value_info(o, onnx.TypeProto()) for o in outs])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 22)])
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, {n: v for n, v in zip(names, x, strict=True) if v is not None})


def test_the_cpu_kernels_are_the_numba_ones_and_know_every_activation():
    assert set(cpu_rnn._CODES) == set(ref._ACTIVATIONS)
    for op in GATES:
        fast, reference = kernels(op)
        assert fast.__module__ == cpu_rnn.__name__ and reference.__module__ == ref.__name__


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("op,attrs,extras", CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)])
def test_numba_kernel_matches_reference_and_onnxruntime(op, attrs, extras, dtype):
    x = inputs(op, attrs, extras, dtype)
    fast, reference = kernels(op)
    got, want = fast(*x, hidden_size=5, **attrs), reference(*x, hidden_size=5, **attrs)
    tol = dict(rtol=2e-5, atol=2e-6) if dtype == np.float32 else dict(rtol=1e-12, atol=1e-12)
    for g, w in zip(got, want, strict=True):
        assert g.dtype == w.dtype and g.shape == w.shape
        np.testing.assert_allclose(g, w, **tol)
    if dtype == np.float32 and not any(k in repr(attrs) for k in ORT_UNSUPPORTED):
        for g, w in zip(got, ort_outputs(op, attrs, x), strict=True):
            np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-5)


def test_padded_steps_give_zeros_and_frozen_states():
    x = inputs("LSTM", {}, ("lens", "init"), np.float32)
    y, h, c = kernels("LSTM")[0](*x, hidden_size=5)
    assert not y[2:, 0, 1].any() and y[1, 0, 1].any()  # batch entry 1 has length 2
    np.testing.assert_array_equal(h[0, 1], y[1, 0, 1])


def test_float16_runs_in_float32_and_large_recurrences_use_the_reference(monkeypatch):
    x = inputs("GRU", {}, ("init",), np.float16)
    fast, reference = kernels("GRU")
    got = fast(*x, hidden_size=5)
    assert got[0].dtype == np.float16
    np.testing.assert_allclose(got[0].astype(np.float32), reference(*x, hidden_size=5)[0].astype(np.float32),
                               rtol=1e-2, atol=1e-3)
    monkeypatch.setattr(cpu_rnn, "_MAX_MACS", 0)
    monkeypatch.setattr(ref, "_recur", _recur_spy)
    calls.clear()
    kernels("LSTM")[0](*inputs("LSTM", {}, (), np.float32), hidden_size=5)
    assert calls == [True]


calls: list[bool] = []
_real_recur = ref._recur


def _recur_spy(*args):
    calls.append(True)
    return _real_recur(*args)


def test_tanh32_is_accurate():
    x = np.linspace(-12, 12, 100001, dtype=np.float32)
    got = np.array([cpu_rnn.tanh32(v) for v in x[::97]], np.float32)
    np.testing.assert_allclose(got, np.tanh(x[::97].astype(np.float64)), rtol=1e-6, atol=5e-7)


LSTM_CASES = [c for c in CASES if c[0] == "LSTM"]


@pytest.mark.parametrize("op,attrs,extras", LSTM_CASES, ids=[f"LSTM-{i}" for i in range(len(LSTM_CASES))])
def test_lstm_with_one_mkl_gemm_per_step_matches_reference(op, attrs, extras, monkeypatch):
    if cpu_rnn.blas.library() is None:
        pytest.skip("MKL (libmkl_rt) not loaded")
    seen = []
    monkeypatch.setattr(cpu_rnn, "_GEMM_BATCH", 2)
    monkeypatch.setattr(cpu_rnn, "_MAX_MACS", 0)  # large recurrences take this path too, not the reference's
    for name in ("_lstm_seq_gemm", "_lstm_plain_seq_gemm"):  # the general recurrence, the plain LSTM's
        real = getattr(cpu_rnn, name)
        monkeypatch.setattr(cpu_rnn, name, lambda *a, real=real, name=name: seen.append(name) or real(*a))
    x = inputs(op, attrs, extras, np.float32)
    fast, reference = kernels(op)
    got, want = fast(*x, hidden_size=5, **attrs), reference(*x, hidden_size=5, **attrs)
    assert set(seen) == {"_lstm_plain_seq_gemm" if not attrs and not extras else "_lstm_seq_gemm"}
    for g, w in zip(got, want, strict=True):
        np.testing.assert_allclose(g, w, rtol=2e-5, atol=2e-6)


@pytest.mark.parametrize("batch", [1, 5])
def test_plain_lstm_lane_matches_reference_with_constant_weights(batch, monkeypatch):
    """The plain LSTM (one direction, default cell) skips the general driver; with its weights declared constant
    (cached transposes, as in a loaded model), repeated calls keep matching the reference."""
    rng = np.random.default_rng(3)
    hidden, width, steps = 6, 4, 5
    w, r, b = (rng.standard_normal(s).astype(np.float32) * 0.5 for s in ((1, 4 * hidden, width),
                                                                       (1, 4 * hidden, hidden), (1, 8 * hidden)))
    cpu_rnn.blas.constant(w, r, b)
    x = rng.standard_normal((steps, batch, width)).astype(np.float32)
    h0, c0 = (rng.standard_normal((1, batch, hidden)).astype(np.float32) for _ in range(2))
    seen = []
    real = cpu_rnn._plain_lstm
    monkeypatch.setattr(cpu_rnn, "_plain_lstm", lambda *a: seen.append(True) or real(*a))
    fast, reference = kernels("LSTM")
    want = reference(x, w, r, b, None, h0, c0, hidden_size=hidden)
    for _ in range(2):
        for g, v in zip(fast(x, w, r, b, None, h0, c0, hidden_size=hidden), want, strict=True):
            np.testing.assert_allclose(g, v, rtol=2e-5, atol=2e-6)
    assert seen == [True, True]
    assert not np.shares_memory(fast(x, w, r, b, None, h0, c0)[1], h0)  # initial states are copied, not updated
    got = fast(x.astype(np.float64), w, r, b, None, h0, c0)  # float64: the general driver
    assert len(seen) == 3
    np.testing.assert_allclose(got[0], want[0], rtol=1e-4, atol=1e-5)


def test_plain_lstm_bias_sum_is_kept_only_for_a_constant_bias():
    """``Wb + Rb`` is computed once for a constant bias; a plain array is summed anew on each call."""
    rng = np.random.default_rng(4)
    const, plain = (rng.standard_normal((1, 16)).astype(np.float32) for _ in range(2))
    cpu_rnn.blas.constant(const)
    first = cpu_rnn._bias_sum(const, 2)
    np.testing.assert_array_equal(first, const[0, :8] + const[0, 8:])
    assert cpu_rnn._bias_sum(const, 2) is first
    before = cpu_rnn._bias_sum(plain, 2)
    plain += 1.0
    np.testing.assert_allclose(cpu_rnn._bias_sum(plain, 2), before + 2.0, rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(cpu_rnn._bias_sum(None, 2), np.zeros(8, np.float32))


@pytest.mark.parametrize("hidden", [3, 8, 13, 64])
def test_project_matches_numpy(hidden):
    """The recurrent mat-vec (rows of ``R^T`` four at a time, then the rest) against NumPy, at a column offset."""
    rng = np.random.default_rng(hidden)
    rt = rng.standard_normal((hidden, 40)).astype(np.float32)
    h, bias = rng.standard_normal(hidden).astype(np.float32), rng.standard_normal(7).astype(np.float32)
    z = np.empty(7, np.float32)
    cpu_rnn._project(z, h, rt, bias, 3)
    np.testing.assert_allclose(z, bias + h @ rt[:, 3:10], rtol=1e-5, atol=1e-5)


def embedding_case(batch: int, batch_major: int, dtype, states: bool, seed: int = 5):
    """(tokens, table, RT, initial_h, initial_c) of a vocabulary of 11, hidden 5, 7 steps; some tokens negative."""
    rng = np.random.default_rng(seed)
    hidden, steps = 5, 7
    tokens = rng.integers(-11, 11, (batch, steps) if batch_major else (steps, batch)).astype(dtype)
    table = rng.standard_normal((11, 4 * hidden)).astype(np.float32)
    rt = (rng.standard_normal((hidden, 4 * hidden)) * 0.5).astype(np.float32)
    h0, c0 = (rng.standard_normal((1, batch, hidden)).astype(np.float32) if states else None for _ in range(2))
    return tokens, table, rt, h0, c0


@pytest.mark.parametrize("batch,batch_major,dtype,states", [(1, 1, np.int64, False), (3, 0, np.int32, True),
                                                            (5, 1, np.int32, True), (6, 0, np.int64, False)])
def test_embedding_lstm_matches_lstm_over_gathered_rows(batch, batch_major, dtype, states):
    """opencann::EmbeddingLSTM (Numba mat-vecs below _GEMM_BATCH, one MKL GEMM per step from it) against its
    reference and against onnxruntime's LSTM over the gathered rows with an identity W."""
    d = registry.lookup("EmbeddingLSTM", 1, registry.OPENCANN_DOMAIN)
    fast, reference = d.kernel_for("cpu"), d.reference
    assert fast is cpu_rnn.embedding_lstm
    tokens, table, rt, h0, c0 = embedding_case(batch, batch_major, dtype, states)
    got, want = fast(tokens, table, rt, h0, c0, batch_major=batch_major), \
        reference(tokens, table, rt, h0, c0, batch_major=batch_major)
    x = table[tokens.T if batch_major else tokens]
    zeros = np.zeros((1, batch, 5), np.float32)
    oracle = ort_outputs("LSTM", {}, [x, np.eye(20, dtype=np.float32)[None], np.ascontiguousarray(rt.T)[None],
                                      np.zeros((1, 40), np.float32), None, zeros if h0 is None else h0,
                                      zeros if c0 is None else c0, None])
    for g, w, o in zip(got, want, oracle, strict=True):
        assert g.shape == w.shape == o.shape and g.dtype == np.float32
        np.testing.assert_allclose(g, w, rtol=2e-5, atol=2e-6)
        np.testing.assert_allclose(g, o, rtol=1e-4, atol=1e-5)
    if h0 is not None:
        assert not np.shares_memory(got[1], h0) and not np.array_equal(got[1], h0)
    for fn in (fast, reference):  # sequence=0, squeeze=1: an empty Y, the same final states without their first axis
        y, h, c = fn(tokens, table, rt, h0, c0, batch_major=batch_major, sequence=0, squeeze=1)
        assert y.shape == (0, 1, batch, 5) and h.shape == c.shape == (batch, 5)
        np.testing.assert_allclose(h, want[1][0], rtol=2e-5, atol=2e-6)
        np.testing.assert_allclose(c, want[2][0], rtol=2e-5, atol=2e-6)


def test_embedding_lstm_rejects_bad_tokens_and_states():
    d = registry.lookup("EmbeddingLSTM", 1, registry.OPENCANN_DOMAIN)
    for batch in (1, 4):  # both recurrences
        tokens, table, rt, h0, _ = embedding_case(batch, 0, np.int64, True)
        for bad in (11, -12):
            tokens[3, 0] = bad
            for fn in (d.kernel_for("cpu"), d.reference):
                with pytest.raises(AclError, match="outside"):
                    fn(tokens, table, rt)
        tokens[3, 0] = 0
        for fn in (d.kernel_for("cpu"), d.reference):
            with pytest.raises(AclError, match=r"initial_h float32\[1, \d, \d\] do not fit"):
                fn(tokens, table, rt, h0[:, :1] if batch > 1 else h0[..., :3])
            with pytest.raises(AclError, match=r"table float32\[11, 16\], RT .* do not fit"):
                fn(tokens, table[:, :16], rt)
            with pytest.raises(AclError, match="table float64"):
                fn(tokens, table.astype(np.float64), rt)
