"""The TensorFlow frontend: :func:`import_tensorflow` turns frozen GraphDefs, SavedModels, Keras models
and ``tf.function``s into IR graphs; :mod:`.adapter` and :mod:`.tf1` run TF2 functions and TF1 sessions
on opencann (see :mod:`opencann.tf`)."""
from opencann.frontends.tensorflow.loader import import_tensorflow

__all__ = ["import_tensorflow"]
