"""TF1 graphs on opencann: :class:`Session`, a drop-in for ``tf.compat.v1.Session``.

    import opencann.tf as oc
    with oc.Session() as sess:                    # was: tf.compat.v1.Session()
        sess.run(tf.compat.v1.global_variables_initializer())
        for x, y in batches:
            _, loss = sess.run([train_op, loss_op], feed_dict={images: x, labels: y})

Replacing the session is the one change a ``tf.compat.v1`` script needs (``opencann migrate`` makes it):
TensorFlow still builds the graph (placeholders, ``get_variable``, ``Optimizer.minimize``, initializers)
but never executes it. ``run(fetches, feed_dict)`` takes the part of the graph the fetches need, not
looking past fed tensors, imports it (:mod:`.importer`), compiles it and runs it on opencann; the
compiled program is cached per (fetches, fed tensors). ``fetches`` may be tensors, operations,
variables or their names, nested in lists, tuples, dicts and namedtuples, as with TensorFlow.

The session owns the state: every variable (resource ``VarHandleOp`` or reference ``VariableV2``) is a
NumPy array keyed by its shared name, created by whatever run first assigns it — initializers run on
opencann like any other op, and so do their random ops, which reproduce TensorFlow's Philox streams
(each stateful random op's generator position is session state too). Reading a variable no run has
assigned is an error, as in TensorFlow. Not supported: TF1 control flow (``Switch``/``Merge``/``Enter``),
queues and readers, ``Saver`` (its ``SaveV2``/``RestoreV2`` ops) and ``partial_run``; a reference
variable read sees its value at the start of the run (or an ``Assign``'s output).
"""
from __future__ import annotations

import heapq
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from opencann.compiler.ir import Graph, Value
from opencann.compiler.pipeline import BuildOptions, compile_graph
from opencann.errors import AclError, ErrorCode
from opencann.frontends.tensorflow.importer import Context, build_graph, convert_ops, tensor_type
from opencann.runtime.executor import Executor


@dataclass
class Program:
    """One (fetches, feeds) signature compiled: what to feed it and where its results go."""

    executor: Executor
    feeds: list[str]  # tensor names, in input order
    variables: list[str]  # keys of the variables it reads
    flags: dict[str, str]  # input name -> key of the variable whose initialized state it takes
    assigned: list[str]  # keys of the variables it writes, in output order
    n_fetched: int


def pruned_ops(targets: list, fed: set) -> list:
    """The operations ``targets`` need (through data and control inputs, not past ``fed`` tensors), in
    creation order — a dependency order in which what is ready earlier comes first, as TensorFlow runs it."""
    needed: dict[str, Any] = {}
    stack = list(targets)
    while stack:
        op = stack.pop()
        if op.name in needed:
            continue
        needed[op.name] = op
        if op.type == "Placeholder" and not _is_fed(op, fed):
            raise AclError(ErrorCode.INVALID_PARAM, f"You must feed a value for placeholder tensor "
                           f"'{op.outputs[0].name}' (dtype {op.outputs[0].dtype.name}, shape {op.outputs[0].shape})")
        stack.extend(_deps(op, fed))
    return _creation_order(list(needed.values()), fed)


def _creation_order(ops: list, fed: set) -> list:
    """Kahn's algorithm, taking the earliest-created ready op first."""
    if not ops:
        return []
    rank = {op.name: i for i, op in enumerate(ops[0].graph.get_operations())}
    deps = {op.name: {d.name for d in _deps(op, fed)} for op in ops}
    users: dict[str, list] = {}
    for op in ops:
        for d in deps[op.name]:
            users.setdefault(d, []).append(op)
    ready = [(rank[op.name], op.name, op) for op in ops if not deps[op.name]]
    heapq.heapify(ready)
    order = []
    while ready:
        _, name, op = heapq.heappop(ready)
        order.append(op)
        for user in users.get(name, []):
            deps[user.name].discard(name)
            if not deps[user.name]:
                heapq.heappush(ready, (rank[user.name], user.name, user))
    if len(order) != len(ops):
        raise AclError(ErrorCode.FEATURE_UNSUPPORTED, "the fetched graph has a cycle (TF1 while loops are not "
                       "supported; use tf.while_loop under TF2 control flow)")
    return order


def _is_fed(op, fed: set) -> bool:
    return bool(op.outputs) and all(t.ref() in fed for t in op.outputs)


def _deps(op, fed: set) -> list:
    """The ops ``op`` waits for: its inputs' producers (but for fed inputs) and its control inputs."""
    if _is_fed(op, fed):
        return []
    return [t.op for t in op.inputs if t.ref() not in fed] + list(op.control_inputs)


def _used_names(graph: Graph) -> set[str]:
    used = {v.name for v in graph.outputs}
    for node in graph.nodes:
        used.update(v.name for v in node.inputs if v is not None)
        for sub in node.subgraphs.values():
            used.update(sub.outer_names())
    return used


