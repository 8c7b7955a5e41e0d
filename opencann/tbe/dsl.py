"""The TBE DSL: placeholders, elementwise primitives, broadcast and reductions composing an expression DAG.

Every constructor checks shapes, dtypes and axes at once and raises ``AclError(INVALID_PARAM)`` naming the
primitive. Nodes are immutable; ``build()`` turns a set of them into one fused kernel.
"""
from __future__ import annotations

import math
import numbers

import numpy as np

from opencann.errors import AclError, ErrorCode

DTYPES = ("float16", "float32", "float64", "int8", "uint8", "int32", "int64", "bool")
FLOATS = ("float16", "float32", "float64")
CMP_MODES = ("lt", "le", "gt", "ge", "eq", "ne")
UNARY = {"vabs": "num", "vneg": "num", "vrelu": "num", "vexp": "float", "vlog": "float", "vsqrt": "float",
         "vrsqrt": "float", "vrec": "float", "vtanh": "float", "vsigmoid": "float", "verf": "float"}
BINARY = {"vadd": "num", "vsub": "num", "vmul": "num", "vmax": "num", "vmin": "num", "vdiv": "float",
          "vpow": "float"}
SCALAR = {"vadds": "vadd", "vmuls": "vmul", "vmaxs": "vmax", "vmins": "vmin", "vdivs": "vdiv"}
REDUCE = ("reduce_sum", "reduce_max", "reduce_min", "reduce_mean", "reduce_prod")


def _fail(message: str):
    raise AclError(ErrorCode.INVALID_PARAM, f"tbe: {message}")


class Tensor:
    """One node of a TBE expression: ``op``, ``inputs``, ``shape``, ``dtype`` and op attributes (read-only)."""

    __slots__ = ("_op", "_inputs", "_shape", "_dtype", "_attrs")

    def __init__(self, op: str, inputs: tuple, shape: tuple, dtype: str, attrs: dict | None = None):
        self._op, self._inputs, self._shape, self._dtype = op, tuple(inputs), tuple(shape), dtype
        self._attrs = tuple(sorted((attrs or {}).items()))

    op = property(lambda self: self._op)
    inputs = property(lambda self: self._inputs)
    shape = property(lambda self: self._shape)
    dtype = property(lambda self: self._dtype)
    attrs = property(lambda self: dict(self._attrs))
    ndim = property(lambda self: len(self._shape))
    size = property(lambda self: math.prod(self._shape))
    name = property(lambda self: self.attrs.get("name"))

    def __repr__(self) -> str:
        return f"Tensor({self._op}, shape={self._shape}, dtype={self._dtype})"


def _dtype(dtype, where: str) -> str:
    try:
        name = np.dtype(dtype).name
    except TypeError:
        name = None
    if name not in DTYPES:
        _fail(f"{where}: dtype {dtype!r} is not supported (one of {', '.join(DTYPES)})")
    return name


def _shape(shape, where: str) -> tuple:
    items = (shape,) if isinstance(shape, numbers.Integral) else shape if isinstance(shape, tuple | list) else None
    if items is None or not all(isinstance(d, numbers.Integral) and d >= 0 for d in items):
        _fail(f"{where}: shape must be a tuple of non-negative ints, got {shape!r}")
    return tuple(int(d) for d in items)


def _tensor(x, where: str) -> Tensor:
    if not isinstance(x, Tensor):
        _fail(f"{where}: expected a tbe Tensor, got {type(x).__name__}")
    return x


def _check_kind(x: Tensor, kind: str, where: str):
    if kind == "float" and x.dtype not in FLOATS:
        _fail(f"{where}: needs a float dtype, got {x.dtype} (cast_to first)")
    if kind == "num" and x.dtype == "bool":
        _fail(f"{where}: does not take bool tensors")


