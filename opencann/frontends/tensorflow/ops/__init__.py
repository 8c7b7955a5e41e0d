"""Converters from TensorFlow op types to IR nodes, one module per family; importing this package
registers them all."""
from opencann.frontends.tensorflow.ops import (  # noqa: F401
    array,
    control,
    conv,
    math,
    nn,
    random,
    sparse,
    state,
    tensorlist,
    training,
)
