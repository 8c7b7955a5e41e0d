"""Control flow, sequences, optionals and recurrent kernels: cases ONNX's node suite leaves out.

Recurrent ops and Scan are compared with onnxruntime (sequence_lens, clip, peepholes, layouts,
activation parameters, scan axes); the rest with NumPy.
"""
import ml_dtypes
import numpy as np
import pytest
from onnx import TensorProto, helper

from opencann.errors import AclError
from tests.ops.single_node import check_graph, run_graph

RNG = np.random.default_rng(0)
F = TensorProto.FLOAT


run = run_graph
check_ort = check_graph


def rand(*shape, dtype=np.float32):
    return RNG.standard_normal(shape).astype(dtype)


def _rnn_inputs(gates, *, seq=4, batch=3, inp=5, hidden=4, n_dir=1, layout=0, bias=True, lens=None,
                states=1, peep=False):
    x = rand(batch, seq, inp) if layout else rand(seq, batch, inp)
    ins = {"X": x, "W": rand(n_dir, gates * hidden, inp), "R": rand(n_dir, gates * hidden, hidden)}
    ins["B"] = rand(n_dir, 2 * gates * hidden) if bias else None
    ins["sequence_lens"] = None if lens is None else np.array(lens, dtype=np.int32)
    for name in ("initial_h", "initial_c")[:states]:
        ins[name] = rand(batch, n_dir, hidden) if layout else rand(n_dir, batch, hidden)
    if peep:
        ins["P"] = rand(n_dir, 3 * hidden)
    return {k: v for k, v in ins.items() if v is not None}


def _rnn_node(op, ins, outputs, **attrs):
    order = ["X", "W", "R", "B", "sequence_lens", "initial_h", "initial_c", "P"]
    names = [n if n in ins else "" for n in order]
    while names[-1] == "":
        names.pop()
    return helper.make_node(op, names, outputs, **attrs)


# --- recurrent networks -----------------------------------------------------------------------------


def test_lstm_bidirectional_lens_peepholes_clip():
    ins = _rnn_inputs(4, n_dir=2, lens=[4, 1, 3], states=2, peep=True)
    node = _rnn_node("LSTM", ins, ["Y", "Y_h", "Y_c"], hidden_size=4, direction="bidirectional", clip=1.5)
    check_ort([node], ins, ["Y", "Y_h", "Y_c"])


def test_lstm_input_forget():
    ins = _rnn_inputs(4, states=2, lens=[2, 4, 1])
    node = _rnn_node("LSTM", ins, ["Y", "Y_h", "Y_c"], hidden_size=4, input_forget=1)
    check_ort([node], ins, ["Y", "Y_h", "Y_c"])


@pytest.mark.parametrize("op,gates", [("LSTM", 4), ("GRU", 3), ("RNN", 1)])
def test_layout1_matches_layout0(op, gates):
    """onnxruntime has no batch-major layout: check it against the time-major result."""
    states = 2 if op == "LSTM" else 1
    ins = _rnn_inputs(gates, layout=1, n_dir=2, lens=[3, 4, 1], states=states)
    outs = ["Y", "Y_h", "Y_c"][:states + 1]
    got = run([_rnn_node(op, ins, outs, layout=1, direction="bidirectional")], ins, outs)
    ins0 = {k: v.swapaxes(0, 1) if k in ("X", "initial_h", "initial_c") else v for k, v in ins.items()}
    want = run([_rnn_node(op, ins0, outs, direction="bidirectional")], ins0, outs)
    np.testing.assert_array_equal(got[0], want[0].transpose(2, 0, 1, 3))
    for g, w in zip(got[1:], want[1:], strict=True):
        np.testing.assert_array_equal(g, w.swapaxes(0, 1))


def test_gru_linear_before_reset_activation_params():
    ins = _rnn_inputs(3, n_dir=2, lens=[2, 4, 3])
    node = _rnn_node("GRU", ins, ["Y", "Y_h"], hidden_size=4, direction="bidirectional", linear_before_reset=1,
                     activations=["HardSigmoid", "LeakyRelu", "Sigmoid", "Tanh"],
                     activation_alpha=[0.3, 0.05], activation_beta=[0.4])
    check_ort([node], ins, ["Y", "Y_h"])


def test_rnn_reverse_lens_relu_opset7():
    ins = _rnn_inputs(1, lens=[3, 4, 2])
    node = _rnn_node("RNN", ins, ["Y", "Y_h"], hidden_size=4, direction="reverse", activations=["Relu"], clip=2.0)
    check_ort([node], ins, ["Y", "Y_h"], opset=7)


