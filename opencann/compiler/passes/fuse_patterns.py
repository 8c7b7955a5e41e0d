"""Pattern fusion for transformers and MLPs: GELU and LayerNorm subgraphs, GEMM epilogues, Add + LayerNorm.

Rules, applied in this order (each one sweep over the graph):

1. the erf GELU ``x * 0.5 * (1 + erf(x / sqrt 2))`` and the tanh one
   ``0.5 * x * (1 + tanh(sqrt(2/pi) * (x + 0.044715 x^3)))``, in any order of their products, become ``Gelu``
   (ONNX's from opset 20, ``opencann::Gelu`` before);
2. PyTorch's decomposed LayerNorm (ReduceMean, Sub, Pow, ReduceMean, Add eps, Sqrt, Div, then Mul gamma and
   Add beta) over the last axis becomes ``LayerNormalization`` (opset >= 17; ``opencann::SkipLayerNormalization``
   without a skip before);
3. a MatMul scaled by a scalar constant (attention's ``/ sqrt(d)``) becomes ``FusedMatMul(alpha)``;
4. MatMul (or a bias-less FusedMatMul) + Add of a bias row becomes ``FusedMatMul(A, B, bias)``;
5. Relu, Gelu, Tanh, Sigmoid or a last-axis Softmax after a MatMul, FusedMatMul or Gemm becomes its
   ``activation`` epilogue (a Gemm becomes ``FusedGemm``): attention's scores ``softmax(Q @ K^T / sqrt d)``
   are then one FusedMatMul (which :mod:`~opencann.compiler.passes.fuse_attention` folds into
   ``opencann::Attention`` with the products around it);
6. ``LayerNormalization(Add(a, b))`` over the last axis with equal shapes (or a skip-less
   SkipLayerNormalization of the Add) becomes ``SkipLayerNormalization`` (the sum stays available to other
   readers as its fourth output).

The fused operators and their kernels are in :mod:`opencann.ops.cpu_nn`. A rewrite keeps the last node's
outputs (so readers and graph outputs are untouched) and happens only when every intermediate value is
read inside the pattern alone. It runs after shape inference (shapes decide which rewrites are valid)
and before elementwise fusion, so that these patterns are matched first.
"""
from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

from opencann.compiler.ir import Graph, Node, TensorType, Value
from opencann.compiler.passes import const_of, scalar_of
from opencann.ops.registry import OPENCANN_DOMAIN

_ACTIVATION = {"Relu": "relu", "Tanh": "tanh", "Sigmoid": "sigmoid"}
_MATMULS = ("MatMul", "FusedMatMul", "Gemm")


class _Match:
    """The graph being rewritten: who reads each value, and the rewrites decided so far."""

    def __init__(self, graph: Graph):
        self.graph = graph
        self.readers: dict[str, list[Node]] = {}
        for n in graph.nodes:
            names = [v.name for v in n.inputs if v is not None]
            for sub in n.subgraphs.values():
                names += sub.outer_names()
            for name in names:
                self.readers.setdefault(name, []).append(n)
        self.outputs = {v.name for v in graph.outputs}
        self.removed: set[int] = set()
        self.replaced: dict[int, Node] = {}

    def producer(self, v: Value | None, *ops: str) -> Node | None:
        """``v``'s producer when it is one of ``ops`` (ONNX or opencann domain) and not already rewritten."""
        p = v.producer if v is not None else None
        if p is None or p.op not in ops or p.domain not in ("", OPENCANN_DOMAIN) or id(p) in self.removed:
            return None
        return p

    def internal(self, v: Value, pattern: list[Node]) -> bool:
        """True when ``v`` is read by ``pattern``'s nodes only (and is not a graph output)."""
        ids = {id(n) for n in pattern}
        return v.name not in self.outputs and all(id(r) in ids for r in self.readers.get(v.name, ()))

    def rewrite(self, anchor: Node, pattern: list[Node], new: Node) -> bool:
        """Replace ``pattern`` (ending at ``anchor``) by ``new`` when its intermediate values stay inside."""
        if any(id(n) in self.removed for n in pattern) or any(
                not self.internal(v, pattern) for n in pattern if n is not anchor for v in n.outputs if v.name):
            return False
        self.removed.update(id(n) for n in pattern)
        self.replaced[id(anchor)] = new
        for v in new.outputs:
            v.producer = new
        return True

    def apply(self) -> None:
        self.graph.nodes = [self.replaced.get(id(n), n) for n in self.graph.nodes
                            if id(n) not in self.removed or id(n) in self.replaced]


def fuse_patterns(graph: Graph) -> Graph:
    """Apply the rules above to ``graph`` in place; returns it."""
    for rule in RULES:
        m = _Match(graph)
        for node in list(graph.nodes):
            if id(node) not in m.removed:
                rule(m, node)
        m.apply()
    return graph


