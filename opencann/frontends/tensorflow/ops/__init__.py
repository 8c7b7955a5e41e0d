"""Converters from TensorFlow op types to IR nodes, one module per family; importing this package
registers them all."""
from opencann.frontends.tensorflow.ops import array, math, nn, state  # noqa: F401
