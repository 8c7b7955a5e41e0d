"""Custom operators written in the TBE DSL: ``@register_op`` makes a DSL function an operator everywhere.

    @tbe.register_op("LeakyReluX", domain="opencann.custom", attrs={"alpha": 0.01}, tf_op=None)
    def leaky_relu_x(x, *, alpha):
        return tbe.vsel(tbe.vcmp(x, 0, "gt"), x, tbe.vmuls(x, alpha))

The function takes one :func:`opencann.tbe.placeholder` per positional parameter and the attributes as
keyword-only parameters, and returns an output expression (or a tuple of them). Registration puts the
operator in :mod:`opencann.ops.registry` (since opset 1 of its domain, with an explicit ``OpSchema``), so it
runs in graphs imported from ONNX, in single-operator execution (``acl.op.run``/``execute``), in ``atc``
and in loaded ``.om`` files (register before loading), and — with ``tf_op="TfOpName"`` — in the TensorFlow
adapter, whose converter for that op type it becomes (the op's inputs in order, attributes of the same
names). The kernel builds the DSL expression on placeholders of the concrete input shapes and dtypes on
first use (cached per shapes, dtypes and attribute values); shape inference builds it on placeholders.

Re-registering a custom operator (same domain and name) replaces its definition: kernels built for the
old one are dropped. A name that a built-in operator already holds in that domain is refused.
"""
from __future__ import annotations

import hashlib
import inspect
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from onnx import defs, helper

from opencann.compiler.ir import Node, TensorType
from opencann.errors import AclError, ErrorCode
from opencann.ops import registry

_TENSOR_TYPES = [f"tensor({t})" for t in ("float", "float16", "double", "int32", "int64", "int8", "uint8", "bool")]
_PRIMES = (1000003, 1000033, 1000037, 1000039, 1000081, 1000099, 1000117, 1000121)  # stand-ins for unknown dims


