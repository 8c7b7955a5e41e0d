"""The fused-elementwise operator: an IR subgraph of elementwise ops (and reductions) run as one TBE kernel.

``opencann::FusedElementwise`` (made by :mod:`opencann.compiler.passes.fuse_elementwise`) carries its group
of ONNX operators as the graph attribute ``body``. Its kernel translates the body into TBE DSL calls
(:data:`TABLE`: one emitter per ONNX operator; size-1 initializers of the body become ``tbe.const``),
builds the kernel for the concrete input shapes and dtypes on first call (cached; dynamic shapes build
once per shape seen) and runs it. :func:`fusible` is the test the pass applies: only operators this
module can translate, with the attributes and dtypes it supports, are ever fused.
"""
from __future__ import annotations

import threading
import time
import weakref
from collections.abc import Callable

import numpy as np
from onnx import TensorProto

from opencann.compiler import dtypes
from opencann.compiler.ir import Graph, Node, TensorType
from opencann.errors import AclError, ErrorCode
from opencann.ops.registry import op

DOMAIN = "opencann"
OP = "FusedElementwise"
VALUE_DTYPES = frozenset(np.dtype(t) for t in ("float16", "float32", "float64", "bool"))
CAST_TARGETS = frozenset({TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.DOUBLE})
BUILDS: list[tuple[str, int, float]] = []  # (kernel key, body nodes, seconds to build and compile) per build


def _tbe():
    from opencann import tbe

    return tbe


# ---- emitters: (node, inputs as tbe Tensors or None, constant inputs as arrays or None) -> outputs
Emit = Callable[[Node, list, list], list]


def _unary(prim: str) -> Emit:
    return lambda node, x, c: [getattr(_tbe(), prim)(x[0])]


def _binary(prim: str) -> Emit:
    return lambda node, x, c: [getattr(_tbe(), prim)(x[0], x[1])]


def _variadic(prim: str) -> Emit:
    def emit(node, x, c):
        out = x[0]
        for y in x[1:]:
            out = getattr(_tbe(), prim)(out, y)
        return [out]

    return emit


def _compare(mode: str) -> Emit:
    return lambda node, x, c: [_tbe().vcmp(x[0], x[1], mode)]


def _pow(node, x, c):
    tbe = _tbe()
    if c[1] is not None:
        e = float(c[1].reshape(()))
        shape = _out_shape(x[0].shape, c[1].shape)
        out = tbe.vmul(x[0], x[0]) if e == 2.0 else tbe.vpow(x[0], tbe.const(e, x[0].dtype))
        return [tbe.broadcast(out, shape) if out.shape != shape else out]
    y = x[1] if x[1].dtype == x[0].dtype else tbe.cast_to(x[1], x[0].dtype)
    return [tbe.vpow(x[0], y)]


def _out_shape(a: tuple, b: tuple) -> tuple:
    from opencann.tbe.dsl import broadcast_shapes

    return broadcast_shapes(a, b)


def _leaky_relu(node, x, c):
    tbe = _tbe()
    alpha = float(node.attrs.get("alpha", 0.01))
    return [tbe.vsel(tbe.vcmp(x[0], 0.0, "lt"), tbe.vmuls(x[0], alpha), x[0])]


def _clip(node, x, c):
    tbe = _tbe()
    lo, hi = (node.attrs.get("min"), node.attrs.get("max")) if len(node.inputs) == 1 and node.attrs else (None, None)
    if len(c) > 1 and c[1] is not None:
        lo = float(c[1].reshape(()))
    if len(c) > 2 and c[2] is not None:
        hi = float(c[2].reshape(()))
    out = x[0]
    out = tbe.vmaxs(out, lo) if lo is not None else out
    return [tbe.vmins(out, hi) if hi is not None else out]


def _where(node, x, c):
    return [_tbe().vsel(x[0], x[1], x[2])]


def _cast(node, x, c):
    return [_tbe().cast_to(x[0], dtypes.from_onnx(node.attrs["to"]).name)]


def _identity(node, x, c):
    return [x[0]]


def _softplus(node, x, c):
    tbe = _tbe()
    return [tbe.vadd(tbe.vrelu(x[0]), tbe.vlog(tbe.vadds(tbe.vexp(tbe.vneg(tbe.vabs(x[0]))), 1.0)))]  # no overflow