def compile_run(graph, tensors: list, ops: list, feeds: list, options: BuildOptions) -> Program:
    """Import and compile what fetching ``tensors`` and running ``ops`` needs, ``feeds`` fed."""
    ctx = Context()
    ctx.session_flags = {}
    inputs = []
    for t in feeds:
        ctx.values[t.ref()] = v = Value(t.name, tensor_type(t))
        inputs.append(v)
    convert_ops(ctx, graph, ops=pruned_ops([t.op for t in tensors] + ops, {t.ref() for t in feeds}))
    outputs = []
    for t in tensors:
        value = ctx.values.get(t.ref())
        if value is None:
            raise AclError(ErrorCode.FEATURE_UNSUPPORTED, f"cannot fetch '{t.name}' ({t.dtype.name}) from opencann")
        outputs.append(ctx.node("Identity", [value], name=f"fetch/{len(outputs)}"))
    flags = dict(ctx.session_flags)
    ir = build_graph(ctx, inputs + list(flags.values()), outputs, name="session_run")
    compiled = compile_graph(ir, replace(options))
    used = _used_names(compiled.graph)
    compiled.graph.inputs = [v for v in compiled.graph.inputs if v.name in used]
    names = {v.name for v in compiled.graph.inputs}
    return Program(Executor(compiled.graph), [t.name for t in feeds if t.name in names],
                   [k for k in ctx.state.variables if k in names],
                   {v.name: k for k, v in flags.items() if v.name in names}, list(ctx.state.assigned), len(tensors))


class Session:
    """``tf.compat.v1.Session`` running on opencann (``target`` and ``config`` are accepted and unused).

    ``variables`` holds the session's variables; ``programs`` the compiled (fetches, feeds) signatures;
    ``executions`` counts runs.
    """

    def __init__(self, target: str = "", graph=None, config=None, *, precision_mode: str = "force_fp32"):
        import tensorflow as tf

        import opencann.frontends.tensorflow.ops  # noqa: F401  (registers the converters)

        self._graph = graph if graph is not None else tf.compat.v1.get_default_graph()
        self.sess_str, self.config = target, config
        self.options = BuildOptions(precision_mode=precision_mode)
        self.options.check()
        self.variables: dict[str, np.ndarray] = {}
        self.programs: dict[tuple, Program] = {}
        self.executions = 0
        self._closed = False
        self._contexts: list = []

    @property
    def graph(self):
        return self._graph

    # ---- running
    def run(self, fetches, feed_dict: Mapping | None = None, options=None, run_metadata=None):
        """Evaluate ``fetches`` (nested tensors / operations / variables / names) given ``feed_dict``."""
        import tensorflow as tf

        if self._closed:
            raise RuntimeError("Attempted to use a closed Session.")
        flat = tf.nest.flatten(fetches)
        elements = [self._graph.as_graph_element(f, allow_tensor=True, allow_operation=True) for f in flat]
        tensors = list({e.ref(): e for e in elements if isinstance(e, tf.Tensor)}.values())
        ops = list({e.name: e for e in elements if isinstance(e, tf.Operation)}.values())
        feeds = self._feeds(feed_dict or {})
        if not elements:
            return tf.nest.pack_sequence_as(fetches, [])
        key = (tuple(t.name for t in tensors), tuple(op.name for op in ops), tuple(sorted(feeds)))
        program = self.programs.get(key)
        if program is None:
            program = compile_run(self._graph, tensors, ops, [self._graph.get_tensor_by_name(n) for n in sorted(feeds)],
                                  self.options)
            self.programs[key] = program
        results = self._execute(program, feeds)
        by_ref = {t.ref(): r for t, r in zip(tensors, results)}
        values = [_fetched(by_ref[e.ref()]) if isinstance(e, tf.Tensor) else None for e in elements]
        return tf.nest.pack_sequence_as(fetches, values)

    def _feeds(self, feed_dict: Mapping) -> dict[str, np.ndarray]:
        from opencann.frontends.tensorflow.dtypes import np_dtype

        feeds = {}
        for key, value in feed_dict.items():
            t = self._graph.as_graph_element(key, allow_tensor=True, allow_operation=False)
            arr = np.asarray(value, dtype=np_dtype(t.dtype))
            if not t.shape.is_compatible_with(arr.shape):
                raise ValueError(f"Cannot feed value of shape {arr.shape} for Tensor {t.name}, which has shape "
                                 f"{t.shape}")
            feeds[t.name] = arr
        return feeds

    def _execute(self, program: Program, feeds: dict[str, np.ndarray]) -> list:
        inputs = {name: feeds[name] for name in program.feeds}
        for key in program.variables:
            if key in self.variables:
                inputs[key] = self.variables[key]
            elif key.startswith("rng:"):
                inputs[key] = np.uint64(0)
            else:
                raise AclError(ErrorCode.INVALID_PARAM, f"Attempting to use uninitialized value {key} (run its "
                               "initializer, e.g. tf.compat.v1.global_variables_initializer(), first)")
        for name, key in program.flags.items():
            inputs[name] = np.array(key in self.variables)
        results = program.executor.run(inputs)
        for key, value in zip(program.assigned, results[program.n_fetched:]):
            self.variables[key] = value
        self.executions += 1
        return results[:program.n_fetched]

    def make_callable(self, fetches, feed_list=None, accept_options=False):
        """A function running ``fetches`` with positional values for ``feed_list``."""
        feed_list = list(feed_list or [])

        def call(*args, **kwargs):
            return self.run(fetches, dict(zip(feed_list, args, strict=True)))

        return call

    # ---- lifetime and default-session protocol
    def close(self) -> None:
        self._closed = True
        self.variables.clear()
        self.programs.clear()

    def as_default(self):
        """A context manager making this the default session (for ``Tensor.eval`` / ``Operation.run``)."""
        from tensorflow.python.framework import stack

        return stack.default_session(self)

    def __enter__(self):
        self._contexts.append((self._graph.as_default(), self.as_default()))
        for cm in self._contexts[-1]:
            cm.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        for cm in reversed(self._contexts.pop()):
            cm.__exit__(*exc)
        self.close()

    def list_devices(self) -> list:
        return []


def _fetched(value):
    """What TensorFlow's Session returns: a NumPy array of its own, or a NumPy scalar for a 0-d value."""
    arr = np.array(value, copy=True)
    return arr[()] if arr.ndim == 0 else arr
