"""The graph executor: runs an IR Graph's nodes with the registry's kernels.

Building an :class:`Executor` resolves every node to a kernel once (unsupported operators are reported
together, with node names), binds attributes with their defaults, and computes each value's last use
so that dead values are released as soon as nothing reads them. Subgraphs (If/Loop/Scan bodies) are
compiled the same way and reach their kernels as :class:`Subgraph` callables that see the enclosing
scope.
"""
from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from opencann.compiler.ir import Graph, Node
from opencann.errors import AclError, ErrorCode
from opencann.ops import registry


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


class Plan:
    """A graph compiled to a launch list for one device kind."""

    def __init__(self, graph: Graph, device_kind: str = "cpu", opsets: Mapping[str, int] | None = None):
        self.graph = graph
        self.device_kind = device_kind
        self.opsets = dict(opsets if opsets is not None else graph.opsets)
        self.consts = {v.name: v.const for v in graph.initializers}
        self.input_names = [v.name for v in graph.inputs]
        self.output_names = [v.name for v in graph.outputs]
        self.captured = sorted(graph.outer_names())
        self.steps = self._build()

    def _build(self) -> list[Step]:
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
        last_use = self._last_uses()
        keep = set(self.output_names)
        steps = []
        for idx, (node, d) in enumerate(zip(self.graph.nodes, resolved, strict=True)):
            subplans = {k: Plan(g, self.device_kind, self.opsets) for k, g in node.subgraphs.items()}
            steps.append(Step(
                node=node, fn=d.kernel_for(self.device_kind), attrs=self._bind_attrs(node, d, opsets[idx]),
                inputs=[v.name if v is not None and v.name else None for v in node.inputs],
                outputs=[v.name for v in node.outputs],
                n_outputs=len(node.outputs) if d.wants_n_outputs else None,
                drop=sorted(n for n, last in last_use.items() if last == idx and n not in keep),
                subgraphs=subplans))
            first = steps[-1].inputs[0] if steps[-1].inputs else None
            steps[-1].reuse = d.writes_out and first in steps[-1].drop and first not in self.consts
        return steps

    def _bind_attrs(self, node: Node, d: registry.OpDef, opset: int) -> dict[str, Any]:
        attrs = dict(d.defaults_at(opset))
        for k, v in node.attrs.items():
            if not d.accepts(k):
                raise AclError(ErrorCode.OP_ATTR_NOT_MATCH, f"node {node.label}: unknown attribute '{k}'")
            if not isinstance(v, Graph) and not (isinstance(v, list) and v and isinstance(v[0], Graph)):
                attrs[k] = v
        return attrs

    def _last_uses(self) -> dict[str, int]:
        last: dict[str, int] = {}
        for idx, node in enumerate(self.graph.nodes):
            for v in node.inputs:
                if v is not None:
                    last[v.name] = idx
            for g in node.subgraphs.values():
                for name in g.outer_names():
                    last[name] = idx
            for v in node.outputs:
                last.setdefault(v.name, idx)
        return last

    def run(self, feeds: Mapping[str, Any], outer: Mapping[str, Any] | None = None) -> list[Any]:
        """Run the launch list on ``feeds`` (plus an enclosing scope for subgraphs)."""
        env: dict[str, Any] = {n: outer[n] for n in self.captured if n in outer} if outer else {}
        env.update(self.consts)
        env.update(feeds)
        for step in self.steps:
            _launch(step, env)
        try:
            return [env[name] for name in self.output_names]
        except KeyError as exc:
            raise AclError(ErrorCode.INTERNAL_ERROR, f"output {exc} was not produced") from None


def _launch(step: Step, env: dict[str, Any]) -> None:
    """Run one step: read its inputs from ``env``, store its outputs, drop values that died."""
    args = [env[name] if name is not None else None for name in step.inputs]
    kwargs = dict(step.attrs)
    for key, plan in step.subgraphs.items():
        if "[" in key:
            base, _, idx = key.partition("[")
            kwargs.setdefault(base, [])
            kwargs[base].insert(int(idx[:-1]), Subgraph(plan, env))
        else:
            kwargs[key] = Subgraph(plan, env)
    if step.n_outputs is not None:
        kwargs["n_outputs"] = step.n_outputs
    if step.reuse and _private(args[0]):
        kwargs["out"] = args[0]
    try:
        result = step.fn(*args, **kwargs)
    except AclError:
        raise
    except Exception as exc:
        raise AclError(ErrorCode.INTERNAL_ERROR,
                       f"node {step.node.label} failed: {type(exc).__name__}: {exc}") from exc
    results = result if isinstance(result, tuple) else (result,)
    for name, value in zip(step.outputs, results, strict=False):
        if name:
            env[name] = _normalize(value)
    for name in step.drop:
        env.pop(name, None)


class Subgraph:
    """A compiled subgraph bound to its enclosing scope: ``body(*inputs) -> list of outputs``."""

    def __init__(self, plan: Plan, scope: Mapping[str, Any]):
        self.plan = plan
        self.scope = scope
        self.input_names = plan.input_names
        self.output_names = plan.output_names

    def __call__(self, *inputs: Any) -> list[Any]:
        if len(inputs) != len(self.plan.input_names):
            raise AclError(ErrorCode.OP_INPUT_NOT_MATCH, f"subgraph '{self.plan.graph.name}' takes "
                           f"{len(self.plan.input_names)} inputs, got {len(inputs)}")
        return self.plan.run(dict(zip(self.plan.input_names, inputs, strict=True)), self.scope)


def _private(arr: Any) -> bool:
    """True when ``arr`` owns its memory and only the executor refers to it (no views, no caller)."""
    # references: the environment, the argument list, this frame's parameter, getrefcount's argument
    return type(arr) is np.ndarray and arr.base is None and arr.flags.writeable and sys.getrefcount(arr) <= 4


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
        self.runs = 0

    def run(self, feeds: Mapping[str, Any] | Sequence[Any]) -> list[Any]:
        if not isinstance(feeds, Mapping):
            feeds = dict(zip(self.input_names, feeds, strict=False))
        missing = [n for n in self.input_names if n not in feeds and n not in self.plan.consts]
        if missing:
            raise AclError(ErrorCode.MODEL_INPUT_NOT_MATCH, f"missing input(s): {', '.join(missing)}")
        self.runs += 1
        return self.plan.run(feeds)
