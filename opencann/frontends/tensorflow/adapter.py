"""The TF2 adapter: every ``tf.function`` call runs on opencann.

TensorFlow traces as usual; when a traced function is called from eager Python, the adapter compiles its
graph with opencann (once per concrete function, i.e. per input signature) and executes it there. The
adapter uses TensorFlow only to trace, to read the user's variables before a call and write them back
after it, to pull the next batch from a ``tf.data`` iterator argument, and to wrap results as TF values.

Every call reads each variable afresh and writes the new values back before returning, so eager code,
callbacks, checkpoints and other functions see TensorFlow's variables exactly as if TensorFlow had run the
step. Both directions avoid copies and Python op wrappers (TensorFlow's eager fast path, one op per
variable): a read is a read-only view of TF's buffer (TF copies on its next write while the view lives);
a write hands TF the new array, which TF adopts without copying when aligned — so only arrays that
nothing else holds are handed over (:func:`handoff`). While a step runs, BLAS and Numba use the adapter's
thread count (:class:`StepThreads`), as TensorFlow's own pools are idle then.
"""
from __future__ import annotations

import sys
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
    shapes: list | None = None  # output_shapes as TensorShapes, for the eager fast path


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
    assigned: list[tuple[int, np.dtype]]  # (argument position, dtype) of each variable output, in order
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
    assigned = [(resource_position(key), ctx.state.variables[key].dtype) for key in ctx.state.assigned]
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


class _Eager:
    """TensorFlow's eager fast path: variable reads and writes as single op calls, without Python wrappers."""

    def __init__(self):
        from tensorflow.python import pywrap_tfe
        from tensorflow.python.eager import context
        from tensorflow.python.framework import ops

        self.execute = pywrap_tfe.TFE_Py_FastPathExecute
        self.context = context.context()
        self.tensor = ops.EagerTensor

    def read(self, handle, dtype) -> np.ndarray:
        """The variable's value, zero-copy: a read-only view of TF's buffer (TF copies on its next write)."""
        value = self.execute(self.context, "ReadVariableOp", None, handle, "dtype", dtype)._numpy()
        if isinstance(value, np.ndarray) and value.base is not None:
            value.flags.writeable = False
        return value

    def assign(self, handle, value: np.ndarray) -> None:
        """Write ``value``; TF adopts an aligned array's buffer instead of copying it, so ``value`` must be
        the caller's alone (see :func:`handoff`)."""
        self.execute(self.context, "AssignVariableOp", None, handle, value, "validate_shape", False)

    def next_batch(self, host: HostInput, iterator) -> list:
        if host.shapes is None:
            from tensorflow.python.framework.tensor_shape import TensorShape

            host.shapes = [TensorShape(s) for s in host.output_shapes]
        return self.execute(self.context, "IteratorGetNext", None, iterator, "output_types", host.output_types,
                            "output_shapes", host.shapes)

    def optional(self, components: list):
        return self.execute(self.context, "OptionalFromValue", None, components)

    def wrap(self, value):
        if type(value) is np.ndarray and value.dtype.kind in "biuf":
            return self.tensor(value if value.flags.writeable else value.copy(), self.context.device_name, None)
        import tensorflow as tf

        return tf.convert_to_tensor(value)


_eager: _Eager | None = None


def eager() -> _Eager:
    global _eager
    if _eager is None:
        _eager = _Eager()
    return _eager


class StepThreads:
    """Sets BLAS and Numba to ``n`` threads while a step runs (TensorFlow's pools idle meanwhile; with more
    threads than free cores their spinning workers slow every kernel down), then restores them."""

    def __init__(self, n: int):
        import numba
        from threadpoolctl import ThreadpoolController

        self.n = n
        self.libs = ThreadpoolController().select(user_api="blas").lib_controllers
        self.numba = numba
        self.saved: list[int] = []

    def __enter__(self):
        self.saved = [lib.num_threads for lib in self.libs] + [self.numba.get_num_threads()]
        for lib in self.libs:
            lib.set_num_threads(self.n)
        self.numba.set_num_threads(min(self.n, self.numba.config.NUMBA_NUM_THREADS))

    def __exit__(self, *exc):
        for lib, n in zip(self.libs, self.saved):
            lib.set_num_threads(n)
        self.numba.set_num_threads(self.saved[-1])


def _tf_dtype(dtype: np.dtype):
    import tensorflow as tf

    return tf.as_dtype(dtype) if dtype.kind != "V" else tf.bfloat16


def handoff(values: list, dtypes: list[np.dtype]) -> list[np.ndarray]:
    """``values`` as arrays TensorFlow may keep: it adopts an aligned array's buffer instead of copying it
    and may later update it in place, so each stays itself only when it is a new contiguous array of its
    variable's dtype that nothing else holds; a weight of the graph, a view of another array, a read of
    TF's own buffer, or a value also returned or listed twice is copied."""
    out = []
    for i, dtype in enumerate(dtypes):
        value = values[i]  # references: ``values``, ``value``, getrefcount's argument
        fresh = (type(value) is np.ndarray and value.dtype == dtype and value.flags.writeable
                 and value.flags.c_contiguous and sys.getrefcount(value) <= 3
                 and (value.base is None or _sole_view(value)))
        out.append(value if fresh else np.array(value, dtype))
    return out


def _sole_view(value: np.ndarray) -> bool:
    """True when ``value`` is the only reference to the whole of a fresh array (a kernel's reshaped output)."""
    base = value.base  # references: ``value``, ``base``, getrefcount's argument
    return type(base) is np.ndarray and base.base is None and base.nbytes == value.nbytes and \
        sys.getrefcount(base) <= 3


def run_program(program: Program, args: list, threads: StepThreads | None = None) -> list:
    """Execute on TF eager tensors ``args``; returns flat TF outputs."""
    fast = eager()
    feeds: dict[str, Any] = {}
    for name, pos in zip(program.executor.input_names, program.data_positions):
        feeds[name] = np.asarray(args[pos])
    for host in program.host_inputs:
        for v, value in zip(host.values, fast.next_batch(host, args[resource_position(host.resource)])):
            feeds[v.name] = value.numpy()
    for key, pos, dtype in program.variables:
        feeds[key] = fast.read(args[pos], _tf_dtype(dtype))
    if threads is not None:
        with threads:
            results = program.executor.run(feeds)
    else:
        results = program.executor.run(feeds)
    feeds.clear()  # drop the views of TF's buffers: TF then writes into them in place
    n_out = sum(c if isinstance(c, int) else c[1] for c in program.outputs)
    new = results[n_out:]
    del results[n_out:]
    for (pos, _), value in zip(program.assigned, handoff(new, [dtype for _, dtype in program.assigned])):
        fast.assign(args[pos], value)
    flat, it = [], iter(results[:n_out])
    for entry in program.outputs:
        if entry == 1:
            flat.append(fast.wrap(next(it)))
        else:
            components = [fast.wrap(next(it)) for _ in range(entry[1])]
            flat.append(fast.optional(components))
    program.calls += 1
    return flat


@dataclass
class Adapter:
    """The state of ``opencann.tf.enable()``."""

    options: BuildOptions = field(default_factory=BuildOptions)
    dump_graphs: str | None = None
    threads: StepThreads | None = None  # BLAS and Numba threads during a step (None: as configured)
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
