"""GPU-specific code: memory growth, device scopes, GPU checks and XLA, all neutralised."""
import os

import numpy as np
import tensorflow as tf

os.environ["CUDA_VISIBLE_DEVICES"] = "0"

gpus = tf.config.list_physical_devices("GPU")
if gpus:
    for gpu in gpus:
        tf.config.experimental.set_memory_growth(gpu, True)
tf.config.optimizer.set_jit(True)
print("GPU available:", tf.test.is_gpu_available())

tf.keras.utils.set_random_seed(9)
rng = np.random.default_rng(9)
x = rng.standard_normal((96, 6)).astype("float32")
y = np.tanh(x[:, :1])

with tf.device("/gpu:0"):
    model = tf.keras.Sequential([tf.keras.Input(shape=(6,)), tf.keras.layers.Dense(8, activation="tanh"),
                                 tf.keras.layers.Dense(1)])
optimizer = tf.keras.optimizers.Adam(0.02)


@tf.function(jit_compile=True)
def train_step(xb, yb):
    with tf.GradientTape() as tape:
        loss = tf.reduce_mean(tf.square(model(xb) - yb))
    optimizer.apply_gradients(zip(tape.gradient(loss, model.trainable_variables), model.trainable_variables))
    return loss


for epoch in range(4):
    for i in range(0, 96, 32):
        loss = train_step(x[i:i + 32], y[i:i + 32])
print("final loss:", float(loss))
