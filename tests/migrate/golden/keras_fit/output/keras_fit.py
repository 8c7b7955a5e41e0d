"""Keras Sequential MLP trained with fit: the plain case (only the opencann lines are added)."""
import numpy as np
import tensorflow as tf
import opencann.tf as oc
oc.enable(precision_mode="force_fp32")

tf.keras.utils.set_random_seed(0)

rng = np.random.default_rng(0)
x = rng.standard_normal((256, 8)).astype("float32")
y = (x.sum(axis=1, keepdims=True) > 0).astype("float32")

model = tf.keras.Sequential([
    tf.keras.Input(shape=(8,)),
    tf.keras.layers.Dense(16, activation="relu"),
    tf.keras.layers.Dense(1, activation="sigmoid"),
])
model.compile(optimizer=tf.keras.optimizers.Adam(learning_rate=0.01), loss="binary_crossentropy")
history = model.fit(x, y, batch_size=32, epochs=3, verbose=0)
print("final loss:", history.history["loss"][-1])
