"""Train the same model with TensorFlow alone and on opencann, from the same weights and batches."""
from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from collections.abc import Callable  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402

tf = pytest.importorskip("tensorflow")
keras = pytest.importorskip("keras")

import opencann.tf as oc  # noqa: E402


class StepLosses(keras.callbacks.Callback):
    """The loss Keras reports after every training step."""

    def __init__(self):
        super().__init__()
        self.losses: list[float] = []

    def on_train_batch_end(self, batch, logs=None):
        self.losses.append(float(logs["loss"]))


def fit_both(make: Callable[[], keras.Model], x, y, epochs: int = 2, batch_size: int = 16, **fit_kwargs):
    """(TF per-step losses, opencann per-step losses, TF model, opencann model, adapter)."""
    results = []
    for on_opencann in (False, True):
        keras.utils.set_random_seed(0)
        model = make()
        adapter = oc.enable() if on_opencann else None
        try:
            cb = StepLosses()
            model.fit(x, y, epochs=epochs, batch_size=batch_size, shuffle=False, verbose=0, callbacks=[cb],
                      **fit_kwargs)
        finally:
            oc.disable()
        results.append((cb.losses, model, adapter))
    (tf_losses, tf_model, _), (oc_losses, oc_model, adapter) = results
    return tf_losses, oc_losses, tf_model, oc_model, adapter


def assert_losses_match(tf_losses, oc_losses, rtol: float = 1e-4, min_steps: int = 20):
    assert len(tf_losses) == len(oc_losses) >= min_steps
    np.testing.assert_allclose(oc_losses, tf_losses, rtol=rtol)


def assert_weights_match(a: keras.Model, b: keras.Model, rtol: float = 1e-4, atol: float = 1e-5):
    for wa, wb in zip(a.weights, b.weights, strict=True):
        np.testing.assert_allclose(wb.numpy(), wa.numpy(), rtol=rtol, atol=atol, err_msg=wa.path)


@pytest.fixture(autouse=True)
def _disable_adapter():
    yield
    oc.disable()
