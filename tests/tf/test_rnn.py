"""Recurrent layers, functional control flow and embeddings on opencann, checked against TensorFlow.

Keras' LSTM/GRU run as a ``While`` loop over TensorLists, their gradient as a second loop popping the
values the first one pushed; an Embedding's gradient is sparse (IndexedSlices) and RMSprop updates it
through an ``If`` and scatters. Each model trains step by step like TF, then evaluates and predicts alike.
"""
import numpy as np
import pytest

from opencann.ops.tf_control import truth_value
from tests.tf.harness import StepLosses, assert_losses_match, assert_weights_match, fit_both, keras, oc, tf

VOCAB, STEPS = 50, 12


def tokens(n=160):
    rng = np.random.default_rng(0)
    x = rng.integers(0, VOCAB, (n, STEPS)).astype(np.int32)
    y = (x[:, :4].mean(axis=1) > VOCAB / 2).astype(np.float32)[:, None]
    return x, y


def classifier(rnn, bidirectional: bool):
    def make():
        layer = keras.layers.Bidirectional(rnn(8)) if bidirectional else rnn(8)
        m = keras.Sequential([keras.Input((STEPS,), dtype="int32"), keras.layers.Embedding(VOCAB, 8), layer,
                              keras.layers.Dense(1, activation="sigmoid")])
        m.compile(optimizer=keras.optimizers.RMSprop(0.01), loss="binary_crossentropy")
        return m

    return make


@pytest.mark.parametrize(("make", "cells"), [
    (classifier(keras.layers.LSTM, True), {"LSTMSequenceForward", "LSTMSequenceBackward"}),
    (classifier(keras.layers.GRU, False), {"FusedElementwise"})], ids=["bidirectional_lstm", "gru"])
def test_recurrent_classifier_fit_evaluate_predict_match_tensorflow(make, cells):
    x, y = tokens()
    tf_losses, oc_losses, tf_model, oc_model, adapter = fit_both(make, x, y, epochs=2)
    assert_losses_match(tf_losses, oc_losses)
    assert_weights_match(tf_model, oc_model)
    assert adapter.executions >= len(oc_losses)
    nodes = [n for p in adapter.programs.values() for n in p.executor.plan.graph.nodes]
    ops = {n.op for n in nodes} | {b.op for n in nodes if n.op == "Loop" for b in n.attrs["body"].nodes}
    assert cells <= ops  # the cells (GRU: in the loop bodies), LSTM: whole loops (forward and gradient), fused

    expected = tf_model.evaluate(x, y, batch_size=40, verbose=0), tf_model.predict(x, batch_size=40, verbose=0)
    adapter = oc.enable()
    got = tf_model.evaluate(x, y, batch_size=40, verbose=0), tf_model.predict(x, batch_size=40, verbose=0)
    assert adapter.executions >= 8  # 4 evaluation and 4 prediction batches ran on opencann
    np.testing.assert_allclose(got[0], expected[0], rtol=1e-5)
    np.testing.assert_allclose(got[1], expected[1], rtol=1e-5, atol=1e-6)


def train_on_opencann(make, x, y):
    """(per-step losses, final weights, the adapter) of one epoch on opencann."""
    keras.utils.set_random_seed(0)
    model = make()
    adapter = oc.enable()
    try:
        cb = StepLosses()
        model.fit(x, y, epochs=1, batch_size=16, shuffle=False, verbose=0, callbacks=[cb])
    finally:
        oc.disable()
    ops = {n.op for p in adapter.programs.values() for n in p.executor.plan.graph.nodes}
    return cb.losses, [w.numpy() for w in model.weights], ops


@pytest.mark.parametrize("sequences", [False, True], ids=["last", "sequences"])
def test_lstm_loops_as_one_node_each_are_bit_identical_to_cell_by_cell(monkeypatch, sequences):
    import opencann.ops.cpu_rnn_loops as loops
    from opencann.compiler.passes import fuse_rnn_loops

    def make():
        layers = [keras.Input((STEPS,), dtype="int32"), keras.layers.Embedding(VOCAB, 8),
                  keras.layers.LSTM(6, return_sequences=sequences)]
        m = keras.Sequential(layers + [keras.layers.GlobalAveragePooling1D()] * sequences +
                             [keras.layers.Dense(1, activation="sigmoid")])
        m.compile(optimizer=keras.optimizers.RMSprop(0.01), loss="binary_crossentropy")
        return m

    x, y = tokens(64)
    fallbacks, plain = [], loops.loop
    monkeypatch.setattr(loops, "loop", lambda *a, **k: fallbacks.append(1) or plain(*a, **k))
    losses, weights, ops = train_on_opencann(make, x, y)
    assert {"LSTMSequenceForward", "LSTMSequenceBackward"} <= ops and "Loop" not in ops and not fallbacks
    monkeypatch.setattr(fuse_rnn_loops, "fuse_lstm_loops", lambda graph: graph)
    cell_losses, cell_weights, ops = train_on_opencann(make, x, y)
    assert "Loop" in ops and "LSTMSequenceForward" not in ops
    assert losses == cell_losses
    for a, b in zip(weights, cell_weights, strict=True):
        np.testing.assert_array_equal(a, b)


