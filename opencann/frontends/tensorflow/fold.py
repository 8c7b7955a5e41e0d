"""Import-time simplification for converters: constant folding and common-subexpression elimination.

``fold(ctx, ...)`` is a drop-in for ``ctx.node(...)``. When every input is a constant (shape arithmetic,
reduction axes, casts of constants) the kernel runs once at import and the graph holds its result;
otherwise a node identical to one already built (same operator, attributes and inputs — constants
compared by value) is reused. Keras' optimizers compute the same scalars (``beta ** step``, the bias
corrections, the learning rate) once per variable; they collapse to one node each. Every kernel a
converter emits is a pure function of its inputs (stateless random ops included), so both are exact.
"""
from __future__ import annotations

import numpy as np

from opencann.compiler.ir import Value
from opencann.frontends.tensorflow.importer import OPSETS, Context
from opencann.ops import registry

FOLD_LIMIT = 1 << 16  # elements: a larger constant result stays a node
KEY_LIMIT = 64  # elements: constants up to this size are compared by value


def fold(ctx: Context, op_type: str, inputs: list, n_outputs: int = 1, domain: str = "", **attrs):
    """``ctx.node(op_type, inputs, n_outputs, domain, **attrs)``, folded or shared where possible."""
    if inputs and all(v is not None and v.const is not None for v in inputs):
        folded = _evaluate(ctx, op_type, inputs, n_outputs, domain, attrs)
        if folded is not None:
            return folded
    seen = ctx.__dict__.setdefault("_fold_cse", {})
    key = (op_type, domain, n_outputs, repr(sorted(attrs.items())), tuple(_key(v) for v in inputs))
    if key not in seen:
        seen[key] = ctx.node(op_type, inputs, n_outputs=n_outputs, domain=domain, **attrs)
    return seen[key]


def _evaluate(ctx: Context, op_type: str, inputs: list[Value], n_outputs: int, domain: str, attrs: dict):
    opset = OPSETS[domain]
    d = registry.lookup(op_type, opset, domain)
    if d is None:
        return None
    kwargs = {**d.defaults_at(opset), **attrs, **({"n_outputs": n_outputs} if d.wants_n_outputs else {})}
    result = d.reference(*(v.const for v in inputs), **kwargs)
    results = result if isinstance(result, tuple) else (result,)
    if any(np.size(r) > FOLD_LIMIT for r in results):
        return None
    consts = tuple(ctx.const(np.asarray(r)) for r in results)
    return consts[0] if n_outputs == 1 else consts


def _key(v: Value | None):
    if v is None:
        return None
    if v.const is not None and v.const.size <= KEY_LIMIT:
        return v.const.dtype.str, v.const.shape, v.const.tobytes()
    return v.name