def broadcast_shapes(*shapes, where: str = "broadcast") -> tuple:
    """NumPy's broadcasting rule over several shapes; INVALID_PARAM when they do not broadcast."""
    rank = max((len(s) for s in shapes), default=0)
    out = []
    for k in range(rank):
        dims = {s[k - rank + len(s)] for s in shapes if k - rank + len(s) >= 0} - {1}
        if len(dims) > 1:
            _fail(f"{where}: shapes {' and '.join(str(tuple(s)) for s in shapes)} do not broadcast")
        out.append(dims.pop() if dims else 1)
    return tuple(out)


def placeholder(shape, dtype: str = "float32", name: str | None = None) -> Tensor:
    """A kernel input of fixed shape and dtype (TBE's ``tvm.placeholder``)."""
    attrs = {"name": str(name)} if name is not None else {}
    return Tensor("placeholder", (), _shape(shape, "placeholder"), _dtype(dtype, "placeholder"), attrs)


def const(value, dtype: str = "float32") -> Tensor:
    """A scalar constant (shape ``()``), broadcast wherever it is used."""
    return _const(value, _dtype(dtype, "const"), "const")


def _const(value, dtype: str, where: str) -> Tensor:
    if isinstance(value, np.ndarray) or not isinstance(value, numbers.Real | np.bool_):
        _fail(f"{where}: scalar value must be a real number, got {type(value).__name__}")
    if dtype not in FLOATS and dtype != "bool":
        info = np.iinfo(dtype)
        if not float(value).is_integer() or not info.min <= value <= info.max:
            _fail(f"{where}: scalar {value!r} is not exact in {dtype}")
    return Tensor("const", (), (), dtype, {"value": np.dtype(dtype).type(value).item()})


def _scalar_operand(value, like: Tensor, where: str) -> Tensor:
    return value if isinstance(value, Tensor) else _const(value, like.dtype, where)


def _elementwise(op: str, operands: tuple, dtype: str, attrs: dict | None = None) -> Tensor:
    shape = broadcast_shapes(*(t.shape for t in operands), where=op)
    return Tensor(op, operands, shape, dtype, attrs)


def _unary(op: str):
    def prim(x: Tensor) -> Tensor:
        x = _tensor(x, op)
        _check_kind(x, UNARY[op], op)
        return Tensor(op, (x,), x.shape, x.dtype)
    prim.__name__ = op
    prim.__doc__ = f"Elementwise ``{op}``."
    return prim


def _binary(op: str):
    def prim(a: Tensor, b: Tensor) -> Tensor:
        a, b = _tensor(a, op), _tensor(b, op)
        if a.dtype != b.dtype:
            _fail(f"{op}: dtypes differ ({a.dtype} vs {b.dtype}); cast_to one of them first")
        _check_kind(a, BINARY[op], op)
        return _elementwise(op, (a, b), a.dtype)
    prim.__name__ = op
    prim.__doc__ = f"Elementwise ``{op}`` with NumPy broadcasting."
    return prim


def _scalar(op: str):
    base = SCALAR[op]

    def prim(x: Tensor, scalar) -> Tensor:
        x = _tensor(x, op)
        _check_kind(x, BINARY[base], op)
        return Tensor(op, (x, _const(scalar, x.dtype, op)), x.shape, x.dtype)
    prim.__name__ = op
    prim.__doc__ = f"``{base}`` of a tensor and a Python scalar."
    return prim


vabs, vneg, vrelu, vexp, vlog, vsqrt, vrsqrt, vrec, vtanh, vsigmoid, verf = (_unary(o) for o in UNARY)
vadd, vsub, vmul, vmax, vmin, vdiv, vpow = (_binary(o) for o in BINARY)
vadds, vmuls, vmaxs, vmins, vdivs = (_scalar(o) for o in SCALAR)


def vcmp(a: Tensor, b, mode: str = "lt") -> Tensor:
    """Elementwise comparison ``a <mode> b`` (b may be a scalar) giving a bool tensor."""
    a = _tensor(a, "vcmp")
    b = _scalar_operand(b, a, "vcmp")
    if mode not in CMP_MODES:
        _fail(f"vcmp: mode {mode!r} is not one of {', '.join(CMP_MODES)}")
    if a.dtype != b.dtype:
        _fail(f"vcmp: dtypes differ ({a.dtype} vs {b.dtype})")
    return _elementwise("vcmp", (a, b), "bool", {"mode": mode})


