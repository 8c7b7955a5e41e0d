"""TensorFlow models → IR graphs for ``atc`` and the ACL runtime: :func:`import_tensorflow`.

Sources and what becomes of their variables:

* a frozen GraphDef (a ``.pb`` file, a ``GraphDef`` or a ``tf.Graph``): inputs are its placeholders (or
  the tensors named by ``inputs``), outputs the tensors named by ``outputs`` (default: the tensors no op
  reads). Only what the outputs need is imported. A graph that still holds variables (``VarHandleOp``,
  ``VariableV2``) gets one extra input per variable, named after it, to be fed its value.
* a SavedModel directory: its ``serving_default`` signature (or its only one); variables are read once
  and become constants.
* a Keras model: ``model(x, training=False)`` traced for ``model.inputs`` (or the ``tf.TensorSpec``s
  given as ``inputs``); variables become constants.
* a ``tf.function`` (with an ``input_signature``, or ``inputs`` specs) or a ``ConcreteFunction``:
  variables become constants; other captured tensors too.

Graph inputs are named after the placeholders (``x``, not ``x:0``), as ATC's ``--input_shape`` expects;
GraphDef outputs after their tensors (``logits:0``), function outputs after the structured outputs'
keys (or ``output_<i>``). Inference graphs only: a function that assigns a variable is refused. Ops
opencann cannot convert stop the import with the list of every one, their node names and call sites.
"""
from __future__ import annotations

import os
from typing import Any

import numpy as np

from opencann.compiler.ir import Graph, Node, Value
from opencann.errors import AclError, ErrorCode
from opencann.frontends.tensorflow.importer import Context, Variable, build_graph, convert_ops, tensor_type

SINK_EXCLUDED = frozenset({"Const", "Placeholder", "PlaceholderWithDefault", "NoOp", "VarHandleOp", "VariableV2",
                           "Assign", "AssignVariableOp", "VarIsInitializedOp", "IsVariableInitialized"})


def import_tensorflow(source: Any, inputs: list | None = None, outputs: list | None = None) -> Graph:
    """An IR graph from a TensorFlow model (see the module docstring for ``source`` and the names).

    ``inputs``: tensor names to feed (GraphDef) or ``tf.TensorSpec``s to trace with (Keras model,
    ``tf.function``). ``outputs``: tensor names (GraphDef) or structured output keys to keep.
    """
    import tensorflow as tf

    import opencann.frontends.tensorflow.ops  # noqa: F401  (registers the converters)

    if isinstance(source, (str, os.PathLike)):
        path = os.fspath(source)
        if os.path.isdir(path):
            return _from_saved_model(path, outputs)
        graph = _from_graph(_read_graph_def(path), inputs, outputs)
        graph.name = os.path.splitext(os.path.basename(path))[0]
        return graph
    if isinstance(source, (tf.compat.v1.GraphDef, tf.Graph)):
        return _from_graph(source, inputs, outputs)
    if _is_keras_model(source):
        return _from_keras(source, inputs, outputs)
    if hasattr(source, "get_concrete_function"):
        cf = source.get_concrete_function(*inputs) if inputs else source.get_concrete_function()
        return from_concrete_function(cf, outputs)
    if hasattr(source, "graph") and hasattr(source, "structured_outputs"):
        return from_concrete_function(source, outputs)
    raise AclError(ErrorCode.INVALID_PARAM, f"cannot import a {type(source).__name__} (want a frozen .pb, a "
                   "SavedModel directory, a Keras model, a tf.function or a concrete function)")


# ---- GraphDefs
def _read_graph_def(path: str):
    import tensorflow as tf

    if not os.path.isfile(path):
        raise AclError(ErrorCode.INVALID_PARAM, f"model '{path}' does not exist")
    gdef = tf.compat.v1.GraphDef()
    with open(path, "rb") as f:
        data = f.read()
    try:
        gdef.ParseFromString(data)
    except Exception:
        from google.protobuf import text_format

        try:
            text_format.Parse(data.decode("utf-8"), gdef)
        except Exception:
            raise AclError(ErrorCode.PARSE_MODEL, f"'{path}' is not a TensorFlow GraphDef") from None
    return gdef


def _from_graph(source, inputs: list | None, outputs: list | None) -> Graph:
    import tensorflow as tf

    from opencann.frontends.tensorflow.tf1 import pruned_ops

    graph = source
    if not isinstance(source, tf.Graph):
        graph = tf.Graph()
        with graph.as_default():
            tf.graph_util.import_graph_def(source, name="")
    outs = [_tensor(graph, n) for n in outputs] if outputs else _sinks(graph)
    if not outs:
        raise AclError(ErrorCode.INVALID_PARAM, "the graph has no outputs; name them (--out_nodes / outputs=)")
    feeds = [_tensor(graph, n) for n in inputs] if inputs else \
        [op.outputs[0] for op in graph.get_operations() if op.type == "Placeholder"]
    ops = pruned_ops([t.op for t in outs], {t.ref() for t in feeds})
    read = {t.ref() for op in ops for t in op.inputs} | {t.ref() for t in outs}
    ctx = Context()
    values = []
    for t in feeds:
        if t.ref() in read:
            ctx.values[t.ref()] = v = Value(t.op.name if t.value_index == 0 else t.name, tensor_type(t))
            values.append(v)
    convert_ops(ctx, graph, ops=ops)
    return _package(ctx, values, [(t.name, ctx.values.get(t.ref())) for t in outs], "tensorflow_graph")


