"""The graph executor: runs an IR Graph's nodes with the registry's kernels.

Building a :class:`Plan` resolves every node to a kernel once (unsupported operators are reported
together, with node names), binds its attributes with their defaults into the callable
(``functools.partial``, or the kernel's own ``bind_attrs(**attrs)`` closure), evaluates ``Constant`` nodes,
and numbers every value: a run's workspace is a
list indexed by slot number, pre-filled with the weights, and each step knows the slots it reads,
writes and releases (values die right after their last use). Subgraphs (If/Loop/Scan bodies) are
compiled the same way and reach their kernels as :class:`Subgraph` callables that read the enclosing
scope by name.

Output buffers: on the CPU, the statically shaped outputs of kernels that take ``out`` get offsets in
one arena (:func:`~opencann.runtime.memory_plan.plan_arena`, lifetimes extended through views). A run
whose inputs have the planned shapes and types takes an arena from the plan's pool (a new one when
every pooled arena is in use by another run) and gives it back at the end, so repeated runs write into
memory already mapped, and concurrent runs never share one. Such a kernel gets its buffer as ``out=``;
it writes its result there and returns it, or returns a new array when the result does not fit (never
a view of its inputs). Graph outputs are never planned; one that is a view into the arena is copied
out before the run returns. Other runs allocate per kernel, as do subgraph bodies.
"""
from __future__ import annotations

import functools
import inspect
import operator
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from opencann.compiler.ir import Graph, Node, TensorType
from opencann.errors import AclError, ErrorCode
from opencann.ops import blas, registry
from opencann.runtime import threads
from opencann.runtime.memory_plan import ALIGNMENT, last_uses, plan_arena

threads.apply_env()

_MANY_IN, _ONE_IN, _GENERAL = 0, 1, 2  # kinds of Plan._program's steps


@dataclass
class Step:
    """One node, ready to launch: its kernel, bound attributes and the values to drop afterwards."""

    node: Node
    fn: Any
    attrs: dict[str, Any]
    inputs: list[str | None]
    outputs: list[str]
    n_outputs: int | None
    drop: list[str]
    subgraphs: dict[str, Plan]
    reuse: bool = False  # the first input's buffer may receive the output (it dies here)
    call: Any = None  # fn with attrs bound
    in_slots: tuple[int, ...] = ()
    out_slots: tuple[int, ...] = ()
    drop_slots: tuple[int, ...] = ()
    single: bool = False  # one output, no subgraphs, no n_outputs
    simple: bool = False  # single, and never given out=
    takes_out: bool = False  # the kernel has an ``out`` parameter
    arena: int = -1  # index of the output's planned buffer in an arena's views (-1: none)
    fetch: Any = None  # operator.itemgetter of in_slots, with two or more inputs (cheaper than a comprehension)