@pytest.mark.parametrize("dtype", [np.float16, ml_dtypes.bfloat16])
def test_lstm_low_precision_matches_float32(dtype):
    ins = _rnn_inputs(4, states=2)
    low = {k: v.astype(dtype) if v.dtype == np.float32 else v for k, v in ins.items()}
    node = _rnn_node("LSTM", ins, ["Y", "Y_h", "Y_c"], hidden_size=4)
    want = run([node], {k: v.astype(dtype).astype(np.float32) for k, v in ins.items()}, ["Y", "Y_h", "Y_c"])
    got = run([node], low, ["Y", "Y_h", "Y_c"], opset=22)
    for g, w in zip(got, want, strict=True):
        assert g.dtype == dtype
        np.testing.assert_allclose(g.astype(np.float32), w, atol=2e-2)


def test_rnn_rejects_bad_direction():
    ins = _rnn_inputs(1)
    with pytest.raises(AclError, match="direction"):
        run([_rnn_node("RNN", ins, ["Y"], hidden_size=4, direction="bidirectional")], ins, ["Y"])


# --- control flow -----------------------------------------------------------------------------------


def _counting_body(scan_shape=(2,)):
    """Loop body: carried ``acc += 1``, condition ``acc < 3``, scan output ``acc`` broadcast to scan_shape."""
    one = helper.make_node("Constant", [], ["one"], value=helper.make_tensor("c", F, [], [1.0]))
    three = helper.make_node("Constant", [], ["three"], value=helper.make_tensor("t", F, [], [3.0]))
    zeros = helper.make_node("Constant", [], ["z"], value=helper.make_tensor("z", F, scan_shape, [0.0] * 2))
    nodes = [one, three, zeros, helper.make_node("Add", ["acc_in", "one"], ["acc_out"]),
             helper.make_node("Less", ["acc_out", "three"], ["cond_out"]),
             helper.make_node("Add", ["acc_out", "z"], ["scan"])]
    return helper.make_graph(
        nodes, "body",
        [helper.make_tensor_value_info("i", TensorProto.INT64, []),
         helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
         helper.make_tensor_value_info("acc_in", F, [])],
        [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
         helper.make_tensor_value_info("acc_out", F, []),
         helper.make_tensor_value_info("scan", F, list(scan_shape))])


def test_loop_zero_trips_gives_empty_scan_output():
    node = helper.make_node("Loop", ["M", "", "acc"], ["acc_final", "scans"], body=_counting_body())
    acc, scans = run([node], {"M": np.array(0, np.int64), "acc": np.array(5, np.float32)}, ["acc_final", "scans"])
    assert acc == 5 and scans.shape == (0, 2) and scans.dtype == np.float32


def test_loop_while_condition():
    node = helper.make_node("Loop", ["", "cond", "acc"], ["acc_final", "scans"], body=_counting_body())
    acc, scans = run([node], {"cond": np.array(True), "acc": np.array(0, np.float32)}, ["acc_final", "scans"])
    assert acc == 3
    np.testing.assert_array_equal(scans, [[1, 1], [2, 2], [3, 3]])


def test_loop_trip_count_without_condition_ignores_body_condition():
    node = helper.make_node("Loop", ["M", "", "acc"], ["acc_final", "scans"], body=_counting_body())
    acc, scans = run([node], {"M": np.array(5, np.int64), "acc": np.array(0, np.float32)}, ["acc_final", "scans"])
    assert acc == 5 and scans.shape == (5, 2)


def test_if_one_element_condition_and_outer_scope():
    then = helper.make_graph([helper.make_node("Neg", ["x"], ["y"])], "then", [],
                             [helper.make_tensor_value_info("y", F, [2])])
    other = helper.make_graph([helper.make_node("Abs", ["x"], ["z"])], "else", [],
                              [helper.make_tensor_value_info("z", F, [2])])
    node = helper.make_node("If", ["c"], ["out"], then_branch=then, else_branch=other)
    x = np.array([-1.0, 2.0], np.float32)
    (got,) = run([node], {"c": np.array([False]), "x": x}, ["out"])
    np.testing.assert_array_equal(got, [1.0, 2.0])


def _scan_body():
    """Scan body: state ``s += x_t``; scan outputs ``s`` and ``x_t * 2``."""
    return helper.make_graph(
        [helper.make_node("Add", ["s_in", "x_t"], ["s_out"]), helper.make_node("Add", ["x_t", "x_t"], ["dbl"]),
         helper.make_node("Identity", ["s_out"], ["s_scan"])],
        "body", [helper.make_tensor_value_info("s_in", F, [2]), helper.make_tensor_value_info("x_t", F, [2])],
        [helper.make_tensor_value_info("s_out", F, [2]), helper.make_tensor_value_info("s_scan", F, [2]),
         helper.make_tensor_value_info("dbl", F, [2])])


