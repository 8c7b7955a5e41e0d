"""Per-operator time of a compiled :class:`~opencann.runtime.executor.Plan`, without touching the executor.

    prof = Profiler(plan)
    report = prof.profile(inputs, iterations=20, warmup=2)   # a JSON-ready dict
    prof.attach(); plan.run_list(inputs); prof.detach()      # or time runs of your own

:meth:`Profiler.attach` replaces every step's kernel callable (``Step.call``: what the launch list calls,
on every path) with a ``time.perf_counter_ns`` timer around it, in subgraph plans (If/Loop/Scan bodies)
too; :meth:`Profiler.detach` puts the kernels back, so a plan costs nothing more when it is not
profiled. A node's time is its kernel's own: the time of the kernels of its subgraph bodies is counted
on those nodes (named ``parent/attribute/node``), not twice. A run's time minus its kernels' time is the
executor's overhead (dispatch, workspace, arena; plus the timers' own cost, about a microsecond a node).

While ``acl.prof`` (:mod:`opencann.acl.prof`) has a session started, :data:`SESSION` is set and
``LoadedModel.execute`` runs through :meth:`Session.execute`, which records each model execution.
"""
from __future__ import annotations

import statistics
import threading
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from opencann.runtime.executor import Plan, Step

SESSION: Session | None = None  # the acl.prof session recording model executions, if one is started


class NodeTimes:
    """One node's kernel calls: nanoseconds per call and the output shapes of its latest call."""

    __slots__ = ("name", "op", "times", "shapes")

    def __init__(self, name: str, op: str):
        self.name, self.op = name, op
        self.times: list[int] = []
        self.shapes: list[list[int]] | None = None


class Profiler:
    """Times the kernels of ``plan`` (and of its subgraph plans) while attached."""

    def __init__(self, plan: Plan):
        self.plan = plan
        self.nodes: list[NodeTimes] = []
        self.runs: list[int] = []  # nanoseconds per timed run
        self._saved: list[tuple[Step, Any]] = []
        self._local = threading.local()  # per thread: the stack of enclosing kernels' child time

    def attach(self) -> Profiler:
        if not self._saved:
            self.nodes = []
            self._wrap(self.plan, "")
        return self

    def detach(self) -> None:
        for step, call in self._saved:
            step.call = call
        self._saved = []

    def reset(self) -> None:
        self.runs = []
        for rec in self.nodes:
            rec.times.clear()
            rec.shapes = None

    def _wrap(self, plan: Plan, prefix: str) -> None:
        for idx, step in enumerate(plan.steps):
            node = step.node
            name = prefix + (node.name or f"{node.op}_{idx}")
            rec = NodeTimes(name, f"{node.domain}::{node.op}" if node.domain else node.op)
            self.nodes.append(rec)
            self._saved.append((step, step.call))
            step.call = _timer(step.call, rec, self._local)
            for key, sub in step.subgraphs.items():
                self._wrap(sub, f"{name}/{key}/")

    def run(self, inputs: Sequence[Any]) -> list[Any]:
        """One timed run of the plan on its inputs in order (attach first to time the kernels too)."""
        t0 = time.perf_counter_ns()
        outputs = self.plan.run_list(inputs)
        self.runs.append(time.perf_counter_ns() - t0)
        return outputs

    def profile(self, inputs: Sequence[Any], iterations: int = 10, warmup: int = 1) -> dict[str, Any]:
        """``warmup`` untimed runs, ``iterations`` plain runs, then ``iterations`` profiled runs: the report."""
        for _ in range(warmup):
            self.plan.run_list(inputs)
        plain = []
        for _ in range(iterations):
            t0 = time.perf_counter_ns()
            self.plan.run_list(inputs)
            plain.append(time.perf_counter_ns() - t0)
        self.attach()
        try:
            self.reset()
            for _ in range(iterations):
                self.run(inputs)
        finally:
            self.detach()
        return self.report(plain)

    def report(self, plain: Sequence[int] = ()) -> dict[str, Any]:
        """Runs, nodes and op types, JSON-ready (times in ms; ``plain``: unprofiled run times, ns)."""
        n = max(len(self.runs), 1)
        total = sum(self.runs)
        kernels = sum(sum(rec.times) for rec in self.nodes)
        nodes = sorted((_node_entry(rec, total, n) for rec in self.nodes), key=lambda e: -e["total_ms"])
        return {
            "graph": self.plan.graph.name,
            "iterations": len(self.runs),
            "run_ms": _summary(self.runs),
            "plain_run_ms": _summary(plain) if plain else None,
            "kernel_ms": _ms(kernels) / n,
            "overhead_ms": _ms(total - kernels) / n,
            "nodes": nodes,
            "types": _by_type(self.nodes, total, n),
        }


