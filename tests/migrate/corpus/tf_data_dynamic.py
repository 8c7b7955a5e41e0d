"""tf.data with a partial last batch and no fixed batch dimension: left dynamic (no drop_remainder)."""
import numpy as np
import tensorflow as tf

tf.keras.utils.set_random_seed(3)
rng = np.random.default_rng(3)
x = rng.standard_normal((100, 5)).astype("float32")
y = x @ rng.standard_normal((5, 1)).astype("float32")

train = (tf.data.Dataset.from_tensor_slices((x, y))
         .map(lambda a, b: (a * 0.5, b))
         .batch(32)  # 100 = 3 * 32 + 4: the last batch is smaller
         .prefetch(tf.data.AUTOTUNE))

model = tf.keras.Sequential([tf.keras.Input(shape=(5,)), tf.keras.layers.Dense(1)])
model.compile(optimizer=tf.keras.optimizers.SGD(0.1), loss="mse")
history = model.fit(train, epochs=4, verbose=0)
print("final loss:", history.history["loss"][-1])