def vsel(condition: Tensor, a, b) -> Tensor:
    """``a`` where ``condition`` else ``b`` (either may be a scalar), broadcasting all three."""
    condition = _tensor(condition, "vsel")
    if condition.dtype != "bool":
        _fail(f"vsel: condition must be bool, got {condition.dtype}")
    if not isinstance(a, Tensor) and not isinstance(b, Tensor):
        _fail("vsel: at least one of the two values must be a Tensor")
    a = _scalar_operand(a, b, "vsel")
    b = _scalar_operand(b, a, "vsel")
    if a.dtype != b.dtype:
        _fail(f"vsel: value dtypes differ ({a.dtype} vs {b.dtype})")
    return _elementwise("vsel", (condition, a, b), a.dtype)


def cast_to(x: Tensor, dtype: str) -> Tensor:
    """Convert to ``dtype`` (float to int truncates toward zero, like ``ndarray.astype``)."""
    x = _tensor(x, "cast_to")
    return Tensor("cast_to", (x,), x.shape, _dtype(dtype, "cast_to"))


def broadcast(x: Tensor, shape) -> Tensor:
    """Broadcast ``x`` to ``shape`` (NumPy rules: size-1 and missing leading dims expand)."""
    x = _tensor(x, "broadcast")
    shape = _shape(shape, "broadcast")
    if len(shape) < x.ndim or broadcast_shapes(x.shape, shape, where="broadcast") != shape:
        _fail(f"broadcast: cannot broadcast {x.shape} to {shape}")
    return Tensor("broadcast", (x,), shape, x.dtype)


def _axes(axis, ndim: int, where: str) -> tuple:
    if axis is None:
        return tuple(range(ndim))
    items = [axis] if isinstance(axis, numbers.Integral) else list(axis)
    if not all(isinstance(a, numbers.Integral) for a in items):
        _fail(f"{where}: axis must be ints, got {axis!r}")
    axes = [int(a) + ndim if a < 0 else int(a) for a in items]
    if any(not 0 <= a < ndim for a in axes) or len(set(axes)) != len(axes):
        _fail(f"{where}: axis {axis!r} is out of range or repeated for rank {ndim}")
    return tuple(sorted(axes))


def _reduce(op: str):
    def prim(x: Tensor, axis=None, keepdims: bool = False) -> Tensor:
        x = _tensor(x, op)
        _check_kind(x, "float" if op == "reduce_mean" else "num", op)
        axes = _axes(axis, x.ndim, op)
        if op in ("reduce_max", "reduce_min") and any(x.shape[a] == 0 for a in axes):
            _fail(f"{op}: reduces a zero-size axis of {x.shape}, which has no identity")
        shape = tuple(1 if k in axes else d for k, d in enumerate(x.shape) if keepdims or k not in axes)
        return Tensor(op, (x,), shape, x.dtype, {"axes": axes, "keepdims": bool(keepdims)})
    prim.__name__ = op
    prim.__doc__ = f"``{op}`` over ``axis`` (int, list or None for all), optionally keeping the reduced dims."
    return prim


reduce_sum, reduce_max, reduce_min, reduce_mean, reduce_prod = (_reduce(o) for o in REDUCE)


def topo_order(outputs) -> list:
    """The nodes reachable from ``outputs``, each after its inputs (iterative, so deep chains are fine)."""
    order, seen, stack = [], set(), [(t, False) for t in reversed(list(outputs))]
    while stack:
        node, expanded = stack.pop()
        if expanded:
            order.append(node)
        elif id(node) not in seen:
            seen.add(id(node))
            stack.append((node, True))
            stack.extend((i, False) for i in reversed(node.inputs) if id(i) not in seen)
    return order