def test_scan9_axes_and_directions():
    node = helper.make_node("Scan", ["s", "x"], ["s_final", "ys", "dbl"], body=_scan_body(), num_scan_inputs=1,
                            scan_input_axes=[-1], scan_input_directions=[1], scan_output_axes=[1, -2],
                            scan_output_directions=[1, 0])
    check_ort([node], {"s": rand(2), "x": rand(2, 5)}, ["s_final", "ys", "dbl"], opset=11)


def test_scan8_sequence_lens_and_reverse():
    node = helper.make_node("Scan", ["lens", "s", "x"], ["s_final", "ys", "dbl"], body=_scan_body(),
                            num_scan_inputs=1, directions=[1])
    check_ort([node], {"lens": np.array([3, 1], np.int64), "s": rand(2, 2), "x": rand(2, 3, 2)},
              ["s_final", "ys", "dbl"], opset=8)


def test_scan8_matches_ort_without_lens():
    node = helper.make_node("Scan", ["", "s", "x"], ["s_final", "ys", "dbl"], body=_scan_body(), num_scan_inputs=1)
    check_ort([node], {"s": rand(2, 2), "x": rand(2, 3, 2)}, ["s_final", "ys", "dbl"], opset=8)


# --- sequences and optionals -----------------------------------------------------------------------


def test_split_to_sequence_uneven_chunks_negative_axis():
    x = rand(3, 5)
    (seq,) = run([helper.make_node("SplitToSequence", ["x", "split"], ["seq"], axis=-1)],
                 {"x": x, "split": np.array(2, np.int64)}, ["seq"])
    assert [p.shape for p in seq] == [(3, 2), (3, 2), (3, 1)]
    np.testing.assert_array_equal(np.concatenate(seq, axis=1), x)


def test_split_to_sequence_zero_size_axis():
    (seq,) = run([helper.make_node("SplitToSequence", ["x"], ["seq"], axis=1, keepdims=0)],
                 {"x": np.zeros((2, 0), np.int32)}, ["seq"])
    assert seq == []


def test_sequence_roundtrip_at_erase_concat_new_axis():
    nodes = [helper.make_node("SequenceConstruct", ["a", "b", "c"], ["seq"]),
             helper.make_node("SequenceErase", ["seq", "minus3"], ["erased"]),
             helper.make_node("SequenceAt", ["erased", "minus1"], ["last"]),
             helper.make_node("SequenceLength", ["erased"], ["n"]),
             helper.make_node("ConcatFromSequence", ["erased"], ["stacked"], axis=-1, new_axis=1)]
    a, b, c = (rand(2, 3).astype(np.float16) for _ in range(3))
    last, n, stacked = run(nodes, {"a": a, "b": b, "c": c, "minus3": np.array(-3, np.int64),
                                   "minus1": np.array(-1, np.int32)}, ["last", "n", "stacked"])
    np.testing.assert_array_equal(last, c)
    assert n.dtype == np.int64 and n == 2
    np.testing.assert_array_equal(stacked, np.stack([b, c], axis=-1))


def test_sequence_insert_out_of_range():
    nodes = [helper.make_node("SequenceConstruct", ["a"], ["seq"]),
             helper.make_node("SequenceInsert", ["seq", "a", "pos"], ["out"])]
    with pytest.raises(AclError, match="out of range"):
        run(nodes, {"a": rand(2), "pos": np.array(3, np.int64)}, ["out"])


def test_sequence_map_with_tensor_input():
    body = helper.make_graph([helper.make_node("Mul", ["e", "k"], ["o"])], "body",
                             [helper.make_tensor_value_info("e", F, None), helper.make_tensor_value_info("k", F, [])],
                             [helper.make_tensor_value_info("o", F, None)])
    seq = [rand(2), rand(3), rand(0)]
    (out,) = run([helper.make_node("SequenceMap", ["s", "t"], ["out"], body=body)],
                 {"s": seq, "t": np.array(3, np.float32)}, ["out"], opset=17)
    for o, e in zip(out, seq, strict=True):
        np.testing.assert_allclose(o, e * 3)


def test_optional_empty_and_present():
    tp = helper.make_tensor_type_proto(F, [2])
    nodes = [helper.make_node("Optional", [], ["empty"], type=tp),
             helper.make_node("OptionalHasElement", ["empty"], ["has_empty"]),
             helper.make_node("Optional", ["x"], ["full"]),
             helper.make_node("OptionalHasElement", ["full"], ["has_full"]),
             helper.make_node("OptionalGetElement", ["full"], ["x_back"])]
    x = rand(2)
    has_empty, has_full, back = run(nodes, {"x": x}, ["has_empty", "has_full", "x_back"], opset=18)
    assert not has_empty and has_full and has_empty.dtype == np.bool_
    np.testing.assert_array_equal(back, x)