# --- helpers -------------------------------------------------------------------------------------

def _near(x: float | None, target: float) -> bool:
    return x is not None and math.isclose(x, target, rel_tol=1e-4)


def _shape(v: Value | None) -> tuple | None:
    return v.type.shape if v is not None and isinstance(v.type, TensorType) else None


def _other(node: Node, v: Value) -> Value:
    return node.inputs[1] if node.inputs[0] is v else node.inputs[0]


def _opencann(graph: Graph) -> str:
    graph.opsets.setdefault(OPENCANN_DOMAIN, 1)
    return OPENCANN_DOMAIN


def _product(m: _Match, root: Node) -> tuple[list[Value], list[Node]]:
    """The factors of the Mul tree rooted at ``root`` (inner Muls only when read by the tree alone)."""
    factors, nodes = [], [root]
    for x in root.inputs:
        p = m.producer(x, "Mul")
        if p is not None and p.domain == "" and len(m.readers.get(x.name, ())) == 1 and x.name not in m.outputs:
            inner, inner_nodes = _product(m, p)
            factors += inner
            nodes += inner_nodes
        else:
            factors.append(x)
    return factors, nodes


def _split_factors(factors: list[Value]) -> tuple[float, list[Value]]:
    """(product of the scalar constants, the other factors)."""
    scale, rest = 1.0, []
    for f in factors:
        s = scalar_of(f)
        if s is None:
            rest.append(f)
        else:
            scale *= s
    return scale, rest


# --- 1. GELU -------------------------------------------------------------------------------------

def _gelu(m: _Match, node: Node) -> None:
    if node.op != "Mul" or node.domain:
        return
    factors, nodes = _product(m, node)
    scale, rest = _split_factors(factors)
    if not _near(scale, 0.5) or len(rest) != 2 or _shape(node.outputs[0]) is None:
        return
    for x, term in (rest, rest[::-1]):
        found = _one_plus(m, term, x)
        if found is not None and _shape(x) == _shape(node.outputs[0]):
            approximate, inner = found
            gelu = Node("Gelu", [x], node.outputs, {"approximate": approximate}, name=node.name,
                        domain="" if m.graph.opsets.get("", 1) >= 20 else _opencann(m.graph))
            m.rewrite(node, nodes + inner, gelu)
            return


def _one_plus(m: _Match, term: Value, x: Value) -> tuple[str, list[Node]] | None:
    """For ``term = 1 + erf(x / sqrt 2)`` or ``1 + tanh(...)``: the GELU kind and the term's nodes."""
    add = m.producer(term, "Add")
    if add is None or add.domain or len(add.inputs) != 2:
        return None
    one = next((v for v in add.inputs if _near(scalar_of(v), 1.0)), None)
    fn = m.producer(_other(add, one), "Erf", "Tanh") if one is not None else None
    if fn is None or fn.domain:
        return None
    arg = fn.inputs[0]
    p = m.producer(arg, "Mul", "Div")
    if p is None or p.domain:
        return None
    if fn.op == "Erf":
        if p.op == "Div":
            ok = p.inputs[0] is x and _near(scalar_of(p.inputs[1]), math.sqrt(2))
        else:
            ok = x in p.inputs and _near(scalar_of(_other(p, x)), 1 / math.sqrt(2))
        return ("none", [add, fn, p]) if ok else None
    inner = _tanh_argument(m, p, x)
    return ("tanh", [add, fn, *inner]) if inner is not None else None


def _tanh_argument(m: _Match, mul: Node, x: Value) -> list[Node] | None:
    """The nodes of ``sqrt(2/pi) * (x + 0.044715 * x^3)`` rooted at ``mul``, or None."""
    if mul.op != "Mul":
        return None
    factors, nodes = _product(m, mul)
    scale, rest = _split_factors(factors)
    add = m.producer(rest[0], "Add") if len(rest) == 1 and _near(scale, math.sqrt(2 / math.pi)) else None
    if add is None or add.domain or x not in add.inputs:
        return None
    cube = m.producer(_other(add, x), "Mul")
    if cube is None or cube.domain:
        return None
    factors, cube_nodes = _product(m, cube)
    scale, rest = _split_factors(factors)
    powers = []
    for f in rest:
        pw = m.producer(f, "Pow")
        if pw is not None and pw.inputs[0] is x and _near(scalar_of(pw.inputs[1]), 3.0):
            powers.append(pw)
    if not _near(scale, 0.044715) or not (rest == [x, x, x] or len(powers) == len(rest) == 1):
        return None
    return [*nodes, add, *cube_nodes, *powers]


# --- 2. LayerNorm --------------------------------------------------------------------------------

