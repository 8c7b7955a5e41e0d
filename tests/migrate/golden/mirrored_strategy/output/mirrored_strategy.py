"""MirroredStrategy: replicas and all-reduce, which opencann cannot run yet (reported as manual)."""
import numpy as np
import tensorflow as tf
import opencann.tf as oc
oc.enable(precision_mode="force_fp32")

tf.keras.utils.set_random_seed(7)
strategy = tf.distribute.MirroredStrategy()
print("replicas:", strategy.num_replicas_in_sync)

rng = np.random.default_rng(7)
x = rng.standard_normal((64, 4)).astype("float32")
y = x.sum(axis=1, keepdims=True)

with strategy.scope():
    model = tf.keras.Sequential([tf.keras.Input(shape=(4,)), tf.keras.layers.Dense(1)])
    model.compile(optimizer="sgd", loss="mse")
history = model.fit(x, y, batch_size=16 * strategy.num_replicas_in_sync, epochs=2, verbose=0)
print("final loss:", history.history["loss"][-1])
