"""Transformer, dropout and custom GradientTape training on opencann, step by step against TensorFlow."""
import numpy as np

from tests.tf.harness import assert_losses_match, assert_weights_match, fit_both, keras, oc, tf


def encoder_classifier(seq=12, width=16, classes=4):
    """A functional encoder block: self-attention, layer norms, a gelu feed-forward, mean pooling."""
    inp = keras.Input((seq, width))
    att = keras.layers.MultiHeadAttention(num_heads=4, key_dim=8)(inp, inp)
    x = keras.layers.LayerNormalization()(inp + att)
    h = keras.layers.Dense(32, activation="gelu")(x)
    x = keras.layers.LayerNormalization()(x + keras.layers.Dense(width)(h))
    out = keras.layers.Dense(classes)(keras.layers.GlobalAveragePooling1D()(x))
    model = keras.Model(inp, out)
    model.compile(optimizer=keras.optimizers.AdamW(1e-3, weight_decay=0.01),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
    return model


def mlp_dropout():
    model = keras.Sequential([keras.Input((784,)), keras.layers.Dense(128, activation="relu"),
                              keras.layers.Dropout(0.2), keras.layers.Dense(10)])
    model.compile(optimizer=keras.optimizers.Adam(1e-3),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
    return model


def train_step_calls(adapter) -> int:
    """How often the busiest compiled function ran (Keras also runs a variable initializer once)."""
    return max(p.calls for p in adapter.programs.values())


def assert_inference_matches(tf_model, oc_model, x, y):
    expected = (tf_model.evaluate(x, y, verbose=0), tf_model.predict(x, verbose=0))
    oc.enable()
    got = (oc_model.evaluate(x, y, verbose=0), oc_model.predict(x, verbose=0))
    oc.disable()
    np.testing.assert_allclose(got[0], expected[0], rtol=1e-4)
    np.testing.assert_allclose(got[1], expected[1], rtol=1e-4, atol=1e-5)


def test_transformer_adamw_trains_like_tensorflow():
    """170 samples: the last batch of each epoch is short, so Keras traces a dynamic batch dimension. The attention
    projections' biases go into their GEMMs' epilogues (their gradients' sums lose a reshape) and the score scale
    into the softmax and its gradient."""
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((170, 12, 16)).astype(np.float32), rng.integers(0, 4, 170)
    tf_losses, oc_losses, tf_model, oc_model, adapter = fit_both(encoder_classifier, x, y, epochs=2)
    assert_losses_match(tf_losses, oc_losses)
    assert_attention_weights_match(tf_model, oc_model)
    assert train_step_calls(adapter) == len(oc_losses)
    step = max(adapter.programs.values(), key=lambda p: p.calls).executor.plan.graph
    folded = [(n.op, n.attrs.get("scale")) for n in step.nodes if n.op in ("ScaledSoftmax", "SoftmaxGrad")]
    scale = float(np.float32(8 ** -0.5))
    assert folded == [("ScaledSoftmax", scale), ("SoftmaxGrad", scale)]
    assert sum(n.name.endswith("/biased") and n.op == "FusedMatMul" for n in step.nodes) == 3  # query, key, value
    assert sum(n.name.endswith("/squeezed") for n in step.nodes) == 3  # and their bias gradients
    assert_inference_matches(tf_model, oc_model, x[:48], y[:48])


def assert_attention_weights_match(tf_model, oc_model):
    """The key projection's bias has a zero gradient (softmax ignores a constant added to a row of scores): what
    either framework computes for it is rounding noise, which Adam scales up to ~lr * noise / epsilon. It must stay
    at that level (a wrong gradient would move it by ~lr a step); every other weight matches TensorFlow's."""
    noise = [w for w in tf_model.weights if w.path.endswith("key/bias")]
    assert len(noise) == 1
    for wa, wb in zip(tf_model.weights, oc_model.weights, strict=True):
        if wa is noise[0]:
            assert np.abs(wa.numpy()).max() < 1e-4 and np.abs(wb.numpy()).max() < 1e-4
        else:
            np.testing.assert_allclose(wb.numpy(), wa.numpy(), rtol=1e-4, atol=1e-5, err_msg=wa.path)


def test_mlp_dropout_adam_draws_tensorflows_dropout_masks():
    """Dropout is active: the losses only match because the Philox masks are TensorFlow's, bit for bit."""
    rng = np.random.default_rng(1)
    x, y = rng.standard_normal((320, 784)).astype(np.float32), rng.integers(0, 10, 320)
    tf_losses, oc_losses, tf_model, oc_model, _ = fit_both(mlp_dropout, x, y, epochs=2, batch_size=32)
    assert_losses_match(tf_losses, oc_losses)
    assert_weights_match(tf_model, oc_model)
    assert_inference_matches(tf_model, oc_model, x[:64], y[:64])


def gradient_tape_training(on_opencann: bool, x, y, steps: int):
    """A custom @tf.function train step: tanh MLP, MSE, Adam.apply_gradients -> (losses, model, adapter)."""
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(32, activation="tanh"),
                              keras.layers.Dense(16, activation="tanh"), keras.layers.Dense(1)])
    optimizer = keras.optimizers.Adam(1e-2)
    loss_fn = keras.losses.MeanSquaredError()

    @tf.function
    def train_step(xb, yb):
        with tf.GradientTape() as tape:
            loss = loss_fn(yb, model(xb, training=True))
        optimizer.apply_gradients(zip(tape.gradient(loss, model.trainable_variables), model.trainable_variables))
        return loss

    adapter = oc.enable() if on_opencann else None
    try:
        losses = [float(train_step(x[i % 4 * 32:(i % 4 + 1) * 32], y[i % 4 * 32:(i % 4 + 1) * 32]))
                  for i in range(steps)]
    finally:
        oc.disable()
    return losses, model, adapter


def test_gradienttape_mse_adam_custom_loop():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((128, 8)).astype(np.float32)
    y = np.sin(x.sum(axis=1, keepdims=True)).astype(np.float32)
    tf_losses, tf_model, _ = gradient_tape_training(False, x, y, steps=25)
    oc_losses, oc_model, adapter = gradient_tape_training(True, x, y, steps=25)
    assert_losses_match(tf_losses, oc_losses)
    assert_weights_match(tf_model, oc_model)
    assert tf_losses[-1] < tf_losses[0] / 2
    assert train_step_calls(adapter) == 25
