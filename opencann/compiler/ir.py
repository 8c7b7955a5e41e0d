"""opencann's IR: the one currency between frontends, passes, planner and executor.

A :class:`Graph` holds :class:`Value` edges and :class:`Node` operators. Operators carry ONNX names and
semantics (domain ``""``) wherever ONNX has them; the ``opencann`` domain holds the rest. Subgraphs
(If/Loop/Scan bodies) are Graph-valued attributes and may read values of the enclosing graphs.
"""
from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from opencann.compiler import dtypes
from opencann.errors import AclError, ErrorCode

Dim = int | str | None  # int: static, str: symbolic, None: unknown


@dataclass(frozen=True)
class TensorType:
    """Element type and shape; ``shape=None`` means the rank is unknown."""

    dtype: np.dtype
    shape: tuple[Dim, ...] | None = None

    def __post_init__(self):
        object.__setattr__(self, "dtype", np.dtype(self.dtype))
        if self.shape is not None:
            object.__setattr__(self, "shape", tuple(self.shape))

    @property
    def rank(self) -> int | None:
        return None if self.shape is None else len(self.shape)

    @property
    def is_static(self) -> bool:
        return self.shape is not None and all(isinstance(d, int) for d in self.shape)

    def __str__(self) -> str:
        dims = "?" if self.shape is None else ",".join("?" if d is None else str(d) for d in self.shape)
        return f"{dtypes.name(self.dtype)}[{dims}]"


@dataclass(frozen=True)
class SequenceType:
    """An ONNX sequence of tensors (a Python list at run time)."""

    elem: TensorType | None

    def __str__(self) -> str:
        return f"seq({self.elem})"


@dataclass(frozen=True)
class OptionalType:
    """An ONNX optional (``None`` or the element at run time)."""

    elem: TensorType | SequenceType | None

    def __str__(self) -> str:
        return f"optional({self.elem})"


ValueType = TensorType | SequenceType | OptionalType


class Value:
    """An edge: a graph input, an initializer (``const`` set), or a node output."""

    __slots__ = ("name", "type", "producer", "const")

    def __init__(self, name: str, type: ValueType | None = None, const: np.ndarray | None = None):
        self.name = name
        self.type = type
        self.producer: Node | None = None
        self.const = const
        if const is not None and type is None:
            self.type = TensorType(const.dtype, const.shape)

    def __repr__(self) -> str:
        return f"%{self.name}: {self.type}"


class Node:
    """An operator application. Graph-valued attributes are its subgraphs."""

    __slots__ = ("op", "domain", "inputs", "outputs", "attrs", "name")

    def __init__(self, op: str, inputs: Iterable[Value | None], outputs: Iterable[Value],
                 attrs: dict[str, Any] | None = None, name: str = "", domain: str = ""):
        self.op = op
        self.domain = domain
        self.inputs = list(inputs)
        self.outputs = list(outputs)
        self.attrs = dict(attrs or {})
        self.name = name
        for v in self.outputs:
            v.producer = self

    @property
    def subgraphs(self) -> dict[str, Graph]:
        """Graph-valued attributes; an attribute holding a list of graphs gives keys ``name[i]``."""
        out = {}
        for k, v in self.attrs.items():
            if isinstance(v, Graph):
                out[k] = v
            elif isinstance(v, list):
                out.update({f"{k}[{i}]": g for i, g in enumerate(v) if isinstance(g, Graph)})
        return out

    @property
    def label(self) -> str:
        return f"{self.op} '{self.name}'" if self.name else self.op

    def __repr__(self) -> str:
        return f"<Node {self.label}>"


