"""The TF2 adapter: every ``tf.function`` call runs on opencann.

TensorFlow traces as usual; when a traced function is called from eager Python, the adapter compiles its
graph with opencann (once per concrete function, i.e. per input signature) and executes it there. The
adapter uses TensorFlow only to trace, to read the user's variables before a call and write them back
after it, to pull the next batch from a ``tf.data`` iterator argument, and to wrap results as TF values.

Every call reads each variable afresh and writes the new values back before returning, so eager code,
callbacks, checkpoints and other functions see TensorFlow's variables exactly as if TensorFlow had run the
step. Each direction is one call into TF's executor for all variables (:class:`VariableIO`) and avoids
copies: a read is a read-only view of TF's buffer (TF copies on its next write while the view lives); a
write hands TF the new array, which TF adopts without copying when aligned — so only arrays that nothing
else holds are handed over (:func:`handoff`). While a step runs, opencann's kernels split their work over the
adapter's thread count and the libraries run one thread (:class:`StepThreads`); TensorFlow's pools idle then.
"""
from __future__ import annotations

import os
import sys
import threading
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from opencann.compiler.ir import Value
from opencann.compiler.passes.fuse_tf_conv import fuse_tf_conv
from opencann.compiler.passes.fuse_training import (
    batch_list_ops,
    chain_scalars,
    chain_updates,
    fold_attention,
    fold_transposes,
    hoist_invariants,
    merge_chains,
)
from opencann.compiler.pipeline import BuildOptions, compile_graph
from opencann.errors import AclError, ErrorCode
from opencann.frontends.tensorflow.importer import Context, build_graph, convert_ops, tensor_type
from opencann.ops.tf_ops import ALIGNMENT, pooled, sole_split_view
from opencann.runtime import workers
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
    io: Any = None  # the VariableIO, made at the first call (it needs the variables' handles)
    owner: Any = None  # the concrete function, kept alive while its id keys the cache

    def __post_init__(self):
        """What each call needs, made once: the variables' graph inputs, the argument positions read and
        written, the written dtypes, the number of flat results."""
        self.read_keys = [key for key, _, _ in self.variables]
        self.reads = [pos for _, pos, _ in self.variables]
        self.writes = [pos for pos, _ in self.assigned]
        self.write_dtypes = [dtype for _, dtype in self.assigned]
        self.n_out = sum(c if isinstance(c, int) else c[1] for c in self.outputs)


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
    _aligned_updates(fold_attention(fold_transposes(compiled.graph)), len(outputs))
    chain_scalars(merge_chains(chain_updates(compiled.graph, compiled.graph.outputs[len(outputs):])))
    batch_list_ops(hoist_invariants(fuse_tf_conv(compiled.graph)))
    if dump:
        os.makedirs(dump, exist_ok=True)
        with open(os.path.join(dump, f"{graph.name}.txt"), "w", encoding="utf-8") as f:
            f.write(str(compiled.graph))
    variables = [(key, resource_position(key), var.dtype) for key, var in ctx.state.variables.items()]
    assigned = [(resource_position(key), ctx.state.variables[key].dtype) for key in ctx.state.assigned]
    return Program(Executor(compiled.graph), data_positions, ctx.host_inputs, variables, assigned, layout)


def _aligned_updates(graph, n_results: int) -> None:
    """Fused elementwise groups that compute new variable values (graph outputs after the first
    ``n_results``) write them into aligned buffers, which TF adopts without a copy (``opencann::FusedUpdate``)."""
    new_values = {v.name for v in graph.outputs[n_results:]}
    for node in graph.nodes:
        if node.op == "FusedElementwise" and node.domain == "opencann" and \
                any(v.name in new_values for v in node.outputs):
            node.op = "FusedUpdate"


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
    """TensorFlow's eager fast path: single op calls without Python wrappers (batches, outputs)."""

    def __init__(self):
        from tensorflow.python import pywrap_tfe
        from tensorflow.python.eager import context
        from tensorflow.python.framework import ops

        self.execute = pywrap_tfe.TFE_Py_FastPathExecute
        self.context = context.context()
        self.tensor = ops.EagerTensor
        self.devices: dict[str, str | None] = {}

    def device(self) -> str | None:
        """The device argument for new tensors: None (the host, ~5 us less a tensor: no copy to a device by
        name) where the current device name places a tensor there anyway (e.g. "", no device scope)."""
        name = self.context.device_name
        if name not in self.devices:
            probe = np.zeros(1, np.float32)
            host = self.tensor(probe, None, None).device == self.tensor(probe, name, None).device
            self.devices[name] = None if host else name
        return self.devices[name]

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
            return self.tensor(value if value.flags.writeable else value.copy(), self.device(), None)
        import tensorflow as tf

        return tf.convert_to_tensor(value)