class Plan:
    """A graph compiled to a launch list for one device kind (``arena=False``: no planned output buffers)."""

    def __init__(self, graph: Graph, device_kind: str = "cpu", opsets: Mapping[str, int] | None = None,
                 arena: bool = True):
        self.graph = graph
        self.device_kind = device_kind
        self.opsets = dict(opsets if opsets is not None else graph.opsets)
        self.consts = {v.name: v.const for v in graph.initializers}
        self.input_names = [v.name for v in graph.inputs]
        self.output_names = [v.name for v in graph.outputs]
        self.captured = sorted(graph.outer_names())
        self.slot_of: dict[str, int] = {}
        self.steps = self._build()
        self._template: list[Any] = [None] * len(self.slot_of)
        for name, arr in self.consts.items():
            self._template[self._slot(name)] = arr
        self._captured_slots = [(n, self.slot_of[n]) for n in self.captured]
        self._input_slots = [self._slot(n) for n in self.input_names]
        first = self._input_slots[0] if self._input_slots else 0  # slots numbered in a row: one slice assignment
        self._input_span = (first, len(self._input_slots)) \
            if self._input_slots == list(range(first, first + len(self._input_slots))) else (0, -1)
        self._output_slots = [self._slot(n) for n in self.output_names]
        if device_kind == "cpu":
            blas.constant(*self.consts.values())  # weights never change: MKL may pack them once
        available = {*self.captured, *self.consts, *self.input_names, *(n for s in self.steps for n in s.outputs)}
        self._unproduced = [n for n in self.output_names if n not in available]
        self._layout = self._plan_arena() if arena and device_kind == "cpu" else None
        self._pool: list[tuple[np.ndarray, list[np.ndarray]]] = []  # free arenas and their views

    def _slot(self, name: str) -> int:
        slot = self.slot_of.get(name)
        if slot is None:
            slot = self.slot_of[name] = len(self.slot_of)
        return slot

    def _build(self) -> list[Step]:
        resolved, opsets = self._resolve()
        for name in (*self.captured, *self.consts, *self.input_names):
            self._slot(name)
        keep = set(self.output_names)
        dying: dict[int, list[str]] = {}
        for name, last in last_uses(self.graph).items():
            if name not in keep:
                dying.setdefault(last, []).append(name)
        steps = []
        for idx, (node, d) in enumerate(zip(self.graph.nodes, resolved, strict=True)):
            step = self._step(node, d, opsets[idx])
            step.drop = sorted(dying.get(idx, ()))
            first = step.inputs[0] if step.inputs else None
            step.takes_out = _takes_out(step.fn)
            step.reuse = step.takes_out and first in step.drop and first not in self.consts and _may_fit(node)
            if self._fold_constant(step):
                continue
            step.in_slots = tuple(self._slot(n) if n is not None else self._slot("") for n in step.inputs)
            step.fetch = operator.itemgetter(*step.in_slots) if len(step.in_slots) > 1 else None
            step.out_slots = tuple(self._slot(n) if n else -1 for n in step.outputs)
            step.drop_slots = tuple(self._slot(n) for n in step.drop)
            step.single = (not step.subgraphs and step.n_outputs is None and len(step.outputs) == 1
                           and bool(step.outputs[0]))
            step.simple = step.single and not step.reuse
            steps.append(step)
        return steps

    def _plan_arena(self) -> tuple[int, list[tuple[int, np.dtype, tuple[int, ...]]], list] | None:
        """Arena size, each planned buffer's (offset, dtype, shape), and the static graph inputs to check."""
        index = {id(node): idx for idx, node in enumerate(self.graph.nodes)}
        outputs = set(self.output_names)
        candidates = {s.outputs[0]: s for s in self.steps if s.takes_out and s.single and s.outputs[0] not in outputs}
        memory = plan_arena(self.graph, set(candidates), [index[id(s.node)] for s in candidates.values()])
        if not memory.buffers:
            return None
        layout = []
        for buf in memory.buffers:
            step = candidates[buf.names[0]]
            step.arena, step.simple = len(layout), False
            t = step.node.outputs[0].type
            layout.append((buf.offset, np.dtype(t.dtype), tuple(t.shape)))
        static = [(self.slot_of[v.name], tuple(v.type.shape), np.dtype(v.type.dtype)) for v in self.graph.inputs
                  if getattr(v.type, "is_static", False)]
        return memory.arena_bytes, layout, static

    def _acquire(self, vals: list[Any]) -> tuple[np.ndarray, list[np.ndarray]] | None:
        """A free arena (with its views) for a run whose inputs have the planned shapes and types, else None."""
        nbytes, layout, static = self._layout
        for slot, shape, dtype in static:
            value = vals[slot]
            if getattr(value, "shape", None) != shape or getattr(value, "dtype", None) != dtype:
                return None
        try:
            return self._pool.pop()  # list.pop and append are atomic: concurrent runs get distinct arenas
        except IndexError:
            raw = np.empty(nbytes + ALIGNMENT, np.uint8)
            skip = -raw.ctypes.data % ALIGNMENT
            buf = raw[skip:skip + nbytes]  # every planned buffer starts on a 64-byte boundary
            return buf, [buf[off:off + dt.itemsize * _count(shape)].view(dt).reshape(shape)
                         for off, dt, shape in layout]

    def _resolve(self) -> tuple[list[registry.OpDef], list[int]]:
        missing: dict[str, list[str]] = {}
        resolved, opsets = [], []
        for node in self.graph.nodes:
            opset = self.opsets.get(node.domain, 1)
            opsets.append(opset)
            d = registry.lookup(node.op, opset, node.domain)
            if d is None:
                key = f"{node.domain + '::' if node.domain else ''}{node.op} (opset {opset})"
                missing.setdefault(key, []).append(node.name or "<unnamed>")
            resolved.append(d)
        if missing:
            listing = "; ".join(f"{op}: nodes {', '.join(names[:8])}" + (" ..." if len(names) > 8 else "")
                                for op, names in sorted(missing.items()))
            raise AclError(ErrorCode.OP_NOT_FOUND,
                           f"{len(missing)} unsupported operator type(s) in graph '{self.graph.name}': {listing}")
        return resolved, opsets

    def _step(self, node: Node, d: registry.OpDef, opset: int) -> Step:
        fn = d.kernel_for(self.device_kind)
        attrs = self._bind_attrs(node, d, opset)
        if d.graph_data:  # bound as Graphs: the step stays on the fast launch path
            attrs.update(node.subgraphs)
        return Step(node=node, fn=fn, attrs=attrs,
                    inputs=[v.name if v is not None and v.name else None for v in node.inputs],
                    outputs=[v.name for v in node.outputs],
                    n_outputs=len(node.outputs) if d.wants_n_outputs else None, drop=[],
                    subgraphs={} if d.graph_data else {k: Plan(g, self.device_kind, self.opsets)
                                                       for k, g in node.subgraphs.items()},
                    call=_bind(fn, attrs))

    def _fold_constant(self, step: Step) -> bool:
        """Evaluate a ``Constant`` node once, at build time: its value joins the weights."""
        if step.node.op != "Constant" or step.node.domain or step.inputs or len(step.outputs) != 1:
            return False
        value = _normalize(_call(step, step.call))
        self.consts[step.outputs[0]] = value
        self._slot(step.outputs[0])
        return True

    def _bind_attrs(self, node: Node, d: registry.OpDef, opset: int) -> dict[str, Any]:
        attrs = dict(d.defaults_at(opset))
        for k, v in node.attrs.items():
            if not d.accepts(k):
                raise AclError(ErrorCode.OP_ATTR_NOT_MATCH, f"node {node.label}: unknown attribute '{k}'")
            if not isinstance(v, Graph) and not (isinstance(v, list) and v and isinstance(v[0], Graph)):
                attrs[k] = v
        return attrs

    def replace_const(self, name: str, value: Any) -> None:
        """Swap a weight's array (e.g. for its copy in device memory)."""
        self.consts[name] = value
        self._template[self.slot_of[name]] = value
        if self.device_kind == "cpu":
            blas.constant(value)

    def run(self, feeds: Mapping[str, Any], outer: Mapping[str, Any] | None = None) -> list[Any]:
        """Run the launch list on ``feeds`` (by name; plus an enclosing scope for subgraphs)."""
        vals = self._workspace(outer)
        slot_of = self.slot_of
        for name, value in feeds.items():
            slot = slot_of.get(name)
            if slot is not None:
                vals[slot] = value
        return self._execute(vals, outer)

    def run_list(self, inputs: Sequence[Any], outer: Mapping[str, Any] | None = None) -> list[Any]:
        """Run on the graph inputs given in order."""
        return self._execute(self._fill(self._workspace(outer), inputs), outer)

    def run_bound(self, base: list[Any], inputs: Sequence[Any], outer: Mapping[str, Any]) -> list[Any]:
        """Run on the graph inputs given in order, from ``base`` (``_workspace(outer)``, made once per scope)."""
        return self._execute(self._fill(base.copy(), inputs), outer)

    def _fill(self, vals: list[Any], inputs: Sequence[Any]) -> list[Any]:
        """``vals`` with the graph inputs given in order in their slots."""
        first, count = self._input_span
        if len(inputs) == count:
            vals[first:first + count] = inputs
        else:
            for slot, value in zip(self._input_slots, inputs, strict=False):
                vals[slot] = value
        return vals

    def _workspace(self, outer: Mapping[str, Any] | None) -> list[Any]:
        vals = self._template.copy()
        if outer is not None:
            for name, slot in self._captured_slots:
                if name in outer:
                    vals[slot] = outer[name]
        return vals

    def _execute(self, vals: list[Any], outer: Mapping[str, Any] | None) -> list[Any]:
        arena = self._acquire(vals) if self._layout is not None and outer is None else None
        views = arena[1] if arena is not None else None
        step = None
        try:
            for step in self.steps:
                if step.simple:
                    fetch = step.fetch
                    result = step.call(*(fetch(vals) if fetch is not None else [vals[i] for i in step.in_slots]))
                    vals[step.out_slots[0]] = result if type(result) is np.ndarray else _first(result)
                elif step.single:
                    fetch = step.fetch
                    args = fetch(vals) if fetch is not None else [vals[i] for i in step.in_slots]
                    if views is not None and step.arena >= 0:
                        result = step.call(*args, out=views[step.arena])
                    elif step.reuse and _private(args[0]):
                        result = step.call(*args, out=args[0])
                    else:
                        result = step.call(*args)
                    vals[step.out_slots[0]] = result if type(result) is np.ndarray else _first(result)
                else:
                    self._launch(step, vals, outer)
                result = args = None  # the next step's _private() counts references
                for i in step.drop_slots:
                    vals[i] = None
            if self._unproduced:
                raise AclError(ErrorCode.INTERNAL_ERROR, f"output '{self._unproduced[0]}' was not produced")
            outputs = [vals[i] for i in self._output_slots]
            return outputs if arena is None else [_detach(v, arena[0]) for v in outputs]
        except AclError:
            raise
        except Exception as exc:
            raise _failed(step, exc) from exc
        finally:
            if arena is not None:
                vals.clear()
                self._pool.append(arena)

    def _program(self) -> list[tuple] | None:
        """The launch list as ``(kind, call, fetch, output slot, slots to drop, step)`` for :meth:`Subgraph.runner`:
        single-output steps with one input (``fetch``: its slot) or more (an itemgetter), the rest through
        :meth:`_launch`; None when a step has subgraphs, an output is unproduced or the inputs' slots are not in a
        row."""
        if self._unproduced or any(s.subgraphs for s in self.steps) or self._input_span[1] != len(self._input_slots) \
                or not self._output_slots:
            return None
        program = []
        for s in self.steps:
            if s.single and len(s.in_slots) == 1:
                program.append((_ONE_IN, s.call, s.in_slots[0], s.out_slots[0], s.drop_slots, s))
            elif s.single and s.fetch is not None:
                program.append((_MANY_IN, s.call, s.fetch, s.out_slots[0], s.drop_slots, s))
            else:
                program.append((_GENERAL, s.call, None, -1, s.drop_slots, s))
        return program

    def _launch(self, step: Step, vals: list[Any], outer: Mapping[str, Any] | None) -> None:
        """The general path: subgraphs, ``n_outputs``, ``out=`` reuse and several outputs."""
        args = [vals[i] for i in step.in_slots]
        kwargs: dict[str, Any] = {}
        if step.subgraphs:
            scope = _Scope(self.slot_of, vals, outer)
            for key, plan in step.subgraphs.items():
                if "[" in key:
                    base, _, idx = key.partition("[")
                    kwargs.setdefault(base, [])
                    kwargs[base].insert(int(idx[:-1]), Subgraph(plan, scope))
                else:
                    kwargs[key] = Subgraph(plan, scope)
        if step.n_outputs is not None:
            kwargs["n_outputs"] = step.n_outputs
        if step.reuse and _private(args[0]):
            kwargs["out"] = args[0]
        result = step.call(*args, **kwargs)
        results = result if isinstance(result, tuple) else (result,)
        for slot, value in zip(step.out_slots, results, strict=False):
            if slot >= 0:
                vals[slot] = value if type(value) is np.ndarray else _normalize(value)


