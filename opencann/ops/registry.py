"""The operator registry: one definition per operator and opset version.

An operator is registered once, with its NumPy reference kernel, by the :func:`op` decorator::

    @op("Relu", since=14)
    def relu(x):
        return np.maximum(x, 0).astype(x.dtype)

Kernel convention (as in ONNX's reference evaluator): inputs are positional (``None`` for an omitted
optional input; a list for a sequence), attributes are keyword arguments with the schema's defaults
filled in, and a kernel returns one value, or a ``tuple`` when the operator has several outputs. A kernel
that names a parameter ``n_outputs`` receives how many outputs the node asked for; one that names a
parameter ``out`` may be handed a buffer for its (single) result: a planned, C-contiguous array of the
output's inferred shape and dtype, or its first input's array when that value dies at this node and nothing
else refers to it. It writes its result there and returns it, or returns a new array when the result does
not fit; it never returns a view of its inputs. Graph attributes
arrive as callables ``body(*inputs) -> list`` (see :mod:`opencann.runtime.executor`).

The schema (inputs, outputs, attributes and their defaults, type constraints) of an ONNX-domain
operator is ONNX's own ``OpSchema``; operators of the ``opencann`` domain pass theirs explicitly. Shape
inference likewise defaults to the ONNX schema's inference function; an op may give its own ``infer``.
Devices register faster kernels for the same operator with :func:`kernel`.
"""
from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import onnx
from onnx import defs, helper

OPENCANN_DOMAIN = "opencann"
_ONNX_DOMAINS = ("", "ai.onnx", "ai.onnx.ml", "ai.onnx.preview.training")


@dataclass
class OpDef:
    """One operator version: its schema, reference kernel, inference and per-device kernels."""

    name: str
    domain: str
    since: int
    reference: Callable
    infer: Callable | None = None
    schema: Any = None
    _defaults_cache: dict[int, dict[str, Any]] = field(default_factory=dict)
    params: frozenset[str] = frozenset()
    takes_kwargs: bool = False
    wants_n_outputs: bool = False
    graph_data: bool = False  # subgraph attributes reach the kernel as Graphs (code-generator input), not Subgraphs
    kernels: dict[str, Callable] = field(default_factory=dict)

    def kernel_for(self, device_kind: str) -> Callable:
        """The fastest kernel registered for a device kind; the reference one on the CPU."""
        return self.kernels.get(device_kind) or self.reference

    def accepts(self, attr: str) -> bool:
        return self.takes_kwargs or attr in self.params

    def defaults_at(self, opset: int) -> dict[str, Any]:
        """Attribute defaults of the schema in force at ``opset`` (they change between versions)."""
        key = max(opset, self.since)
        if key not in self._defaults_cache:
            schema = self.schema
            if self.domain in _ONNX_DOMAINS and schema is not None:
                schema = onnx_schema(self.name, key, self.domain) or schema
            self._defaults_cache[key] = {k: v for k, v in _schema_defaults(schema).items() if self.accepts(k)}
        return self._defaults_cache[key]


_REGISTRY: dict[tuple[str, str], list[OpDef]] = {}


def _norm_domain(domain: str) -> str:
    return "" if domain == "ai.onnx" else domain


def onnx_schema(name: str, since: int, domain: str):
    if domain not in _ONNX_DOMAINS:
        return None
    try:
        return defs.get_schema(name, since, domain)
    except defs.SchemaError:
        return None


def _schema_defaults(schema) -> dict[str, Any]:
    if schema is None:
        return {}
    out = {}
    for attr_name, attr in schema.attributes.items():
        if attr.default_value.type != onnx.AttributeProto.UNDEFINED:
            value = helper.get_attribute_value(attr.default_value)
            out[attr_name] = value.decode() if isinstance(value, bytes) else value
    return out


def op(name: str, *, since: int | tuple[int, ...] = 1, domain: str = "", infer: Callable | None = None,
       schema: Any = None, graph_data: bool = False) -> Callable[[Callable], Callable]:
    """Register ``fn`` as the reference kernel of ``domain::name`` from opset ``since`` on.

    A tuple of versions registers the same kernel for each (each keeps its own ONNX schema). With
    ``graph_data`` the node's subgraph attributes are bound to the kernel as :class:`Graph` objects once
    (a fused kernel's description), instead of being compiled into runnable subgraphs.
    """
    domain = _norm_domain(domain)
    if isinstance(since, tuple):
        def register_all(fn: Callable) -> Callable:
            for version in since:
                op(name, since=version, domain=domain, infer=infer, schema=schema, graph_data=graph_data)(fn)
            return fn

        return register_all

    def register(fn: Callable) -> Callable:
        sig = inspect.signature(fn)
        params = sig.parameters.values()
        definition = OpDef(
            name=name, domain=domain, since=since, reference=fn, infer=infer,
            schema=schema if schema is not None else onnx_schema(name, since, domain),
            params=frozenset(p.name for p in params if p.kind is p.KEYWORD_ONLY or
                             p.kind is p.POSITIONAL_OR_KEYWORD),
            takes_kwargs=any(p.kind is p.VAR_KEYWORD for p in params),
            wants_n_outputs="n_outputs" in sig.parameters, graph_data=graph_data,
        )
        versions = _REGISTRY.setdefault((domain, name), [])
        if any(d.since == since for d in versions):
            raise ValueError(f"operator {domain or 'ai.onnx'}::{name} since {since} registered twice")
        versions.append(definition)
        versions.sort(key=lambda d: d.since)
        return fn

    return register


def kernel(name: str, device: str, *, domain: str = "", since: int | None = None):
    """Register a faster kernel for ``device`` (same signature as the reference kernel)."""

    def register(fn: Callable) -> Callable:
        for d in _REGISTRY[(_norm_domain(domain), name)]:
            if since is None or d.since == since:
                d.kernels[device] = fn
        return fn

    return register


def lookup(name: str, opset: int, domain: str = "") -> OpDef | None:
    """The definition in force at ``opset``: the newest version with ``since <= opset``."""
    _load_library()
    found = None
    for d in _REGISTRY.get((_norm_domain(domain), name), ()):
        if d.since <= opset:
            found = d
    return found


def registered() -> dict[tuple[str, str], list[OpDef]]:
    """Every registered operator: ``(domain, name) -> versions``."""
    _load_library()
    return dict(_REGISTRY)


_loaded = False


def _load_library() -> None:
    """Import the operator modules (they register themselves) on first use."""
    global _loaded
    if not _loaded:
        import opencann.ops.library  # noqa: F401

        _loaded = True