def _last_axis_mean(m: _Match, v: Value, x: Value) -> Node | None:
    """``v = ReduceMean(x)`` over x's last axis only, keeping dims."""
    p = m.producer(v, "ReduceMean")
    if p is None or p.domain or p.inputs[0] is not x or not p.attrs.get("keepdims", 1):
        return None
    axes = p.attrs.get("axes")
    if axes is None and len(p.inputs) > 1:
        axes = const_of(p.inputs[1])
    rank = len(_shape(x) or ())
    return p if axes is not None and rank and [int(a) % rank for a in np.ravel(axes)] == [rank - 1] else None


def _layer_norm(m: _Match, node: Node) -> None:
    if node.op != "Div" or node.domain:
        return
    d, sd = node.inputs
    sub = m.producer(d, "Sub")
    sqrt = m.producer(sd, "Sqrt")
    add_eps = m.producer(sqrt.inputs[0], "Add") if sqrt is not None else None
    if sub is None or add_eps is None or sub.domain or sqrt.domain or add_eps.domain:
        return
    x = sub.inputs[0]
    mean = _last_axis_mean(m, sub.inputs[1], x)
    var = next((p for p in (m.producer(v, "ReduceMean") for v in add_eps.inputs) if p is not None), None)
    eps = scalar_of(_other(add_eps, var.outputs[0])) if var is not None else None
    square = m.producer(var.inputs[0], "Pow") if var is not None else None
    if mean is None or eps is None or square is None or square.inputs[0] is not d \
            or not _near(scalar_of(square.inputs[1]), 2.0) \
            or _last_axis_mean(m, var.outputs[0], square.outputs[0]) is None:
        return
    n = (_shape(x) or (None,))[-1]
    if not isinstance(n, int):
        return
    pattern, out = [mean, sub, square, var, add_eps, sqrt, node], node.outputs[0]
    gamma, beta = _affine(m, out, "Mul", n, pattern), None
    if gamma is not None:
        out = pattern[-1].outputs[0]
        beta = _affine(m, out, "Add", n, pattern)
        out = pattern[-1].outputs[0]
    ones = None
    if gamma is None:
        gamma = ones = Value(f"{node.name}/gamma", const=np.ones(n, x.type.dtype))
    anchor = pattern[-1]
    if m.graph.opsets.get("", 1) >= 17:
        ln = Node("LayerNormalization", [x, gamma, beta], [out], {"axis": -1, "epsilon": eps}, name=anchor.name)
    else:
        ln = Node("SkipLayerNormalization", [x, None, gamma, beta], [out], {"epsilon": eps}, name=anchor.name,
                  domain=_opencann(m.graph))
    if m.rewrite(anchor, pattern, ln) and ones is not None:
        m.graph.initializers.append(ones)


def _affine(m: _Match, v: Value, op: str, n, pattern: list[Node]) -> Value | None:
    """The per-feature parameter of the only reader of ``v`` when it is ``op(v, p)`` with p of shape (n,)."""
    readers = m.readers.get(v.name, ())
    if len(readers) != 1 or v.name in m.outputs or readers[0].op != op or readers[0].domain:
        return None
    p = _other(readers[0], v)
    if p is v or _shape(p) != (n,):
        return None
    pattern.append(readers[0])
    return p


# --- 3-5. GEMM epilogues -------------------------------------------------------------------------

def _gemm_producer(m: _Match, v: Value, *, bare: bool = False) -> Node | None:
    """The MatMul/FusedMatMul/Gemm whose only reader is ``v``'s reader, with no activation yet;
    ``bare``: also without a bias."""
    p = m.producer(v, *_MATMULS)
    if p is None or len(m.readers.get(v.name, ())) != 1 or v.name in m.outputs or len(p.outputs) != 1:
        return None
    if p.domain != (OPENCANN_DOMAIN if p.op == "FusedMatMul" else ""):
        return None
    if p.attrs.get("activation", "none") != "none" or p.attrs.get("broadcast", 1) == 0:
        return None
    if bare and (p.op == "Gemm" or (len(p.inputs) > 2 and p.inputs[2] is not None)):
        return None
    return p


def _fused_matmul(m: _Match, p: Node, outputs: list[Value], name: str, **attrs) -> Node:
    inputs = list(p.inputs) if p.op == "FusedMatMul" else [*p.inputs[:2]]
    return Node("FusedMatMul", inputs, outputs, {**p.attrs, **attrs} if p.op == "FusedMatMul" else attrs,
                name=name, domain=_opencann(m.graph))