def _tensor(graph, name: str):
    try:
        return graph.get_tensor_by_name(name if ":" in name else f"{name}:0")
    except (KeyError, ValueError):
        raise AclError(ErrorCode.INVALID_PARAM, f"the graph has no tensor '{name}'") from None


def _sinks(graph) -> list:
    """Outputs of the ops whose results nothing reads (the model's outputs in a frozen graph)."""
    return [t for op in graph.get_operations() if op.type not in SINK_EXCLUDED
            for t in op.outputs if not t.consumers() and t.dtype.name != "resource"]


# ---- functions, Keras models, SavedModels
def _from_saved_model(path: str, outputs: list | None) -> Graph:
    import tensorflow as tf

    if not os.path.exists(os.path.join(path, "saved_model.pb")):
        raise AclError(ErrorCode.INVALID_PARAM, f"'{path}' is not a SavedModel directory (no saved_model.pb)")
    loaded = tf.saved_model.load(path)
    signatures = dict(loaded.signatures)
    if not signatures:
        raise AclError(ErrorCode.PARSE_MODEL, f"SavedModel '{path}' has no signatures")
    name = "serving_default" if "serving_default" in signatures else next(iter(signatures))
    if len(signatures) > 1 and name != "serving_default":
        raise AclError(ErrorCode.INVALID_PARAM, f"SavedModel '{path}' has signatures {sorted(signatures)} and no "
                       "serving_default")
    graph = from_concrete_function(signatures[name], outputs)
    graph.name = os.path.basename(os.path.normpath(path)) or graph.name
    return graph


def _is_keras_model(obj) -> bool:
    try:
        import keras
    except ImportError:
        return False
    return isinstance(obj, keras.Model)


def _from_keras(model, specs: list | None, outputs: list | None) -> Graph:
    import tensorflow as tf

    if not specs:
        try:
            specs = [tf.TensorSpec(t.shape, t.dtype, name=t.name) for t in model.inputs]
        except (AttributeError, TypeError, ValueError):
            raise AclError(ErrorCode.INVALID_PARAM, "the Keras model declares no inputs; pass inputs=[tf.TensorSpec"
                           "(...)] to import it") from None

    def call(*xs):
        return model(xs[0] if len(xs) == 1 else list(xs), training=False)

    graph = from_concrete_function(tf.function(call, autograph=False).get_concrete_function(*specs), outputs)
    graph.name = model.name
    return graph


def from_concrete_function(cf, outputs: list | None = None) -> Graph:
    """Inference IR of a concrete function: captured variables and tensors become constants."""
    import tensorflow as tf

    graph = cf.graph
    captured = {internal.ref(): external for external, internal in graph.captures}
    by_handle = {id(v.handle): v for v in graph.variables}
    ctx = Context()
    inputs, frozen = [], {}
    for t in graph.inputs:
        external = captured.get(t.ref())
        if external is None:
            ctx.values[t.ref()] = v = Value(t.op.name, tensor_type(t))
            inputs.append(v)
        elif t.dtype.name == "resource":
            ctx.resources[t.ref()] = key = _freeze(ctx, by_handle.get(id(external)), t, frozen)
        else:
            ctx.values[t.ref()] = ctx.const(np.asarray(external), name=ctx.fresh(t.op.name))
    convert_ops(ctx, graph)
    if ctx.state.assigned:
        raise AclError(ErrorCode.FEATURE_UNSUPPORTED, f"the function assigns variables ({', '.join(ctx.state.assigned)}"
                       "); import_tensorflow builds inference graphs")
    flat = tf.nest.flatten(cf.structured_outputs, expand_composites=True)
    names = _output_names(cf.structured_outputs, len(flat))
    results = [(n, ctx.values.get(t.ref())) for n, t in zip(names, graph.outputs)]
    if outputs:
        missing = sorted(set(outputs) - set(names))
        if missing:
            raise AclError(ErrorCode.INVALID_PARAM, f"no output(s) {', '.join(missing)} (outputs: {', '.join(names)})")
        results = [r for r in results if r[0] in outputs]
    ir = _package(ctx, inputs, results, graph.name)
    ir.inputs = [v for v in ir.inputs if v.name not in frozen]
    for key, value in frozen.items():
        ctx.state.initial[key].const = value
        ir.initializers.append(ctx.state.initial[key])
    return ir


def _freeze(ctx: Context, var, t, frozen: dict) -> str:
    """Register a captured variable as state whose value is frozen into a constant; returns its key."""
    if var is None:
        raise AclError(ErrorCode.FEATURE_UNSUPPORTED, f"captured resource '{t.name}' is not a variable")
    key = var.name.removesuffix(":0")
    if key in ctx.state.variables and ctx.state.variables[key].source is var:
        return key
    while key in ctx.state.variables:
        key += "_"
    value = var.numpy()
    ctx.state.add(Variable(key, value.dtype, value.shape, source=var))
    frozen[key] = value
    return key


def _output_names(structured, n: int) -> list[str]:
    if isinstance(structured, dict) and len(structured) == n:
        return [str(k) for k in sorted(structured)]
    return [f"output_{i}" for i in range(n)]


def _package(ctx: Context, inputs: list[Value], results: list[tuple[str, Value | None]], name: str) -> Graph:
    """The graph with one named Identity per output."""
    outs = []
    for out_name, value in results:
        if not isinstance(value, Value):
            raise AclError(ErrorCode.FEATURE_UNSUPPORTED, f"output '{out_name}' is not a tensor opencann computes")
        out = Value(out_name, value.type)
        ctx.nodes.append(Node("Identity", [value], [out], name=f"output/{out_name}"))
        outs.append(out)
    return build_graph(ctx, inputs, outs, name=name)
