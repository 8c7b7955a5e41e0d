"""Summaries and debugging helpers: unsupported on opencann's device but harmless (eager, on TF)."""
import tempfile

import numpy as np
import tensorflow as tf

tf.keras.utils.set_random_seed(12)
rng = np.random.default_rng(12)
x = rng.standard_normal((64, 3)).astype("float32")
y = x.sum(axis=1, keepdims=True)
tf.debugging.assert_all_finite(tf.constant(x), "inputs must be finite")

model = tf.keras.Sequential([tf.keras.Input(shape=(3,)), tf.keras.layers.Dense(1)])
model.compile(optimizer=tf.keras.optimizers.SGD(0.05), loss="mse")
writer = tf.summary.create_file_writer(tempfile.mkdtemp())
with writer.as_default():
    for epoch in range(3):
        loss = model.fit(x, y, batch_size=16, epochs=1, verbose=0).history["loss"][-1]
        tf.summary.write("loss", loss, step=epoch)
tf.print("epochs:", 3)
print("final loss:", loss)