def _timer(fn: Any, rec: NodeTimes, local: threading.local) -> Any:
    """``fn`` timed into ``rec``, less the time of the kernels it calls (subgraph bodies)."""
    clock = time.perf_counter_ns
    times = rec.times  # reset() clears this list in place

    def timed(*args, **kwargs):
        stack = getattr(local, "stack", None)
        if stack is None:
            stack = local.stack = []
        stack.append(0)
        t0 = clock()
        try:
            result = fn(*args, **kwargs)
        finally:
            elapsed = clock() - t0
            inner = stack.pop()
            if stack:
                stack[-1] += elapsed
            times.append(elapsed - inner)
        if rec.shapes is None:
            rec.shapes = _shapes(result)
        return result

    return timed


def _shapes(result: Any) -> list[list[int]]:
    items = result if isinstance(result, (tuple, list)) else (result,)
    return [list(x.shape) if isinstance(x, np.ndarray) else [] for x in items]


def _ms(ns: float) -> float:
    return ns / 1e6


def _summary(times: Sequence[int]) -> dict[str, float]:
    if not times:
        return {"mean": 0.0, "median": 0.0, "min": 0.0}
    return {"mean": _ms(statistics.fmean(times)), "median": _ms(statistics.median(times)), "min": _ms(min(times))}


def _node_entry(rec: NodeTimes, total: int, runs: int) -> dict[str, Any]:
    spent = sum(rec.times)
    return {"name": rec.name, "op": rec.op, "calls": len(rec.times), "total_ms": _ms(spent),
            "per_run_ms": _ms(spent) / runs, "mean_ms": _ms(statistics.fmean(rec.times)) if rec.times else 0.0,
            "median_ms": _ms(statistics.median(rec.times)) if rec.times else 0.0,
            "percent": 100.0 * spent / total if total else 0.0, "shapes": rec.shapes or []}


def _by_type(recs: list[NodeTimes], total: int, runs: int) -> list[dict[str, Any]]:
    groups: dict[str, list[NodeTimes]] = {}
    for rec in recs:
        groups.setdefault(rec.op, []).append(rec)
    entries = []
    for op, group in groups.items():
        times = [t for rec in group for t in rec.times]
        spent = sum(times)
        entries.append({"op": op, "nodes": len(group), "calls": len(times), "total_ms": _ms(spent),
                        "per_run_ms": _ms(spent) / runs, "mean_ms": _ms(statistics.fmean(times)) if times else 0.0,
                        "median_ms": _ms(statistics.median(times)) if times else 0.0,
                        "percent": 100.0 * spent / total if total else 0.0})
    return sorted(entries, key=lambda e: -e["total_ms"])


class Session:
    """An ``acl.prof`` collection: times the executions of models on ``device_ids``; ``per_op``: their kernels."""

    def __init__(self, device_ids: Sequence[int], per_op: bool):
        self.device_ids = set(device_ids)
        self.per_op = per_op
        self.started_ns = time.time_ns()
        self._models: dict[int, tuple[Any, Profiler]] = {}
        self._lock = threading.Lock()

    def execute(self, model: Any, feeds: Sequence[Any]) -> list[Any]:
        """Run a ``LoadedModel``'s plan on ``feeds``, recorded when its device is profiled."""
        if getattr(model.device, "index", 0) not in self.device_ids:
            return model.plan.run_list(feeds)
        with self._lock:
            entry = self._models.get(model.id)
            if entry is None or entry[1].plan is not model.plan:
                prof = Profiler(model.plan)
                if self.per_op:
                    prof.attach()
                entry = self._models[model.id] = (model, prof)
        return entry[1].run(feeds)

    def close(self) -> dict[str, Any]:
        """Stop timing (kernels restored) and return what was recorded, JSON-ready."""
        with self._lock:
            models = list(self._models.values())
            self._models = {}
        for _, prof in models:
            prof.detach()
        result = {"format": "opencann-profile", "version": 1, "devices": sorted(self.device_ids),
                  "start_ns": self.started_ns, "stop_ns": time.time_ns(), "models": []}
        for model, prof in models:
            entry = {"model_id": model.id, "device": getattr(model.device, "index", 0), "executions": len(prof.runs),
                     "runs_ms": [_ms(t) for t in prof.runs], **prof.report()}
            if not self.per_op:
                for key in ("nodes", "types", "kernel_ms", "overhead_ms"):
                    del entry[key]
            result["models"].append(entry)
        return result