def run_both(fn, args, variables=()):
    """``fn(*args)`` and the variables' final values, with TensorFlow and then on opencann (variables reset)."""
    start = [v.numpy() for v in variables]
    results = []
    for on_opencann in (False, True):
        for v, value in zip(variables, start):
            v.assign(value)
        adapter = oc.enable() if on_opencann else None
        out = tf.nest.map_structure(lambda t: t.numpy(), fn(*args))
        oc.disable()
        results.append((out, [v.numpy() for v in variables]))
    assert adapter.executions == 1
    return results


def assert_same(results):
    (tf_out, tf_vars), (oc_out, oc_vars) = results
    for a, b in zip(tf.nest.flatten(tf_out) + tf_vars, tf.nest.flatten(oc_out) + oc_vars, strict=True):
        np.testing.assert_allclose(b, a, rtol=1e-6)
        assert b.dtype == a.dtype and b.shape == a.shape


def test_while_loop_with_tensor_array_and_a_variable_assigned_in_the_body():
    total = tf.Variable([0.0, 0.0])

    @tf.function
    def running_products(x):
        def body(i, acc, ta):
            total.assign_add(x[i])
            return i + 1, acc + x[i], ta.write(i, acc * x[i])

        ta = tf.TensorArray(tf.float32, size=0, dynamic_size=True)
        _, acc, ta = tf.while_loop(lambda i, acc, ta: i < tf.shape(x)[0], body, [0, tf.zeros(2), ta])
        return acc, ta.stack()

    x = tf.constant(np.arange(10, dtype=np.float32).reshape(5, 2) / 3)
    assert_same(run_both(running_products, [x], [total]))


def test_tensor_array_holes_read_and_stack_as_zeros():
    @tf.function
    def sparse_writes(x):
        ta = tf.TensorArray(tf.float32, size=4, element_shape=[3]).write(1, x).write(3, 2 * x)
        return ta.stack(), ta.read(0), tf.reverse(ta.stack(), axis=[0, 1])

    assert_same(run_both(sparse_writes, [tf.constant([1.0, 2.0, 3.0])]))


def test_cond_and_switch_case_assign_variables_inside_branches():
    a, b = tf.Variable([1.0, 2.0]), tf.Variable(10.0)

    @tf.function
    def branches(flag, index):
        def positive():
            a.assign(a * 2.0)
            return a + 1.0

        def negative():
            b.assign_sub(1.0)
            return a - b

        y = tf.cond(flag > 0, positive, negative)
        z = tf.switch_case(index, [lambda: y * 0.0, lambda: y + b, lambda: y * b])
        return y, z

    for flag, index in [(1, 0), (-1, 1), (1, 2), (-1, 7)]:  # index 7 runs the last branch
        assert_same(run_both(branches, [tf.constant(flag), tf.constant(index)], [a, b]))


def test_embedding_gradient_ops():
    table = tf.Variable(np.arange(12, dtype=np.float32).reshape(6, 2))

    @tf.function
    def sparse_update(ids, rows):
        picked = tf.gather(table, ids)  # ResourceGather
        table.scatter_sub(tf.IndexedSlices(rows, ids))  # ResourceScatterSub, repeated ids accumulate
        table.scatter_add(tf.IndexedSlices(picked, ids))
        sums = tf.math.unsorted_segment_sum(rows, ids - 1, num_segments=6)  # id -1 is dropped
        where = tf.where(sums > 0)
        spread = tf.scatter_nd(where[:, :1], tf.ones(tf.shape(where)[:1]), [6])
        return sums, where, spread, tf.math.invert_permutation([2, 0, 3, 1])

    ids = tf.constant([0, 3, 3, 5])
    rows = tf.constant(np.arange(8, dtype=np.float32).reshape(4, 2) + 1)
    assert_same(run_both(sparse_update, [ids, rows], [table]))


@pytest.mark.parametrize("value, expected", [(np.array(0), False), (np.array(2.5), True), (np.array(b""), False),
                                             (np.zeros((1,)), True), (np.zeros((0, 3)), False)])
def test_if_condition_follows_tensorflow_truth(value, expected):
    assert truth_value(value) == expected
