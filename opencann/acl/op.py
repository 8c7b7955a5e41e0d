"""Single-operator execution: run any registered operator by type, compiled once per signature.

    acl.op.execute("Add", [(desc, a_mem), (desc, b_mem)], [(desc, out_mem)], stream=stream)
    (y,) = acl.op.run("Relu", x)            # host arrays in and out
"""
from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from opencann.acl.context import current_context
from opencann.acl.memory import Memory
from opencann.acl.state import initialized
from opencann.compiler.ir import Graph, Node, TensorType, Value
from opencann.errors import AclError, ErrorCode
from opencann.ops import registry
from opencann.runtime.executor import Plan

DEFAULT_OPSET = 23


@dataclass(frozen=True)
class TensorDesc:
    """dtype, shape and format of one operator input or output."""

    dtype: Any
    shape: tuple[int, ...]
    format: str = "ND"

    @property
    def size(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * np.dtype(self.dtype).itemsize


_cache: dict[tuple, Plan] = {}
_cache_lock = threading.Lock()


def _freeze(v: Any) -> Any:
    if isinstance(v, np.ndarray):
        return ("array", v.dtype.str, v.shape, v.tobytes())
    if isinstance(v, (list, tuple)):
        return tuple(_freeze(x) for x in v)
    return v


def compiled(op_type: str, in_types: Sequence[TensorType], n_outputs: int, attrs: dict[str, Any],
             domain: str = "", opset: int = DEFAULT_OPSET) -> Plan:
    """The cached launch plan of one operator for these input types and attributes, on this device kind."""
    kind = current_context().device.kind
    key = (kind, op_type, domain, opset, tuple((t.dtype.str, t.shape) for t in in_types), n_outputs,
           tuple(sorted((k, _freeze(v)) for k, v in attrs.items())))
    with _cache_lock:
        plan = _cache.get(key)
    if plan is None:
        if registry.lookup(op_type, opset, domain) is None:
            raise AclError(ErrorCode.OP_NOT_FOUND, f"operator '{op_type}' is not registered "
                           f"(domain '{domain}', opset {opset})")
        ins = [Value(f"x{i}", t) for i, t in enumerate(in_types)]
        outs = [Value(f"y{i}") for i in range(n_outputs)]
        graph = Graph(inputs=ins, outputs=outs, nodes=[Node(op_type, ins, outs, attrs, name=op_type, domain=domain)],
                      name=f"single_op_{op_type}", opsets={"": DEFAULT_OPSET, domain: opset})
        plan = Plan(graph, kind)
        with _cache_lock:
            _cache[key] = plan
    return plan


def cache_size() -> int:
    return len(_cache)


@initialized
def run(op_type: str, *inputs: np.ndarray, n_outputs: int = 1, domain: str = "", opset: int = DEFAULT_OPSET,
        **attrs: Any) -> list[np.ndarray]:
    """Run one operator on host arrays and return its outputs."""
    arrays = [np.asarray(x) for x in inputs]
    plan = compiled(op_type, [TensorType(a.dtype, a.shape) for a in arrays], n_outputs, attrs, domain, opset)
    return plan.run({f"x{i}": a for i, a in enumerate(arrays)})


def _views(items, what: str) -> tuple[list[TensorDesc], list[Memory]]:
    descs, mems = [], []
    for i, item in enumerate(items):
        if not (isinstance(item, (tuple, list)) and len(item) == 2 and isinstance(item[0], TensorDesc)
                and isinstance(item[1], Memory)):
            raise AclError(ErrorCode.INVALID_PARAM, f"{what} {i} must be a (TensorDesc, acl memory) pair")
        desc, mem = item
        if desc.size > mem.size:
            raise AclError(ErrorCode.INVALID_PARAM, f"{what} {i}: {desc.size} bytes described, memory has {mem.size}")
        descs.append(desc)
        mems.append(mem)
    return descs, mems


@initialized
def execute(op_type: str, inputs: Sequence, outputs: Sequence, attrs: dict[str, Any] | None = None,
            stream=None, domain: str = "", opset: int = DEFAULT_OPSET) -> None:
    """Run one operator on device memory; enqueued on ``stream`` when one is given (as aclopExecuteV2)."""
    in_descs, in_mems = _views(inputs, "input")
    out_descs, out_mems = _views(outputs, "output")
    plan = compiled(op_type, [TensorType(np.dtype(d.dtype), d.shape) for d in in_descs], len(out_descs),
                    dict(attrs or {}), domain, opset)

    def launch() -> None:
        feeds = {f"x{i}": m.numpy(d.dtype, d.shape) for i, (d, m) in enumerate(zip(in_descs, in_mems, strict=True))}
        for i, (y, d, m) in enumerate(zip(plan.run(feeds), out_descs, out_mems, strict=True)):
            y = np.asarray(y)
            if y.shape != tuple(d.shape) or y.dtype != np.dtype(d.dtype):
                raise AclError(ErrorCode.OP_OUTPUT_NOT_MATCH, f"{op_type} output {i} is {y.dtype}{list(y.shape)}, "
                               f"described as {np.dtype(d.dtype)}{list(d.shape)}")
            m.numpy(d.dtype, d.shape)[...] = y

    stream.enqueue(launch) if stream is not None else launch()