def _hard_sigmoid(node, x, c):
    tbe = _tbe()
    alpha, beta = float(node.attrs.get("alpha", 0.2)), float(node.attrs.get("beta", 0.5))
    return [tbe.vmins(tbe.vmaxs(tbe.vadds(tbe.vmuls(x[0], alpha), beta), 0.0), 1.0)]


def _gelu(node, x, c):
    tbe = _tbe()
    if node.attrs.get("approximate", "none") == "tanh":
        cube = tbe.vmul(tbe.vmul(x[0], x[0]), x[0])
        inner = tbe.vmuls(tbe.vadd(x[0], tbe.vmuls(cube, 0.044715)), float(np.sqrt(2.0 / np.pi)))
        return [tbe.vmul(tbe.vmuls(x[0], 0.5), tbe.vadds(tbe.vtanh(inner), 1.0))]
    return [tbe.vmul(tbe.vmuls(x[0], 0.5), tbe.vadds(tbe.verf(tbe.vmuls(x[0], float(1 / np.sqrt(2.0)))), 1.0))]


def _sigmoid_grad(node, x, c):
    """TensorFlow's SigmoidGrad(y, dy) = dy * y * (1 - y), in its kernel's order."""
    tbe = _tbe()
    return [tbe.vmul(tbe.vmul(x[1], x[0]), tbe.vsub(tbe.const(1.0, x[0].dtype), x[0]))]


def _tanh_grad(node, x, c):
    """TensorFlow's TanhGrad(y, dy) = dy * (1 - y * y)."""
    tbe = _tbe()
    return [tbe.vmul(x[1], tbe.vsub(tbe.const(1.0, x[0].dtype), tbe.vmul(x[0], x[0])))]


def _relu_grad(node, x, c):
    """TensorFlow's ReluGrad(dy, y) = dy where y > 0 else 0."""
    tbe = _tbe()
    return [tbe.vsel(tbe.vcmp(x[1], tbe.const(0.0, x[1].dtype), "gt"), x[0], tbe.const(0.0, x[0].dtype))]


def _tile(node, x, c):
    """A Tile that only repeats size-1 axes: a broadcast, folded into the consumers' index expressions."""
    return [_tbe().broadcast(x[0], tuple(d * int(m) for d, m in zip(x[0].shape, c[1].reshape(-1))))]


def _reduce(prim: str) -> Emit:
    def emit(node, x, c):
        axes = _reduce_axes(node, c)
        return [getattr(_tbe(), prim)(x[0], axis=axes, keepdims=bool(node.attrs.get("keepdims", 1)))]

    return emit


def _reduce_axes(node: Node, c: list) -> list[int] | None:
    """The reduced axes (None: all) of a Reduce* node, from its ``axes`` attribute or constant input."""
    if len(node.inputs) > 1 and node.inputs[1] is not None:
        axes = [int(a) for a in np.asarray(c[1]).reshape(-1)]
    else:
        axes = list(node.attrs.get("axes", []))
    return axes or None


TABLE: dict[str, Emit] = {
    "Add": _binary("vadd"), "Sub": _binary("vsub"), "Mul": _binary("vmul"), "Div": _binary("vdiv"),
    "Max": _variadic("vmax"), "Min": _variadic("vmin"), "Sum": _variadic("vadd"),
    "Abs": _unary("vabs"), "Neg": _unary("vneg"), "Exp": _unary("vexp"), "Log": _unary("vlog"),
    "Sqrt": _unary("vsqrt"), "Reciprocal": _unary("vrec"), "Relu": _unary("vrelu"), "Tanh": _unary("vtanh"),
    "Sigmoid": _unary("vsigmoid"), "Erf": _unary("verf"), "Pow": _pow, "LeakyRelu": _leaky_relu,
    "Clip": _clip, "Where": _where, "Less": _compare("lt"), "LessOrEqual": _compare("le"),
    "Greater": _compare("gt"), "GreaterOrEqual": _compare("ge"), "Equal": _compare("eq"), "Cast": _cast,
    "Identity": _identity, "Tile": _tile,
    "Softplus": _softplus, "HardSigmoid": _hard_sigmoid, "Gelu": _gelu,
    "ReduceSum": _reduce("reduce_sum"), "ReduceMean": _reduce("reduce_mean"), "ReduceMax": _reduce("reduce_max"),
    "ReduceMin": _reduce("reduce_min"), "ReduceProd": _reduce("reduce_prod"),
}
DOMAIN_TABLE: dict[tuple[str, str], Emit] = {  # operators of other domains (TF gradients), same-dtype inputs
    (DOMAIN, "SigmoidGrad"): _sigmoid_grad, (DOMAIN, "TanhGrad"): _tanh_grad, (DOMAIN, "ReluGrad"): _relu_grad,
}
REDUCTIONS = frozenset(k for k in TABLE if k.startswith("Reduce"))
_CONST_INPUTS = {"Clip": (1, 2), "ReduceSum": (1,), "ReduceMean": (1,), "ReduceMax": (1,), "ReduceMin": (1,),
                 "ReduceProd": (1,), "Tile": (1,)}  # inputs that must be constants