@dataclass
class CustomOp:
    """One registered DSL operator and the kernels built for it."""

    name: str
    domain: str
    fn: Callable
    attrs: dict[str, Any]
    inputs: list[str]
    tf_op: str | None = None
    kernels: dict[tuple, Any] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def kernel_name(self) -> str:
        """A generated identifier for the built kernel (the user's name never enters generated code)."""
        return "custom_" + hashlib.sha256(f"{self.domain}::{self.name}".encode()).hexdigest()[:12]

    def expressions(self, in_types: list[tuple[tuple[int, ...], np.dtype]], attrs: dict[str, Any]):
        """(placeholders, output expressions) of the DSL function on inputs of these shapes and dtypes."""
        from opencann import tbe

        if len(in_types) != len(self.inputs):
            raise AclError(ErrorCode.OP_INPUT_NOT_MATCH, f"{self.label} takes {len(self.inputs)} inputs "
                           f"({', '.join(self.inputs)}), got {len(in_types)}")
        unknown = set(attrs) - set(self.attrs)
        if unknown:
            raise AclError(ErrorCode.OP_ATTR_NOT_MATCH, f"{self.label}: unknown attribute(s) "
                           f"{', '.join(sorted(unknown))} (it has {', '.join(self.attrs) or 'none'})")
        holders = [tbe.placeholder(tuple(shape), np.dtype(dtype).name, name=f"x{i}")
                   for i, (shape, dtype) in enumerate(in_types)]
        outs = self.fn(*holders, **{**self.attrs, **attrs})
        return holders, (list(outs) if isinstance(outs, (tuple, list)) else [outs])

    @property
    def label(self) -> str:
        return f"custom operator {self.domain}::{self.name}"

    def run(self, *arrays: np.ndarray, **attrs: Any):
        """The registry kernel: build (once per signature) and launch the DSL kernel."""
        from opencann import tbe

        arrays = tuple(np.asarray(a) for a in arrays)
        key = (tuple((a.shape, a.dtype.str) for a in arrays), _freeze(attrs))
        with self.lock:
            entry = self.kernels.get(key)
            if entry is None:
                holders, outs = self.expressions([(a.shape, a.dtype) for a in arrays], attrs)
                entry = self.kernels[key] = (tbe.build(outs, name=self.kernel_name, inputs=holders, device="cpu"),
                                             len(outs))
        kernel, n_outputs = entry
        result = kernel(*arrays)
        return tuple(result) if n_outputs > 1 else result

    def infer(self, node: Node) -> list[TensorType | None]:
        """Output types of ``node``: the DSL expression built on placeholders of its input types."""
        types = [v.type if v is not None else None for v in node.inputs]
        if not all(isinstance(t, TensorType) and t.shape is not None for t in types):
            return [None] * len(node.outputs)
        stand_in: dict[int, Any] = {}
        symbols: dict[Any, int] = {}
        shapes = []
        for t in types:
            dims = []
            for k, d in enumerate(t.shape):
                # a symbolic dim stands for one number; unknown ones at one (right-aligned) axis are taken as equal
                key = d if isinstance(d, (int, str)) else ("unknown", len(t.shape) - k)
                if isinstance(d, int):
                    dims.append(d)
                    continue
                if key not in symbols:
                    symbols[key] = _PRIMES[len(symbols) % len(_PRIMES)] + 1000 * (len(symbols) // len(_PRIMES))
                    stand_in[symbols[key]] = d
                dims.append(symbols[key])
            shapes.append((tuple(dims), t.dtype))
        attrs = {k: v for k, v in node.attrs.items() if k in self.attrs}
        try:
            _, outs = self.expressions(shapes, attrs)
        except AclError:
            if symbols:  # the stand-ins may not fit the expression: leave the types to run time
                return [None] * len(node.outputs)
            raise
        return [TensorType(np.dtype(o.dtype), tuple(stand_in.get(d, d) for d in o.shape)) for o in outs]


_CUSTOM: dict[tuple[str, str], CustomOp] = {}
_lock = threading.Lock()


def register_op(name: str, *, domain: str = "opencann.custom", attrs: dict[str, Any] | None = None,
                tf_op: str | None = None) -> Callable[[Callable], Callable]:
    """Register a DSL function as operator ``domain::name`` (see the module docstring); returns it unchanged."""
    attrs = dict(attrs or {})

    def register(fn: Callable) -> Callable:
        custom = CustomOp(name=name, domain=domain, fn=fn, attrs=attrs, inputs=_check_signature(name, fn, attrs),
                          tf_op=tf_op)
        with _lock:
            key = (domain, name)
            existing = registry.lookup(name, 1 << 30, domain)
            if key not in _CUSTOM and existing is not None:
                raise AclError(ErrorCode.INVALID_PARAM, f"register_op: {domain or 'ai.onnx'}::{name} is a built-in "
                               "operator; choose another name or domain")
            schema = _schema(custom)
            if key in _CUSTOM:
                existing.schema = schema
                existing._defaults_cache.clear()
            else:
                registry.op(name, since=1, domain=domain, schema=schema,
                            infer=lambda node: _CUSTOM[key].infer(node))(_dispatcher(key))
            _CUSTOM[key] = custom
        if tf_op is not None:
            _register_tf_converter(tf_op, custom)
        return fn

    return register


def custom_ops() -> dict[tuple[str, str], CustomOp]:
    """The registered custom operators: ``(domain, name) -> CustomOp``."""
    return dict(_CUSTOM)


def _dispatcher(key: tuple[str, str]) -> Callable:
    def kernel(*inputs, **attrs):
        return _CUSTOM[key].run(*inputs, **attrs)

    return kernel


def _check_signature(name: str, fn: Callable, attrs: dict[str, Any]) -> list[str]:
    """The input names of ``fn`` (its positional parameters); its keyword-only ones must be ``attrs``."""
    params = inspect.signature(fn).parameters.values()
    inputs = [p.name for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    keywords = {p.name for p in params if p.kind is p.KEYWORD_ONLY}
    if keywords != set(attrs) or any(p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) for p in params):
        raise AclError(ErrorCode.INVALID_PARAM, f"register_op('{name}'): {fn.__name__} must take its inputs as "
                       f"positional parameters and exactly the attributes {sorted(attrs)} as keyword-only ones")
    if not inputs:
        raise AclError(ErrorCode.INVALID_PARAM, f"register_op('{name}'): {fn.__name__} takes no input")
    return inputs


def _schema(custom: CustomOp) -> defs.OpSchema:
    param = defs.OpSchema.FormalParameter
    outputs = param("outputs", "T", param_option=defs.OpSchema.FormalParameterOption.Variadic,
                    is_homogeneous=False)
    attributes = [defs.OpSchema.Attribute(k, helper.make_attribute(k, v), "") for k, v in custom.attrs.items()]
    return defs.OpSchema(custom.name, custom.domain, 1, f"TBE DSL operator {custom.fn.__name__}",
                         inputs=[param(n, "T") for n in custom.inputs], outputs=[outputs],
                         type_constraints=[("T", _TENSOR_TYPES, "")], attributes=attributes)


def _register_tf_converter(tf_op: str, custom: CustomOp) -> None:
    """Make ``custom`` the TensorFlow adapter's converter for op type ``tf_op`` (replacing a built-in one)."""
    import opencann.frontends.tensorflow.ops  # noqa: F401  (the built-in converters register first)
    from opencann.frontends.tensorflow.importer import tf_op as tf_converter

    @tf_converter(tf_op)
    def convert(ctx, op):
        attrs = {k: ctx.attr(op, k, v) for k, v in custom.attrs.items()}
        out = ctx.node(custom.name, ctx.inputs(op), n_outputs=len(op.outputs), domain=custom.domain, **attrs)
        return list(out) if isinstance(out, tuple) else [out]


def _freeze(v: Any) -> Any:
    if isinstance(v, dict):
        return tuple(sorted((k, _freeze(x)) for k, x in v.items()))
    if isinstance(v, (list, tuple)):
        return tuple(_freeze(x) for x in v)
    if isinstance(v, np.ndarray):
        return v.dtype.str, v.shape, v.tobytes()
    return v
