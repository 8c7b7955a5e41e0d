"""Every way of naming TensorFlow: aliases, from-imports, keras, compat.v1, a star import, re-binding."""
import numpy as np
import tensorflow as tensorflow_lib
import tensorflow.compat.v1 as v1
from tensorflow import keras
from tensorflow.keras import layers as L
from tensorflow.keras.layers import Dense as D
from tensorflow.keras.optimizers import *  # noqa: F403

keras.utils.set_random_seed(10)
rng = np.random.default_rng(10)
x = rng.standard_normal((64, 5)).astype("float32")
y = (x[:, :1] > 0).astype("float32")

model = keras.Sequential([keras.Input(shape=(5,)), L.Dense(6, activation="relu"), D(1, activation="sigmoid")])
model.compile(optimizer=Adam(0.02), loss=keras.losses.BinaryCrossentropy())  # noqa: F405
history = model.fit(x, y, batch_size=16, epochs=3, verbose=0)


def Session():  # a local function that shadows nothing TensorFlow
    return "not a TensorFlow session"


print(Session(), v1.executing_eagerly())
device = tensorflow_lib.device
tensorflow_lib = None  # re-bound: the name no longer means TensorFlow below
print("final loss:", history.history["loss"][-1])