@dataclass
class Graph:
    """A computation: inputs, topologically ordered nodes, outputs and initializers."""

    inputs: list[Value] = field(default_factory=list)
    outputs: list[Value] = field(default_factory=list)
    nodes: list[Node] = field(default_factory=list)
    initializers: list[Value] = field(default_factory=list)
    name: str = "graph"
    opsets: dict[str, int] = field(default_factory=lambda: {"": 23})

    def values(self) -> Iterator[Value]:
        """Every value defined in this graph (not in its subgraphs): inputs, initializers, outputs."""
        yield from self.inputs
        yield from self.initializers
        for n in self.nodes:
            yield from n.outputs

    def outer_names(self) -> set[str]:
        """Names this graph (with its subgraphs) reads but does not define: captured from outside."""
        defined = {v.name for v in self.values()}
        used: set[str] = set()
        for n in self.nodes:
            used.update(v.name for v in n.inputs if v is not None)
            for g in n.subgraphs.values():
                used.update(g.outer_names())
        used.update(v.name for v in self.outputs)
        return used - defined

    def toposort(self) -> None:
        """Order nodes so that every value is produced before it is used; raises on cycles."""
        available = {v.name for v in self.inputs} | {v.name for v in self.initializers} | self.outer_names()
        pending, ordered = list(self.nodes), []
        while pending:
            ready = [n for n in pending if all(i is None or i.name in available for i in _reads(n))]
            if not ready:
                stuck = ", ".join(n.label for n in pending[:5])
                raise AclError(ErrorCode.PARSE_MODEL, f"graph '{self.name}' has a cycle through {stuck}")
            for n in ready:
                ordered.append(n)
                available.update(v.name for v in n.outputs)
            ids = {id(n) for n in ready}
            pending = [n for n in pending if id(n) not in ids]
        self.nodes = ordered

    def validate(self, outer: frozenset[str] = frozenset()) -> None:
        """Check that every read value is defined before use, names are unique and types are known."""
        defined: set[str] = set(outer)
        for v in [*self.inputs, *self.initializers]:
            self._define(v, defined)
            if v.type is None and not outer:
                raise AclError(ErrorCode.PARSE_MODEL, f"graph '{self.name}': input '{v.name}' has no type")
        for n in self.nodes:
            for i, v in enumerate(n.inputs):
                if v is not None and v.name not in defined:
                    raise AclError(ErrorCode.PARSE_MODEL,
                                   f"node {n.label}: input {i} '{v.name}' is not defined before use")
            for g in n.subgraphs.values():
                g.validate(frozenset(defined))
            for v in n.outputs:
                self._define(v, defined)
        for v in self.outputs:
            if v.name not in defined:
                raise AclError(ErrorCode.PARSE_MODEL, f"graph '{self.name}': output '{v.name}' is never produced")

    def _define(self, v: Value, defined: set[str]) -> None:
        if v.name in defined and v.name:
            raise AclError(ErrorCode.PARSE_MODEL, f"graph '{self.name}': value '{v.name}' is defined twice")
        defined.add(v.name)

    def __str__(self) -> str:
        return "\n".join(_print_graph(self, ""))

    def to_onnx(self, ir_version: int | None = None):
        """Export as an ``onnx.ModelProto`` (checked by ``onnx.checker``); missing types are inferred first."""
        from opencann.compiler.passes.shape_inference import infer_shapes
        from opencann.frontends.onnx.exporter import export_model

        return export_model(infer_shapes(self), ir_version=ir_version)


def _reads(n: Node) -> list[Value | None]:
    reads = list(n.inputs)
    for g in n.subgraphs.values():
        reads.extend(Value(name) for name in g.outer_names())
    return reads


def _format_attr(v: Any) -> str:
    if isinstance(v, np.ndarray):
        return f"tensor<{dtypes.name(v.dtype)}{list(v.shape)}>" if v.size > 4 else repr(v.tolist())
    if isinstance(v, Graph):
        return f"graph({v.name})"
    if isinstance(v, list) and v and isinstance(v[0], Graph):
        return "[" + ", ".join(f"graph({g.name})" for g in v) + "]"
    return repr(v)


def _print_graph(g: Graph, indent: str) -> list[str]:
    sig = ", ".join(f"%{v.name}: {v.type}" for v in g.inputs)
    lines = [f"{indent}graph {g.name}({sig}) {{"]
    for v in g.initializers:
        lines.append(f"{indent}  %{v.name}: {v.type} = const")
    for n in g.nodes:
        outs = ", ".join(f"%{v.name}: {v.type}" for v in n.outputs)
        ins = ", ".join("%" + v.name if v is not None else "_" for v in n.inputs)
        op = f"{n.domain}.{n.op}" if n.domain else n.op
        attrs = " ".join(f"{k}={_format_attr(a)}" for k, a in sorted(n.attrs.items()))
        lines.append(f"{indent}  {outs} = {op}({ins}){' ' + attrs if attrs else ''}")
        for key, sub in n.subgraphs.items():
            lines.append(f"{indent}    {key}:")
            lines.extend(_print_graph(sub, indent + "    "))
    lines.append(f"{indent}  return " + ", ".join("%" + v.name for v in g.outputs))
    lines.append(f"{indent}}}")
    return lines
