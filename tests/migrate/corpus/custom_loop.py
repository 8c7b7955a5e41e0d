"""A custom training loop: GradientTape inside a tf.function, run from main()."""
import numpy as np
import tensorflow as tf


def make_data(n=128, d=6):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((n, d)).astype(np.float32)
    w = rng.standard_normal((d, 1)).astype(np.float32)
    return x, x @ w + 0.1


class Regressor(tf.keras.Model):
    def __init__(self):
        super().__init__()
        self.hidden = tf.keras.layers.Dense(8, activation="tanh")
        self.out = tf.keras.layers.Dense(1)

    def call(self, x):
        return self.out(self.hidden(x))


def main():
    tf.keras.utils.set_random_seed(1)
    x, y = make_data()
    model = Regressor()
    optimizer = tf.keras.optimizers.SGD(learning_rate=0.05)
    loss_fn = tf.keras.losses.MeanSquaredError()

    @tf.function
    def train_step(xb, yb):
        with tf.GradientTape() as tape:
            loss = loss_fn(yb, model(xb))
        grads = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(grads, model.trainable_variables))
        return loss

    for epoch in range(5):
        for i in range(0, len(x), 32):
            loss = train_step(x[i:i + 32], y[i:i + 32])
    print("final loss:", float(loss))


if __name__ == "__main__":
    main()
