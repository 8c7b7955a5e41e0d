"""The TF2 adapter: Keras fit/evaluate/predict and tf.function calls run on opencann."""
import numpy as np

from tests.tf.harness import assert_losses_match, assert_weights_match, fit_both, keras, oc, tf


def mlp():
    m = keras.Sequential([keras.Input((20,)), keras.layers.Dense(32, activation="relu"), keras.layers.Dense(4)])
    m.compile(optimizer=keras.optimizers.SGD(0.05),
              loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return m


def data(n=160, d=20, classes=4):
    rng = np.random.default_rng(0)
    return rng.standard_normal((n, d)).astype(np.float32), rng.integers(0, classes, n)


def test_mlp_fit_matches_tensorflow_step_by_step():
    x, y = data()
    tf_losses, oc_losses, tf_model, oc_model, adapter = fit_both(mlp, x, y, epochs=2)
    assert_losses_match(tf_losses, oc_losses)
    assert_weights_match(tf_model, oc_model)
    assert adapter.executions == len(oc_losses)  # every train step ran on opencann
    assert len(adapter.programs) == 1  # compiled once, for one input signature


def test_tf_function_with_variables_and_no_tensorflow_execution(monkeypatch):
    from tensorflow.python.eager.polymorphic_function import atomic_function

    v = tf.Variable(np.ones(3, np.float32))

    @tf.function
    def step(x):
        v.assign_add(x)
        return v * 2.0

    tf_runs = []
    tf_call_flat = atomic_function.AtomicFunction.call_flat
    monkeypatch.setattr(atomic_function.AtomicFunction, "call_flat", lambda *a: tf_runs.append(1) or tf_call_flat(*a))
    adapter = oc.enable()
    out = step(tf.constant([1.0, 2.0, 3.0]))
    np.testing.assert_allclose(out.numpy(), [4, 6, 8])
    np.testing.assert_allclose(v.numpy(), [2, 3, 4])
    assert adapter.executions == 1 and tf_runs == []  # TensorFlow's runtime never executed the function
    oc.disable()
    np.testing.assert_allclose(step(tf.constant([1.0, 1.0, 1.0])).numpy(), [6, 8, 10])  # TF again


def test_unsupported_ops_are_listed_with_call_sites():
    @tf.function
    def odd(x):
        return tf.math.lgamma(x) + tf.math.digamma(x)

    oc.enable()
    try:
        odd(tf.constant([1.5, 2.5]))
    except oc.AclError as exc:
        message = str(exc)
    else:
        raise AssertionError("expected an AclError")
    assert "Lgamma" in message and "Digamma" in message and "test_adapter.py" in message
    assert "opencann migrate" in message


def test_weights_trained_on_opencann_save_reload_and_keep_training(tmp_path):
    x, y = data()
    keras.utils.set_random_seed(0)
    model = mlp()
    adapter = oc.enable()
    model.fit(x, y, epochs=1, batch_size=32, verbose=0)
    predicted = model.predict(x, verbose=0)
    assert adapter.executions > 0
    oc.disable()
    path = str(tmp_path / "mlp.weights.h5")
    model.save_weights(path)
    checkpoint = tf.train.Checkpoint(model=model)
    saved = checkpoint.save(str(tmp_path / "ckpt"))
    fresh = mlp()
    fresh.load_weights(path)
    np.testing.assert_allclose(fresh.predict(x, verbose=0), predicted, rtol=1e-5, atol=1e-6)
    restored = mlp()
    tf.train.Checkpoint(model=restored).restore(saved).expect_partial()
    np.testing.assert_allclose(restored.predict(x, verbose=0), predicted, rtol=1e-5, atol=1e-6)
    history = model.fit(x, y, epochs=1, batch_size=32, verbose=0)  # plain TF continues from those weights
    assert np.isfinite(history.history["loss"][0])
    oc.enable()
    again = model.fit(x, y, epochs=1, batch_size=32, verbose=0)  # and opencann continues after TF
    assert again.history["loss"][0] < history.history["loss"][0] * 1.5


def test_tape_outside_the_function_is_refused_not_silently_wrong():
    w = tf.Variable(np.full(3, 2.0, np.float32))

    @tf.function
    def loss(x):
        return tf.reduce_sum(w * x)

    oc.enable()
    with tf.GradientTape() as tape:
        try:
            loss(tf.constant([1.0, 2.0, 3.0]))
        except oc.AclError as exc:
            assert "GradientTape" in str(exc)
        else:
            raise AssertionError("expected an AclError")

    @tf.function
    def step(x):  # the supported form: the tape inside the traced step
        with tf.GradientTape() as inner:
            value = tf.reduce_sum(w * x)
        return inner.gradient(value, w)

    np.testing.assert_allclose(step(tf.constant([1.0, 2.0, 3.0])).numpy(), [1, 2, 3])
    del tape


def test_merged_update_chains_train_bit_identically(monkeypatch):
    """The update chains merged per kind (ElementwiseChains) and the scalar chains change no bit of training: the
    same model trained with those passes off ends with exactly the same weights (AdamW: shared scalars, weight
    decay; biases and small kernels merge)."""
    from opencann.frontends.tensorflow import adapter

    def train(merged: bool):
        if not merged:
            monkeypatch.setattr(adapter, "merge_chains", lambda graph: graph)
            monkeypatch.setattr(adapter, "chain_scalars", lambda graph: graph)
        keras.utils.set_random_seed(0)
        model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(8, activation="relu"), keras.layers.Dense(3)])
        model.compile(optimizer=keras.optimizers.AdamW(1e-2, weight_decay=0.1),
                      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        a = oc.enable()
        try:
            x = np.random.default_rng(0).standard_normal((64, 6)).astype(np.float32)
            model.fit(x, (x[:, :3]).argmax(axis=1), epochs=2, batch_size=16, shuffle=False, verbose=0)
        finally:
            oc.disable()
            monkeypatch.undo()
        ops = {n.op for p in a.programs.values() for n in p.executor.plan.graph.nodes}
        return model.get_weights(), ops

    (merged, ops), (plain, plain_ops) = train(True), train(False)
    assert "ElementwiseChains" in ops and "ElementwiseChains" not in plain_ops
    for a, b in zip(merged, plain, strict=True):
        np.testing.assert_array_equal(a, b)
