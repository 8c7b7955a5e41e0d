# -*- coding: utf-8 -*-
"""Modern Python around TensorFlow: f-strings, non-ASCII text, decorators, async, walrus, match."""
import asyncio
import functools

import numpy as np
import tensorflow as tf
import opencann.tf as oc
oc.enable(precision_mode="force_fp32")

GRÖSSE = 4  # Größe der Daten — 数据大小


def logged(fn):
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        result = fn(*args, **kwargs)
        print(f"{fn.__name__!r:>12}: {float(result):.4f} ✓")
        return result
    return wrapper


@logged
def evaluate(model, x, y):
    return tf.reduce_mean(tf.square(model(x) - y))


async def load(n: int) -> np.ndarray:
    await asyncio.sleep(0)
    return np.random.default_rng(11).standard_normal((n, GRÖSSE)).astype("float32")


def describe(value):
    match value:
        case {"kind": "loss", "value": v} if v < 1:
            return f"small loss {v:.3f}"
        case {"kind": "loss", "value": v}:
            return f"loss {v:.3f}"
        case _:
            return "?"


tf.keras.utils.set_random_seed(11)
x = asyncio.run(load(64))
y = x[:, :1] * 2.0
model = tf.keras.Sequential([tf.keras.Input(shape=(GRÖSSE,)), tf.keras.layers.Dense(1)])
model.compile(optimizer=tf.keras.optimizers.SGD(0.1), loss="mse")
if (history := model.fit(x, y, batch_size=16, epochs=3, verbose=0)) is not None:
    print(describe({"kind": "loss", "value": history.history["loss"][-1]}))
evaluate(model, x, y)
print(f"final loss: {history.history['loss'][-1]}")