def fusible(node: Node) -> bool:
    """Whether the TBE translation supports ``node`` as it is (operator, attributes, dtypes, known ranks)."""
    if _emitter(node) is None or node.subgraphs or len(node.outputs) != 1:
        return False
    consts = const_inputs(node)
    if any(i < len(node.inputs) and node.inputs[i] is not None and node.inputs[i].const is None for i in consts):
        return False
    data = [v for i, v in enumerate(node.inputs) if v is not None and i not in consts]
    return all(isinstance(v.type, TensorType) and v.type.shape is not None and v.type.dtype in VALUE_DTYPES
               for v in (*data, *node.outputs)) and _attrs_ok(node)


def refine(node: Node) -> None:
    """Give an operator of :data:`DOMAIN_TABLE` (TensorFlow's gradients: no shape inference of their own) whose
    output shape is unknown the broadcast of its inputs' shapes, when those are known; in place."""
    out = node.outputs[0].type if len(node.outputs) == 1 else None
    if (node.domain, node.op) not in DOMAIN_TABLE or not isinstance(out, TensorType) or out.is_static:
        return
    shapes = [v.type.shape if v is not None and isinstance(v.type, TensorType) else None for v in node.inputs]
    if shapes and all(s is not None and all(isinstance(d, int) for d in s) for s in shapes):
        node.outputs[0].type = TensorType(out.dtype, _out_shape(*shapes))


def _emitter(node: Node) -> Emit | None:
    return DOMAIN_TABLE.get((node.domain, node.op)) if node.domain else TABLE.get(node.op)


def _attrs_ok(node: Node) -> bool:
    a = node.attrs
    if node.domain:
        return len({v.type.dtype for v in (*node.inputs, *node.outputs)}) == 1
    if node.op == "Cast":
        return a.get("to") in CAST_TARGETS
    if node.op in REDUCTIONS:
        no_axes = _reduce_axes(node, [None, *(v.const if v is not None else None for v in node.inputs[1:])]) is None
        return not (a.get("noop_with_empty_axes", 0) and no_axes) and node.inputs[0].type.dtype.kind == "f"
    if node.op == "Pow":
        return node.inputs[1].const is None or node.inputs[1].const.size == 1
    if node.op == "Tile":
        shape, reps = node.inputs[0].type.shape, node.inputs[1].const.reshape(-1)
        return len(node.inputs) == 2 and len(reps) == len(shape) and all(m == 1 or d == 1 for d, m in zip(shape, reps))
    if node.op == "Gelu":
        return a.get("approximate", "none") in ("none", "tanh")
    return node.op != "Where" or node.inputs[0].type.dtype == np.dtype(bool)


# ---- the operator
class FusedKernel:
    """The TBE kernels built for one body graph (held weakly), one per input signature."""

    def __init__(self, body: Graph):
        self.body = weakref.ref(body)
        self.kernels: dict[tuple, object] = {}
        self.lock = threading.Lock()

    def __call__(self, *arrays: np.ndarray, empty: Callable = np.empty):
        """Run on ``arrays``; ``empty(shape, dtype)`` allocates the outputs of the compiled fast path."""
        key = tuple([(a.shape, a.dtype) for a in arrays])  # dtype objects: hashing their .str costs ~1 us each
        entry = self.kernels.get(key)
        if entry is None:
            with self.lock:
                entry = self.kernels.get(key) or self._build(arrays, key)
        kernel, compiled, out_types = entry
        if compiled is None:
            return kernel(*arrays)
        if not all(a.flags.c_contiguous for a in arrays):  # views (a Split's columns): copies, still the fast path
            arrays = [a if a.flags.c_contiguous else np.ascontiguousarray(a) for a in arrays]
        outs = [empty(shape, dtype) for shape, dtype in out_types]
        compiled(*arrays, *outs)
        return outs[0] if len(outs) == 1 else tuple(outs)

    def _build(self, arrays, key):
        tbe = _tbe()
        start = time.perf_counter()
        holders = [tbe.placeholder(a.shape, a.dtype.name, name=f"x{i}") for i, a in enumerate(arrays)]
        body = self.body()
        outs = translate(body, holders)
        kernel = tbe.build(outs, name="fused_elementwise", inputs=holders, device="cpu")
        result = kernel(*arrays)  # Numba compiles on the first call
        results = result if isinstance(result, tuple) else (result,)
        self.kernels[key] = (kernel, _direct(kernel, (*arrays, *results)), [(r.shape, r.dtype) for r in results])
        BUILDS.append((kernel.key, len(body.nodes), time.perf_counter() - start))
        return self.kernels[key]