def _matmul_scale(m: _Match, node: Node) -> None:
    if node.op not in ("Mul", "Div") or node.domain:
        return
    for v in node.inputs[:1] if node.op == "Div" else node.inputs:
        c = scalar_of(_other(node, v))
        p = _gemm_producer(m, v, bare=True)
        if p is not None and c is not None and c != 0 and _shape(v) is not None \
                and _shape(node.outputs[0]) == _shape(v):
            alpha = p.attrs.get("alpha", 1.0) * (1 / c if node.op == "Div" else c)
            m.rewrite(node, [p, node], _fused_matmul(m, p, node.outputs, p.name, alpha=alpha))
            return


def _matmul_bias(m: _Match, node: Node) -> None:
    if node.op != "Add" or node.domain or len(node.inputs) != 2:
        return
    for v in node.inputs:
        p = _gemm_producer(m, v, bare=True)
        bias, out = _other(node, v), _shape(v)
        bshape = _shape(bias)
        if p is None or bias is v or not out or bshape is None or _shape(node.outputs[0]) != out:
            continue
        if len(bshape) <= len(out) and bshape and bshape[-1] == out[-1] and all(d == 1 for d in bshape[:-1]):
            new = _fused_matmul(m, p, node.outputs, p.name)
            new.inputs = [*new.inputs[:2], bias]
            m.rewrite(node, [p, node], new)
            return


def _activation_of(m: _Match, node: Node) -> str | None:
    """The epilogue ``activation`` that ``node`` computes, if any."""
    if node.op == "Gelu" and node.domain in ("", OPENCANN_DOMAIN):
        return "gelu_tanh" if node.attrs.get("approximate", "none") == "tanh" else "gelu"
    if node.domain:
        return None
    if node.op == "Softmax":
        rank = len(_shape(node.inputs[0]) or ())
        axis = node.attrs.get("axis", -1 if m.graph.opsets.get("", 1) >= 13 else 1)
        return "softmax" if rank and axis % rank == rank - 1 else None
    return _ACTIVATION.get(node.op)


def _activation(m: _Match, node: Node) -> None:
    act = _activation_of(m, node)
    if act is None:
        return
    p = _gemm_producer(m, node.inputs[0])
    if p is None:
        return
    if p.op == "Gemm":
        attrs = {k: v for k, v in p.attrs.items() if k in ("alpha", "beta", "transA", "transB")}
        new = Node("FusedGemm", p.inputs, node.outputs, {**attrs, "activation": act}, name=p.name,
                   domain=_opencann(m.graph))
    else:
        new = _fused_matmul(m, p, node.outputs, p.name, activation=act)
    m.rewrite(node, [p, node], new)


# --- 6. Add + LayerNorm --------------------------------------------------------------------------

def _norm_params(node: Node) -> list[Value | None] | None:
    """(gamma, beta) of a LayerNorm over the last axis with only Y read, or of a skip-less SkipLayerNormalization."""
    shape = _shape(node.inputs[0]) if node.inputs else None
    if not shape or any(v.name for v in node.outputs[1:]):
        return None
    if node.op == "LayerNormalization" and not node.domain and node.attrs.get("stash_type", 1) == 1 \
            and node.attrs.get("axis", -1) in (-1, len(shape) - 1):
        return [node.inputs[1], node.inputs[2] if len(node.inputs) > 2 else None]
    if node.op == "SkipLayerNormalization" and node.domain == OPENCANN_DOMAIN and node.inputs[1] is None \
            and (len(node.inputs) < 5 or node.inputs[4] is None):
        return [node.inputs[2], node.inputs[3] if len(node.inputs) > 3 else None]
    return None


def _skip_layer_norm(m: _Match, node: Node) -> None:
    params = _norm_params(node)
    add = m.producer(node.inputs[0], "Add") if params is not None else None
    if add is None or add.domain or len(add.inputs) != 2 or any(_shape(v) != _shape(node.inputs[0])
                                                                  for v in add.inputs):
        return
    total = add.outputs[0]
    shared = total.name in m.outputs or len(m.readers.get(total.name, ())) > 1
    outputs = [node.outputs[0], Value(""), Value(""), total if shared else Value("")]
    inputs = [*add.inputs, *params]
    if shared and not all(v is None or v.const is not None for v in params):
        return  # the fused node takes the Add's place (the sum's readers may follow it): needs constant params
    sln = Node("SkipLayerNormalization", inputs, outputs, {"epsilon": node.attrs.get("epsilon", 1e-5)},
               name=node.name, domain=_opencann(m.graph))
    if not shared:
        m.rewrite(node, [add, node], sln)
        return
    m.removed.update((id(add), id(node)))
    m.replaced[id(add)] = sln
    for v in outputs:
        v.producer = sln


RULES: tuple[Callable[[_Match, Node], None], ...] = (_gelu, _layer_norm, _matmul_scale, _matmul_bias, _activation,
                                                     _skip_layer_norm)