class _Scope(Mapping):
    """A run's values seen by name (what subgraph bodies capture), falling back to the outer scope."""

    def __init__(self, slot_of: dict[str, int], vals: list[Any], outer: Mapping[str, Any] | None):
        self.slot_of, self.vals, self.outer = slot_of, vals, outer

    def __getitem__(self, name: str) -> Any:
        slot = self.slot_of.get(name)
        if slot is not None:
            return self.vals[slot]
        if self.outer is not None:
            return self.outer[name]
        raise KeyError(name)

    def __contains__(self, name: object) -> bool:
        return name in self.slot_of or (self.outer is not None and name in self.outer)

    def __iter__(self):
        yield from self.slot_of
        if self.outer is not None:
            yield from self.outer

    def __len__(self) -> int:
        return len(self.slot_of) + (len(self.outer) if self.outer is not None else 0)


class Subgraph:
    """A compiled subgraph bound to its enclosing scope: ``body(*inputs) -> list of outputs``. The scope does
    not change while the operator that calls the body runs: its captured values are read once, at the first
    call, and every call starts from that workspace."""

    def __init__(self, plan: Plan, scope: Mapping[str, Any]):
        self.plan = plan
        self.scope = scope
        self.input_names = plan.input_names
        self.output_names = plan.output_names
        self._base: list[Any] | None = None

    def __call__(self, *inputs: Any) -> list[Any]:
        if len(inputs) != len(self.input_names):
            raise AclError(ErrorCode.OP_INPUT_NOT_MATCH, f"subgraph '{self.plan.graph.name}' takes "
                           f"{len(self.input_names)} inputs, got {len(inputs)}")
        if self._base is None:
            self._base = self.plan._workspace(self.scope)
        return self.plan.run_bound(self._base, inputs, self.scope)

    def runner(self) -> Callable[[Sequence[Any]], tuple[Any, ...]]:
        """The body as ``run(inputs) -> outputs`` (a tuple; inputs as a sequence, not checked), for a kernel that
        calls it many times in a row (a Loop's iterations): a body without nested subgraphs runs a tight launch
        list (no arena, no ``out=`` reuse of single-output steps), others as ``__call__``.
        The kernels are read when the runner is made (a profiler attaches between runs, not during one)."""
        plan = self.plan
        program = plan._program()
        if program is None:
            return lambda inputs: tuple(self(*inputs))
        if self._base is None:
            self._base = plan._workspace(self.scope)
        base, (first, count), outputs = self._base, plan._input_span, plan._output_slots
        fetch_outputs = operator.itemgetter(*outputs) if len(outputs) > 1 else lambda vals: (vals[outputs[0]],)

        def run(inputs: Sequence[Any]) -> tuple[Any, ...]:
            vals = base.copy()
            vals[first:first + count] = inputs
            step = None
            try:
                for kind, call, fetch, out, drop, step in program:
                    if kind == _MANY_IN:
                        result = call(*fetch(vals))
                    elif kind == _ONE_IN:
                        result = call(vals[fetch])
                    else:
                        plan._launch(step, vals, None)
                        result = None
                    if out >= 0:
                        vals[out] = result if type(result) is np.ndarray else _first(result)
                    for i in drop:
                        vals[i] = None
            except AclError:
                raise
            except Exception as exc:
                raise _failed(step, exc) from exc
            return fetch_outputs(vals)

        return run


