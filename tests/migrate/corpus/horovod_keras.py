"""Data-parallel Keras with horovod: needs collectives, which opencann does not have yet."""
import horovod.tensorflow.keras as hvd
import numpy as np
import tensorflow as tf

hvd.init()

rng = np.random.default_rng(hvd.rank())
x = rng.standard_normal((128, 8)).astype("float32")
y = rng.integers(0, 2, size=(128, 1)).astype("float32")

model = tf.keras.Sequential([tf.keras.Input(shape=(8,)), tf.keras.layers.Dense(1, activation="sigmoid")])
optimizer = hvd.DistributedOptimizer(tf.keras.optimizers.SGD(0.01 * hvd.size()))
model.compile(optimizer=optimizer, loss="binary_crossentropy")
callbacks = [hvd.callbacks.BroadcastGlobalVariablesCallback(0)]
model.fit(x, y, batch_size=32, epochs=2, callbacks=callbacks, verbose=1 if hvd.rank() == 0 else 0)