class VariableIO:
    """Reads a program's variables in one TF call and writes the assigned ones back in another: two traced
    functions over the variables' handles, run by TF's single-threaded executor on the calling thread
    (:func:`inline_call`; one eager op per variable costs ~3x more). A read is zero-copy, a read-only view of
    TF's buffer (TF copies on its next write while the view lives). A write hands TF the new arrays, which it
    adopts without copying when aligned, so each must be the caller's alone (see :func:`handoff`). Each variable
    crosses as its own array: with tensors made on the host directly (:meth:`_Eager.device`), packing the small
    ones into one array per dtype measured ~5% slower in the step."""

    def __init__(self, reads: tuple[list, list], writes: tuple[list, list]):
        """``reads``, ``writes``: (handles, TF dtypes) of the variables read and of those written."""
        import tensorflow as tf

        (read_handles, read_dtypes), (write_handles, write_dtypes) = reads, writes

        @tf.function(autograph=False)
        def read(handles):
            return [tf.raw_ops.ReadVariableOp(resource=h, dtype=d) for h, d in zip(handles, read_dtypes)]

        @tf.function(autograph=False)
        def write(handles, values):
            for h, x in zip(handles, values):
                tf.raw_ops.AssignVariableOp(resource=h, value=x, validate_shape=False)

        fast = eager()
        self.functions = (read.get_concrete_function(list(read_handles)),  # alive: TF keeps their definitions
                          write.get_concrete_function(list(write_handles),
                                                      [tf.TensorSpec(None, d) for d in write_dtypes]))
        self.calls = [inline_call(f) for f in self.functions]
        self.tensor, self.device = fast.tensor, fast.device

    def read(self, handles: list) -> list[np.ndarray]:
        """The variables' values (views of TF's buffers, read-only)."""
        return [_view(t) for t in self._run(0, handles, len(handles))] if handles else []

    def write(self, handles: list, values: list[np.ndarray]) -> None:
        """Assign ``values`` (arrays nothing else holds, in the variables' dtypes) to the variables."""
        if not handles:
            return
        device = self.device()
        self._run(1, [*handles, *(self.tensor(value, device, None) for value in values)], 0)

    def _run(self, which: int, inputs: list, n_outputs: int) -> list:
        return self.calls[which](inputs, n_outputs)


def inline_call(cf):
    """Runs the concrete function ``cf`` (``call(inputs, n_outputs)``) on the calling thread: one
    ``StatefulPartitionedCall`` op executed eagerly, whose single-threaded executor runs the body inline.
    (Calling the function itself hands its body to TF's inter-op pool and waits for it: two thread
    hand-offs, ~40% more wall time a call on a busy machine.)"""
    import itertools

    from tensorflow.python import pywrap_tfe

    context = eager().context
    signature = cf.function_def.signature
    attrs = {"Tin": [a.type for a in signature.input_arg], "Tout": [a.type for a in signature.output_arg],
             "f": signature.name, "config": "", "config_proto": context.function_call_options.config_proto_serialized,
             "executor_type": "SINGLE_THREADED_EXECUTOR"}  # the inline executor: ~30% less CPU a call
    flat, execute = tuple(itertools.chain(*attrs.items())), pywrap_tfe.TFE_Py_Execute

    def call(inputs: list, n_outputs: int) -> list:
        return execute(context._handle, context.device_name, "StatefulPartitionedCall", inputs, flat, n_outputs)

    return call


def _view(tensor) -> np.ndarray:
    """An eager tensor's value without a copy: a read-only view of TF's buffer."""
    value = tensor._numpy()
    if isinstance(value, np.ndarray) and value.base is not None:
        value.flags.writeable = False
    return value


_eager: _Eager | None = None


def eager() -> _Eager:
    global _eager
    if _eager is None:
        _eager = _Eager()
    return _eager


class StepThreads:
    """While a step runs (TensorFlow's pools idle meanwhile), opencann's own workers split kernels over ``n``
    threads (:mod:`opencann.runtime.workers`) and the libraries run one thread each: MKL for the calling thread,
    Numba, and OpenBLAS. Their pools meet at barriers that wait for a descheduled worker on a busy machine, and
    their idle workers spin (OpenBLAS's for tens of milliseconds after each call, GNU OpenMP's ~3.5 ms), taking
    the other core from every kernel and from TF; the workers claim pieces one at a time and sleep when idle.
    The counts are read and set through the libraries' own C calls (threadpoolctl's and Numba's Python layers
    cost ~10 us a step hot, several times that cold), and one already at 1 is left alone."""

    def __init__(self, n: int):
        from threadpoolctl import ThreadpoolController

        from opencann.ops import blas

        self.n = n
        self.counts = [_library_counts(lib) for lib in ThreadpoolController().select(user_api="blas").lib_controllers
                       if lib.internal_api != "mkl"]
        self.mkl = blas.library()  # loaded now: its count is set per step, for this thread only
        self.started = False  # Numba's calls join ``counts`` at the first step (they start its threading layer)
        self.saved: list[int] = []
        self.size = 1

    def __enter__(self):
        if not self.started:
            self.counts.append(_numba_counts())
            self.started = True
        self.saved = saved = [get() for get, _ in self.counts]
        for (_, set_count), n in zip(self.counts, saved):
            if n != 1:
                set_count(1)
        if self.mkl is not None:
            self.mkl.MKL_Set_Num_Threads_Local(1)
        self.size = workers.size()
        workers.set_size(self.n)

    def __exit__(self, *exc):
        for (_, set_count), n in zip(self.counts, self.saved):
            if n != 1:
                set_count(n)
        if self.mkl is not None:
            self.mkl.MKL_Set_Num_Threads_Local(0)  # back to the process-wide count
        workers.set_size(self.size)