def _call(step: Step, fn: Any) -> Any:
    try:
        return fn()
    except AclError:
        raise
    except Exception as exc:
        raise _failed(step, exc) from exc


def _failed(step: Step, exc: Exception) -> AclError:
    """The error that reports a kernel's failure at ``step``'s node."""
    return AclError(ErrorCode.INTERNAL_ERROR, f"node {step.node.label} failed: {type(exc).__name__}: {exc}")


def _bind(fn: Any, attrs: dict[str, Any]) -> Any:
    """``fn`` with ``attrs`` bound: the kernel's own ``fn.bind_attrs(**attrs)`` where it has one (a closure, cheaper to
    call than keywords), else ``functools.partial``."""
    bind = getattr(fn, "bind_attrs", None)
    if bind is not None:
        return bind(**attrs)
    return functools.partial(fn, **attrs) if attrs else fn


def _takes_out(fn: Any) -> bool:
    try:
        return "out" in inspect.signature(fn).parameters
    except (TypeError, ValueError):  # builtins without a signature
        return False


def _may_fit(node: Node) -> bool:
    """Whether the first input's buffer may receive the output: not when both are static and of other shapes or
    dtypes (kernels take ``out`` only when it matches)."""
    src, dst = (getattr(v, "type", None) for v in (node.inputs[0], node.outputs[0] if node.outputs else None))
    if not (isinstance(src, TensorType) and isinstance(dst, TensorType) and src.is_static and dst.is_static):
        return True
    return src.shape == dst.shape and src.dtype == dst.dtype


