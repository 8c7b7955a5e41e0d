"""Keras mixed precision: the global policy becomes opencann's precision mode."""
import numpy as np
import tensorflow as tf
from tensorflow.keras import mixed_precision
import opencann.tf as oc
oc.enable(precision_mode="allow_mix_precision")

# opencann OC003 (mixed-precision-policy): disabled, see the migration report
# mixed_precision.set_global_policy("mixed_float16")
tf.keras.utils.set_random_seed(8)

rng = np.random.default_rng(8)
x = rng.standard_normal((128, 16)).astype("float32")
y = rng.integers(0, 4, size=(128,))

model = tf.keras.Sequential([
    tf.keras.Input(shape=(16,)),
    tf.keras.layers.Dense(32, activation="relu"),
    tf.keras.layers.Dense(4),
    tf.keras.layers.Activation("linear", dtype="float32"),
])
model.compile(optimizer=tf.keras.optimizers.Adam(0.01),
              loss=tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True))
history = model.fit(x, y, batch_size=32, epochs=3, verbose=0)
print("final loss:", history.history["loss"][-1])