def _direct(kernel, arrays) -> Callable | None:
    """The kernel's compiled function when it can be called straight on C-contiguous ``arrays`` (inputs, then
    outputs): every one of rank >= 1 and in a dtype the CPU code computes in (not float16, which it widens).
    This skips the checks and conversions of ``Kernel.__call__`` (~20 us a call); else None."""
    plain = (np.dtype(np.float32), np.dtype(np.float64), np.dtype(bool))
    if all(a.ndim and a.dtype in plain for a in arrays):
        return kernel.launch
    return None


def translate(body: Graph, holders: list) -> list:
    """The body's outputs as TBE expressions over ``holders`` (one per body input)."""
    tbe = _tbe()
    env = {v.name: h for v, h in zip(body.inputs, holders, strict=True)}
    consts = {v.name: v.const for v in body.initializers}
    for node in body.nodes:
        cs = [consts.get(v.name) if v is not None else None for v in node.inputs]
        ins = [None if v is None else env[v.name] if c is None else _const(c, i, node)
               for i, (v, c) in enumerate(zip(node.inputs, cs, strict=True))]
        for v, t in zip(node.outputs, _emitter(node)(node, ins, cs), strict=True):
            env[v.name] = t
    outs = [env[v.name] for v in body.outputs]
    return [tbe.cast_to(t, t.dtype) if t.op in ("placeholder", "const", "broadcast") else t for t in outs]


def _const(value: np.ndarray, i: int, node: Node):
    """A size-1 constant as a tbe.const of its shape; None where the emitter reads it as an array."""
    if i in const_inputs(node):
        return None
    tbe = _tbe()
    c = tbe.const(value.reshape(()).item(), value.dtype.name)
    return tbe.broadcast(c, value.shape) if value.shape else c


def const_inputs(node: Node) -> tuple[int, ...]:
    """Positions of ``node``'s inputs the translation reads as constant arrays (axes, bounds, exponents)."""
    pow_const = node.op == "Pow" and len(node.inputs) > 1 and node.inputs[1].const is not None
    return (1,) if pow_const else _CONST_INPUTS.get(node.op, ())


_kernels: dict[int, FusedKernel] = {}  # id(body) -> its kernels, dropped when the body graph is collected
_kernels_lock = threading.Lock()


def kernel_for(body: Graph) -> FusedKernel:
    """The kernels of one body graph (they live as long as the graph)."""
    kernel = _kernels.get(id(body))
    if kernel is None or kernel.body() is not body:
        with _kernels_lock:
            kernel = _kernels.get(id(body))
            if kernel is None or kernel.body() is not body:
                kernel = _kernels[id(body)] = FusedKernel(body)
                weakref.finalize(body, _kernels.pop, id(body), None)
    return kernel


def _infer(node: Node) -> list[TensorType | None]:
    """Output types: the body's, re-inferred from the node's input types."""
    from opencann.compiler.passes.shape_inference import infer_shapes

    body = node.attrs.get("body")
    if not isinstance(body, Graph) or len(body.inputs) != len(node.inputs):
        raise AclError(ErrorCode.OP_ATTR_NOT_MATCH, f"node {node.label}: 'body' must be a graph with one input "
                       "per node input")
    for inner, outer in zip(body.inputs, node.inputs, strict=True):
        inner.type = outer.type if outer is not None else None
    for n in body.nodes:
        for v in n.outputs:
            v.type = None
    infer_shapes(body)
    return [v.type for v in body.outputs]


@op(OP, domain=DOMAIN, infer=_infer, graph_data=True)
def fused_elementwise(*inputs: np.ndarray, body: Graph):
    """Run the ``body`` subgraph as one TBE kernel."""
    return kernel_for(body)(*[x if type(x) is np.ndarray else np.asarray(x) for x in inputs])

