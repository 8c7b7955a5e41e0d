"""Qualified names of the TensorFlow/Keras APIs a script references.

LibCST's ``QualifiedNameProvider`` resolves every spelling through the file's imports
(``import tensorflow as tf``, ``from tensorflow import keras``, ``from tensorflow.keras.layers import
Dense as D``, ``import tensorflow.compat.v1 as tf``); :func:`canonical` then maps equivalent public paths
to one name, the one the API database and the rule table use.
"""
from __future__ import annotations

ROOTS = frozenset({"tensorflow", "keras", "tf_keras", "horovod", "tensorflow_addons", "tensorflow_probability",
                   "tensorflow_datasets", "tensorflow_hub", "tensorflow_estimator"})
_PREFIXES = (  # (spelling, canonical spelling), first match wins
    ("tensorflow.compat.v2.", "tensorflow."),
    ("tensorflow.compat.v1.keras.", "keras."),
    ("tensorflow.python.keras.", "keras."),
    ("tensorflow.keras.", "keras."),
    ("tf_keras.", "keras."),
    ("keras.src.", "keras."),
    ("tensorflow_estimator.python.estimator.api._v2.estimator.", "tensorflow.estimator."),
)
_WHOLE = {"tensorflow.compat.v2": "tensorflow", "tensorflow.keras": "keras", "tf_keras": "keras",
          "tensorflow.python.keras": "keras", "tensorflow.compat.v1.keras": "keras"}


def canonical(name: str) -> str:
    """One public spelling per API: ``tensorflow.keras.X`` -> ``keras.X``, ``tensorflow.compat.v2.X`` ->
    ``tensorflow.X``; ``tensorflow.compat.v1.X`` stays (its semantics may differ from ``tensorflow.X``)."""
    if name in _WHOLE:
        return _WHOLE[name]
    for spelling, replacement in _PREFIXES:
        if name.startswith(spelling):
            return canonical(replacement + name[len(spelling):])
    return name


def is_tf(name: str) -> bool:
    return name.split(".", 1)[0] in ROOTS


def module_of(api: str) -> str:
    return api.rpartition(".")[0]


def dotted(node) -> str | None:
    """``a.b.c`` for a Name/Attribute chain, else None."""
    import libcst as cst

    if isinstance(node, cst.Name):
        return node.value
    if isinstance(node, cst.Attribute):
        base = dotted(node.value)
        return f"{base}.{node.attr.value}" if base else None
    return None


def import_target(node) -> str | None:
    """The dotted module name of an ``import``/``from ... import`` module expression."""
    return dotted(node) if node is not None else None
