"""tf.data feeding a model whose input fixes the batch dimension: the batches must be static."""
import numpy as np
import tensorflow as tf

BATCH = 16

tf.keras.utils.set_random_seed(2)
rng = np.random.default_rng(2)
features = rng.standard_normal((64, 4)).astype("float32")
labels = rng.integers(0, 3, size=(64,))

dataset = tf.data.Dataset.from_tensor_slices((features, labels))
dataset = dataset.shuffle(64, seed=2).batch(BATCH)

inputs = tf.keras.Input(shape=(4,), batch_size=BATCH)
hidden = tf.keras.layers.Dense(12, activation="relu")(inputs)
outputs = tf.keras.layers.Dense(3)(hidden)
model = tf.keras.Model(inputs, outputs)
model.compile(optimizer="adam", loss=tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True))
history = model.fit(dataset, epochs=3, verbose=0)
print("final loss:", history.history["loss"][-1])