def _library_counts(lib) -> tuple:
    """(get, set) of a BLAS library's thread count: its C functions where threadpoolctl names them (OpenBLAS: the
    same symbols threadpoolctl calls), else threadpoolctl's own calls."""
    layer = getattr(lib, "threading_layer", None)
    symbols = ("omp_get_max_threads", "omp_set_num_threads") if layer == "openmp" else \
        ("openblas_get_num_threads", "openblas_set_num_threads")
    functions = [getattr(lib, "_get_symbol", lambda _: None)(name) for name in symbols] \
        if lib.internal_api == "openblas" else [None, None]
    if None in functions:
        return lambda: lib.num_threads, lib.set_num_threads
    return tuple(functions)


def _numba_counts() -> tuple:
    """(get, set) of Numba's thread count for the calling thread: its threading layer's C functions (started
    here), else Numba's Python calls."""
    import numba
    from numba.np.ufunc import parallel

    numba.get_num_threads()  # starts the threading layer, which binds the C functions
    get, set_count = getattr(parallel, "_get_num_threads", None), getattr(parallel, "_set_num_threads", None)
    if get is None or set_count is None:
        return numba.get_num_threads, numba.set_num_threads
    return get, set_count


def _tf_dtype(dtype: np.dtype):
    import tensorflow as tf

    return tf.as_dtype(dtype) if dtype.kind != "V" else tf.bfloat16


def handoff(values: list, dtypes: list[np.dtype]) -> list[np.ndarray]:
    """``values`` as arrays TensorFlow may keep: it adopts an aligned array's buffer instead of copying it
    and may later update it in place, so each stays itself only when it is a new contiguous array of its
    variable's dtype that nothing else holds; a weight of the graph, a view of another array, a read of
    TF's own buffer, or a value also returned or listed twice is copied. (A FusedUpdate pool's buffer has the
    pool's reference too, which reuses it only once nothing else holds it; a merged chain's result is one of
    disjoint views of a block only they hold, :func:`~opencann.ops.tf_ops.sole_split_view`.)"""
    out = []
    for i, dtype in enumerate(dtypes):
        value = values[i]  # references: ``values``, ``value``, getrefcount's argument (and an UpdatePool's)
        fresh = (type(value) is np.ndarray and value.dtype == dtype and value.flags.writeable
                 and value.flags.c_contiguous and sys.getrefcount(value) <= 3 + pooled(value)
                 and (value.base is None or _sole_view(value) or sole_split_view(value)))
        out.append(value if fresh else np.array(value, dtype))
    return out


def _sole_view(value: np.ndarray) -> bool:
    """True when ``value`` is the only reference to the whole of a fresh array (a kernel's reshaped output),
    or to all but the padding of a fresh aligned byte buffer (:func:`~opencann.ops.tf_ops.aligned_empty`)."""
    base = value.base  # references: ``value``, ``base``, getrefcount's argument
    whole = base.nbytes == value.nbytes or (base.dtype == np.uint8 and base.nbytes - value.nbytes == ALIGNMENT)
    return type(base) is np.ndarray and base.base is None and whole and sys.getrefcount(base) <= 3


def run_program(program: Program, args: list, threads: StepThreads | None = None) -> list:
    """Execute on TF eager tensors ``args``; returns flat TF outputs."""
    fast = eager()
    feeds: dict[str, Any] = {}
    for name, pos in zip(program.executor.input_names, program.data_positions):
        feeds[name] = np.asarray(args[pos])
    for host in program.host_inputs:
        for v, value in zip(host.values, fast.next_batch(host, args[resource_position(host.resource)])):
            feeds[v.name] = _view(value)
    if program.io is None:
        program.io = VariableIO(
            ([args[pos] for pos in program.reads], [_tf_dtype(dtype) for *_, dtype in program.variables]),
            ([args[pos] for pos in program.writes], [_tf_dtype(dtype) for dtype in program.write_dtypes]))
    feeds.update(zip(program.read_keys, program.io.read([args[pos] for pos in program.reads])))
    if threads is not None:
        with threads:
            results = program.executor.run(feeds)
    else:
        results = program.executor.run(feeds)
    feeds.clear()  # drop the views of TF's buffers: TF then writes into them in place
    n_out = program.n_out
    new = results[n_out:]
    del results[n_out:]
    program.io.write([args[pos] for pos in program.writes], handoff(new, program.write_dtypes))
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