def _count(shape: tuple[int, ...]) -> int:
    return int(np.prod(shape, dtype=np.int64))


def _detach(value: Any, arena: np.ndarray) -> Any:
    """``value`` (an output), copied when it shares the arena's memory (the next run reuses the arena)."""
    if isinstance(value, list):
        return [_detach(v, arena) for v in value]
    if type(value) is not np.ndarray or value.base is None:  # owns its memory: not in the arena
        return value
    return value.copy() if np.may_share_memory(value, arena) else value


def _private(arr: Any) -> bool:
    """True when ``arr`` owns its memory and only the executor refers to it (no views, no caller)."""
    # references: the workspace, the argument list, this frame's parameter, getrefcount's argument
    return type(arr) is np.ndarray and arr.base is None and arr.flags.writeable and sys.getrefcount(arr) <= 4


def _first(result: Any) -> Any:
    """A single-output kernel's result, normalized (a tuple gives its first element)."""
    if isinstance(result, tuple):
        result = result[0]
    return _normalize(result)


def _normalize(value: Any) -> Any:
    if value is None or isinstance(value, (np.ndarray, list)):
        return value
    return np.asarray(value)


class Executor:
    """Runs a Graph on a device: ``Executor(graph).run({"x": array})`` returns the outputs in order."""

    def __init__(self, graph: Graph, device=None):
        from opencann.devices import default_device

        self.device = device if device is not None else default_device()
        self.plan = Plan(graph, self.device.kind)
        self.input_names = self.plan.input_names
        self.output_names = self.plan.output_names
        self._required = [n for n in self.input_names if n not in self.plan.consts]
        self.runs = 0

    def run(self, feeds: Mapping[str, Any] | Sequence[Any]) -> list[Any]:
        if isinstance(feeds, (list, tuple)) and len(feeds) >= len(self.input_names):
            self.runs += 1
            return self.plan.run_list(feeds)
        if not isinstance(feeds, Mapping):
            feeds = dict(zip(self.input_names, feeds, strict=False))
        missing = [n for n in self._required if n not in feeds]
        if missing:
            raise AclError(ErrorCode.MODEL_INPUT_NOT_MATCH, f"missing input(s): {', '.join(missing)}")
        self.runs += 1
        return self.plan.run(feeds)
