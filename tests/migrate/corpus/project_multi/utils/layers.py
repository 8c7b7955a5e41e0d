"""Shared layers."""
from tensorflow import keras


def residual(x, units):
    return keras.layers.Add()([x, keras.layers.Dense(units, activation="relu")(x)])
