"""The input pipeline."""
import tensorflow as tf


def make_dataset(rng, n=96, batch=32):
    x = rng.standard_normal((n, 6)).astype("float32")
    y = x[:, :2].sum(axis=1, keepdims=True)
    # opencann OC021 (gpu-device-scope): was "/GPU:0"
    with tf.device("/cpu:0"):
        return tf.data.Dataset.from_tensor_slices((x, y)).batch(batch)
