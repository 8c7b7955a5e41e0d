"""The TF2 adapter: every ``tf.function`` call runs on opencann.

TensorFlow traces as usual; when a traced function is called from eager Python, the adapter compiles its
graph with opencann (once per concrete function, i.e. per input signature) and executes it there. The
adapter uses TensorFlow only to trace, to read the user's variables before a call and write them back
after it, to pull the next batch from a ``tf.data`` iterator argument, and to wrap results as TF values.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from opencann.compiler.ir import Value
from opencann.compiler.pipeline import BuildOptions, compile_graph
from opencann.errors import AclError, ErrorCode
from opencann.frontends.tensorflow.importer import Context, build_graph, convert_ops, tensor_type
from opencann.runtime.executor import Executor


@dataclass
class HostInput:
    """Graph inputs that TF produces on the host before each call (an iterator's next batch)."""

    values: list[Value]
    resource: Any  # ("input", position) of the iterator argument
    output_types: list
    output_shapes: list


@dataclass
class HostOptional:
    """An Optional built on the host from computed components (Keras' train function returns one)."""

    components: list[Value]


@dataclass
class Program:
    """One concrete function compiled for opencann."""

    executor: Executor
    data_positions: list[int]
    host_inputs: list[HostInput]
    variables: list[tuple[str, int, Any]]  # (graph input name, argument position, tf dtype)
    assigned: list[int]  # argument position of each variable output, in order
    outputs: list[Any]  # per TF output: 1, or ("optional", number of components)
    calls: int = 0
    owner: Any = None  # the concrete function, kept alive while its id keys the cache


def resource_position(key: str) -> int:
    return int(key.removeprefix("resource"))


def compile_function(cf, options: BuildOptions | None = None, dump: str | None = None) -> Program:
    """Import a concrete function's graph and compile it."""
    graph = cf.graph
    ctx = Context()
    ctx.host_inputs = []
    inputs, data_positions = [], []
    for pos, t in enumerate(graph.inputs):
        if t.dtype.name in ("resource", "variant"):
            ctx.resources[t.ref()] = f"resource{pos}"
            _register_variable(ctx, t, f"resource{pos}")
        else:
            v = Value(f"input{pos}", tensor_type(t))
            ctx.values[t.ref()] = v
            inputs.append(v)
            data_positions.append(pos)
    convert_ops(ctx, graph)
    outputs, layout = [], []
    for t in graph.outputs:
        v = ctx.values.get(t.ref(), ctx.resources.get(t.ref()))
        if isinstance(v, HostOptional):
            outputs.extend(v.components)
            layout.append(("optional", len(v.components)))
        elif isinstance(v, Value):
            outputs.append(v)
            layout.append(1)
        else:
            raise AclError(ErrorCode.FEATURE_UNSUPPORTED, f"function output {t.name} ({t.dtype.name}) cannot be "
                           "returned from opencann")
    host_values = [v for h in ctx.host_inputs for v in h.values]
    ir = build_graph(ctx, inputs + host_values, outputs, name=graph.name)
    compiled = compile_graph(ir, options or BuildOptions())
    if dump:
        import os

        os.makedirs(dump, exist_ok=True)
        with open(os.path.join(dump, f"{graph.name}.txt"), "w", encoding="utf-8") as f:
            f.write(str(compiled.graph))
    variables = [(key, resource_position(key), var.dtype) for key, var in ctx.state.variables.items()]
    assigned = [resource_position(key) for key in ctx.state.assigned]
    return Program(Executor(compiled.graph), data_positions, ctx.host_inputs, variables, assigned, layout)


def _register_variable(ctx: Context, t, key: str) -> None:
    """A resource input whose handle data names one dtype and shape is a variable: register it now."""
    from tensorflow.python.ops import handle_data_util

    from opencann.frontends.tensorflow.dtypes import np_dtype
    from opencann.frontends.tensorflow.importer import Variable

    data = handle_data_util.get_resource_handle_data(t)
    if data is None or not data.is_set or len(data.shape_and_type) != 1:
        return
    entry = data.shape_and_type[0]
    import tensorflow as tf

    shape = None if entry.shape.unknown_rank else tuple(d.size if d.size >= 0 else None for d in entry.shape.dim)
    try:
        ctx.state.add(Variable(key, np_dtype(tf.as_dtype(entry.dtype)), shape))
    except (AclError, TypeError):
        return


def run_program(program: Program, args: list) -> list:
    """Execute on TF eager tensors ``args``; returns flat TF outputs."""
    import tensorflow as tf

    feeds: dict[str, Any] = {}
    names = program.executor.input_names
    for name, pos in zip(names, program.data_positions):
        feeds[name] = np.asarray(args[pos])
    k = len(program.data_positions)
    for host in program.host_inputs:
        batch = tf.raw_ops.IteratorGetNext(iterator=args[resource_position(host.resource)],
                                           output_types=host.output_types, output_shapes=host.output_shapes)
        for v, value in zip(host.values, batch):
            feeds[v.name] = value.numpy()
            k += 1
    for key, pos, dtype in program.variables:
        tf_dtype = tf.as_dtype(dtype) if dtype.kind != "V" else tf.bfloat16
        feeds[key] = tf.raw_ops.ReadVariableOp(resource=args[pos], dtype=tf_dtype).numpy()
    results = program.executor.run(feeds)
    n_out = sum(c if isinstance(c, int) else c[1] for c in program.outputs)
    for pos, value in zip(program.assigned, results[n_out:]):
        tf.raw_ops.AssignVariableOp(resource=args[pos], value=tf.convert_to_tensor(value))
    flat, it = [], iter(results[:n_out])
    for entry in program.outputs:
        if entry == 1:
            flat.append(tf.convert_to_tensor(next(it)))
        else:
            components = [tf.convert_to_tensor(next(it)) for _ in range(entry[1])]
            flat.append(tf.raw_ops.OptionalFromValue(components=components))
    program.calls += 1
    return flat


@dataclass
class Adapter:
    """The state of ``opencann.tf.enable()``."""

    options: BuildOptions = field(default_factory=BuildOptions)
    dump_graphs: str | None = None
    programs: dict[int, Program] = field(default_factory=dict)
    executions: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def program(self, cf) -> Program:
        key = id(cf)
        with self.lock:
            prog = self.programs.get(key)
        if prog is None:
            prog = compile_function(cf, BuildOptions(**vars(self.options)), self.dump_graphs)
            prog.owner = cf
            with self.lock:
                self.programs[key] = prog
        return prog
