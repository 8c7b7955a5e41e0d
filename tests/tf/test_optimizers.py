"""Keras optimizers update variables on opencann exactly as on TensorFlow (the update math is traced
into the train function: plain ops plus Assign*VariableOp)."""
import numpy as np
import pytest

from tests.tf.harness import assert_losses_match, assert_weights_match, fit_both, keras

OPTIMIZERS = {
    "sgd": lambda: keras.optimizers.SGD(0.05),
    "sgd_momentum": lambda: keras.optimizers.SGD(0.05, momentum=0.9),
    "sgd_nesterov": lambda: keras.optimizers.SGD(0.05, momentum=0.9, nesterov=True),
    "adam": lambda: keras.optimizers.Adam(1e-3),
    "adam_amsgrad": lambda: keras.optimizers.Adam(1e-3, amsgrad=True),
    "adam_schedule_clipnorm": lambda: keras.optimizers.Adam(
        keras.optimizers.schedules.ExponentialDecay(1e-2, decay_steps=5, decay_rate=0.9), clipnorm=1.0),
    "adamw": lambda: keras.optimizers.AdamW(1e-3, weight_decay=0.05),
    "rmsprop": lambda: keras.optimizers.RMSprop(1e-3),
    "rmsprop_centered_momentum": lambda: keras.optimizers.RMSprop(1e-3, momentum=0.5, centered=True),
    "adagrad": lambda: keras.optimizers.Adagrad(0.05),
    "adamax": lambda: keras.optimizers.Adamax(1e-3),
    "nadam": lambda: keras.optimizers.Nadam(1e-3),
    "lion": lambda: keras.optimizers.Lion(1e-3),
    "adafactor": lambda: keras.optimizers.Adafactor(0.05),
}


def data(n=160, d=20, classes=4):
    """A learnable task: the label is the argmax of a fixed linear map."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((n, d)).astype(np.float32)
    return x, (x @ rng.standard_normal((d, classes))).argmax(axis=1)


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_optimizer_trains_the_mlp_like_tensorflow(name):
    def make():
        model = keras.Sequential([keras.Input((20,)), keras.layers.Dense(32, activation="relu"),
                                  keras.layers.Dense(16, activation="tanh"), keras.layers.Dense(4)])
        model.compile(optimizer=OPTIMIZERS[name](),
                      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        return model

    x, y = data()
    tf_losses, oc_losses, tf_model, oc_model, _ = fit_both(make, x, y, epochs=2)
    assert_losses_match(tf_losses, oc_losses)
    assert_weights_match(tf_model, oc_model)
    assert tf_losses[-1] < tf_losses[9]  # the second epoch's mean loss is below the first's
