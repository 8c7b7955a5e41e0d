"""LSTM cells in training graphs as one node each (the TF adapter runs this after the pipeline, loop bodies too).

A Keras LSTM's forward while-loop body computes its cell as MatMul x2, a fused bias add, a Split and a fused
gate group; its gradient loop body as a fused group of gate gradients, a Concat, BiasAddGrad, four MatMuls
(with Transposes of popped operands) and the Sums accumulating the weight gradients. :func:`fuse_lstm_cells`
replaces each such group by one ``opencann::LSTMCellForward`` / ``opencann::LSTMCellBackward`` node
(:mod:`opencann.ops.cpu_rnn_train`). The fused groups' bodies are recognised by what they compute: each body
output is unified with the LSTM formulas (commutative Add/Mul in either order), so any input order matches and
any other arithmetic (other activations, peepholes, clipping) is left alone. Every value the removed nodes
produced is read only inside the group, except the fused groups' outputs, which the new node produces.
:func:`fuse_lstm_loops` then turns each ``Loop`` whose body is such a cell and list bookkeeping only
(:func:`opencann.ops.cpu_rnn_loops.analyse`) into ``opencann::LSTMSequenceForward`` / ``LSTMSequenceBackward``:
the same node with a kernel that runs every step in one call.
"""
from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from opencann.compiler.ir import Graph, Node, TensorType, Value
from opencann.ops.cpu_rnn_loops import analyse
from opencann.ops.cpu_rnn_train import FORWARD_ROLES

F32 = np.dtype(np.float32)
MAX_BODY = 32  # nodes: an LSTM cell's fused bodies have 2 to 13
_COMMUTATIVE = {"Add", "Mul"}
_OPS = {("", "Sigmoid"): "Sigmoid", ("", "Tanh"): "Tanh", ("", "Mul"): "Mul", ("", "Add"): "Add", ("", "Sum"): "Add",
        ("opencann", "SigmoidGrad"): "SigmoidGrad", ("opencann", "TanhGrad"): "TanhGrad"}


def _forward_templates() -> dict[str, tuple]:
    i, f, g, o = ("Sigmoid", "zi"), ("Sigmoid", "zf"), ("Tanh", "zg"), ("Sigmoid", "zo")
    c = ("Add", ("Mul", f, "c"), ("Mul", i, g))
    tc = ("Tanh", c)
    return {"h": ("Mul", o, tc), "i": i, "f": f, "g": g, "o": o, "c": c, "tanh_c": tc}


def _backward_templates() -> dict[str, tuple]:
    dh = ("Add", "dh1", "dh2")
    dc = ("Add", "dc", ("TanhGrad", "tc", ("Mul", dh, "o")))
    return {"di": ("SigmoidGrad", "i", ("Mul", dc, "g")), "df": ("SigmoidGrad", "f", ("Mul", dc, "c")),
            "dg": ("TanhGrad", "g", ("Mul", dc, "i")), "do": ("SigmoidGrad", "o", ("Mul", dh, "tc")),
            "dc": ("Mul", dc, "f")}


FORWARD, BACKWARD = _forward_templates(), _backward_templates()
BACKWARD_VARS = ("dh1", "dh2", "tc", "o", "dc", "c", "f", "g", "i")  # LSTMCellBackward's first inputs
GATES = ("i", "f", "g", "o")


def fuse_lstm_cells(graph: Graph) -> Graph:
    """Fuse the LSTM cells (and cell gradients) of ``graph`` and of its subgraphs, in place; returns it."""
    for node in graph.nodes:
        for body in node.subgraphs.values():
            if not (node.op == "FusedElementwise" and node.domain == "opencann"):
                fuse_lstm_cells(body)
    changed = False
    for node in list(graph.nodes):
        if node.op == "FusedElementwise" and node.domain == "opencann" and node in graph.nodes:
            changed |= _fuse_forward(graph, node) or _fuse_backward(graph, node)
    if changed:
        graph.toposort()
    return fuse_lstm_loops(graph)


def fuse_lstm_loops(graph: Graph) -> Graph:
    """The ``Loop`` nodes of ``graph`` whose bodies are a fused LSTM cell (or its gradient) and bookkeeping become
    ``opencann::LSTMSequenceForward`` / ``LSTMSequenceBackward`` nodes (same inputs, outputs and body), in place."""
    for node in graph.nodes:
        spec = analyse(node.attrs["body"]) if node.op == "Loop" and not node.domain and "body" in node.attrs else None
        if spec is not None:
            node.op = "LSTMSequenceForward" if spec["kind"] == "LSTMCellForward" else "LSTMSequenceBackward"
            node.domain = "opencann"
    return graph


# ---- matching a fused body against the formulas

def _exprs(body: Graph) -> list[tuple] | None:
    """The body's outputs as expression trees over its inputs (leaves ``("in", k)``; shared subtrees are shared
    tuples, built once); None for a body larger than any LSTM cell's."""
    if len(body.nodes) > MAX_BODY:
        return None
    memo: dict[int, tuple] = {id(v): ("in", k) for k, v in enumerate(body.inputs)}
    for node in body.nodes:
        for v in node.outputs:
            memo[id(v)] = ((_OPS.get((node.domain, node.op), "?"),
                            *(memo.get(id(x), ("opaque",)) for x in node.inputs)) if len(node.outputs) == 1
                           else ("opaque",))
    return [memo.get(id(v), ("opaque",)) for v in body.outputs]


def _unify(template, expr: tuple, bind: dict[str, int]) -> Iterator[dict[str, int]]:
    """Bindings (template variable -> body input) extending ``bind`` under which ``template`` is ``expr``."""
    if isinstance(template, str):
        if expr[0] != "in":
            return
        if bind.get(template, expr[1]) == expr[1] and (template in bind or expr[1] not in bind.values()):
            yield {**bind, template: expr[1]}
        return
    if expr[0] != template[0] or len(expr) != len(template):
        return
    orders = [template[1:]]
    if template[0] in _COMMUTATIVE and len(template) == 3:
        orders.append(template[:0:-1])
    for args in orders:
        yield from _unify_all(list(args), list(expr[1:]), bind)


def _unify_all(templates: list, exprs: list[tuple], bind: dict[str, int]) -> Iterator[dict[str, int]]:
    if not templates:
        yield bind
        return
    for b in _unify(templates[0], exprs[0], bind):
        yield from _unify_all(templates[1:], exprs[1:], b)


def _roles(body: Graph, templates: dict[str, tuple], first: str) -> tuple[dict[str, int], list[str]] | None:
    """(variable bindings, the role of each body output) when every output is one of ``templates`` and one of
    them is ``first`` (whose match binds every variable)."""
    exprs = _exprs(body)
    for e in exprs or ():
        for bind in _unify(templates[first], e, {}):
            roles = [next((r for r, t in templates.items() if next(_unify(t, x, bind), None) == bind), None)
                     for x in exprs]
            if None not in roles and len(set(roles)) == len(roles):
                return bind, roles
    return None


def _backward_roles(body: Graph) -> tuple[dict[str, int], list[str]] | None:
    """As :func:`_roles` for the gradient, whose variables no single output binds: the four gate gradients are
    unified in turn."""
    exprs = _exprs(body) or []

    def search(gates: list[str], bind: dict[str, int]) -> dict[str, int] | None:
        if not gates:
            return bind
        for e in exprs:
            for b in _unify(BACKWARD["d" + gates[0]], e, bind):
                found = search(gates[1:], b)
                if found is not None:
                    return found
        return None

    bind = search(list(GATES), {})
    if bind is None or set(bind) != set(BACKWARD_VARS):
        return None
    roles = [next((r for r, t in BACKWARD.items() if next(_unify(t, x, bind), None) == bind), None) for x in exprs]
    return (bind, roles) if None not in roles and len(set(roles)) == len(roles) else None


# ---- the graph around the fused bodies

def _users(graph: Graph) -> dict[int, list[Node]]:
    users: dict[int, list[Node]] = {}
    for n in graph.nodes:
        for v in n.inputs:
            if v is not None:
                users.setdefault(id(v), []).append(n)
    return users


def _only(graph: Graph, users: dict[int, list[Node]], v: Value, node: Node) -> bool:
    """``v`` is read by ``node`` alone (once) and is no output of ``graph``."""
    return [id(u) for u in users.get(id(v), [])] == [id(node)] and all(o is not v for o in graph.outputs)


def _f32(v: Value | None, rank: int) -> bool:
    t = getattr(v, "type", None)
    return isinstance(t, TensorType) and t.is_static and t.dtype == F32 and len(t.shape) == rank


def _float(v: Value | None) -> bool:
    """An intermediate of float32 inputs: a float32 tensor of any shape, or of a type not inferred."""
    t = getattr(v, "type", False)
    return t is None or isinstance(t, TensorType) and t.dtype == F32


def _producer(v: Value | None, op: str, domain: str = "") -> Node | None:
    node = getattr(v, "producer", None)
    return node if node is not None and node.op == op and node.domain == domain else None


def _replace(graph: Graph, removed: list[Node], fused: Node) -> None:
    gone = {id(n) for n in removed}
    last = max(i for i, n in enumerate(graph.nodes) if id(n) in gone)
    graph.nodes = [fused if i == last else n for i, n in enumerate(graph.nodes) if id(n) not in gone or i == last]


def _fuse_forward(graph: Graph, gates: Node) -> bool:
    found = _roles(gates.attrs["body"], FORWARD, "h")
    users = _users(graph)
    if found is None or not all(_float(v) for v in gates.outputs):
        return False
    bind, roles = found
    split = _producer(gates.inputs[bind["zi"]], "Split")
    if split is None or len(split.outputs) != 4 or len(split.inputs) > 1 and split.inputs[1] is not None \
            or split.attrs.get("axis", 0) not in (1, -1) or not _f32(split.inputs[0], 2):
        return False
    index = {id(v): k for k, v in enumerate(split.outputs)}
    zs = [gates.inputs[bind["z" + g]] for g in GATES]
    if not all(id(z) in index and _only(graph, users, z, gates) for z in zs) or len({id(z) for z in zs}) != 4:
        return False
    add = _producer(split.inputs[0], "FusedElementwise", "opencann")
    if add is None or not _only(graph, users, split.inputs[0], split):
        return False
    terms = _bias_add(graph, users, add)
    if terms is None:
        return False
    (m1, m2), bias = terms
    inputs = [*m1.inputs, *m2.inputs, bias, gates.inputs[bind["c"]]]
    if not _fits(*inputs):
        return False
    fused = Node("LSTMCellForward", inputs, gates.outputs,
                 {"gates": [index[id(z)] for z in zs], "results": [FORWARD_ROLES.index(r) for r in roles]},
                 name=f"{gates.name}/lstm_cell", domain="opencann")
    _replace(graph, [m1, m2, add, split, gates], fused)
    return True


def _fits(x: Value, w: Value, h: Value, r: Value, b: Value, c: Value) -> bool:
    """The cell's operands are float32 of static shapes that make ``x @ w + h @ r + b`` the 4 gates of ``c``."""
    if not (all(_f32(v, 2) for v in (x, w, h, r, c)) and _f32(b, 1)):
        return False
    (rows, hidden), gates = c.type.shape, b.type.shape[0]
    return (gates == 4 * hidden and x.type.shape[0] == h.type.shape[0] == rows and w.type.shape[1] == gates
            and r.type.shape[1] == gates and x.type.shape[1] == w.type.shape[0] and h.type.shape[1] == r.type.shape[0])


def _bias_add(graph: Graph, users: dict[int, list[Node]], add: Node) -> tuple[tuple[Node, Node], Value] | None:
    """((the two MatMuls, the bias) when ``add`` computes ``MatMul + MatMul + bias`` from 2-D float32 products
    read nowhere else and a 1-D bias."""
    exprs = _exprs(add.attrs["body"])
    if exprs is None or len(exprs) != 1 or len(add.inputs) != 3:
        return None
    bind = next(_unify(("Add", ("Add", "m1", "m2"), "b"), exprs[0], {}), None)
    if bind is None:
        return None
    mats = [_producer(add.inputs[bind[k]], "MatMul") for k in ("m1", "m2")]
    if None in mats or not all(_f32(v, 2) for m in mats for v in m.inputs) or \
            not all(_only(graph, users, m.outputs[0], add) for m in mats) or not _f32(add.inputs[bind["b"]], 1):
        return None
    return (mats[0], mats[1]), add.inputs[bind["b"]]


def _fuse_backward(graph: Graph, grads: Node) -> bool:
    found = _backward_roles(grads.attrs["body"])
    users = _users(graph)
    if found is None or not all(_f32(v, 2) for v in grads.inputs) or not all(_float(v) for v in grads.outputs) \
            or len({v.type.shape for v in grads.inputs}) != 1:
        return False
    bind, roles = found
    by_role = dict(zip(roles, grads.outputs, strict=True))
    readers = users.get(id(by_role["di"]), [])
    concat = readers[0] if len(readers) == 1 and readers[0].op == "Concat" and not readers[0].domain else None
    if concat is None or concat.attrs.get("axis") not in (1, -1) or len(concat.inputs) != 4 or \
            not all(_only(graph, users, by_role["d" + g], concat) for g in GATES):
        return False
    dz = concat.outputs[0]
    readers = users.get(id(dz), [])
    mats = [u for u in readers if u.op == "MatMul" and not u.domain]
    biases = [u for u in readers if u.op == "BiasAddGrad" and u.domain == "opencann" and _float(u.outputs[0])]
    steps = [_product(graph, users, m, dz) for m in mats]
    if not mats or None in steps or len(biases) > 1 or len(mats) + len(biases) != len(readers) or \
            any(v is dz for v in graph.outputs):
        return False
    removed, operands, accumulators = [grads, concat], [], []
    outputs, accumulate = [by_role["dc"]] if "dc" in by_role else [], []
    for nodes, operand, _, result in steps + [(biases, None, None, b.outputs[0]) for b in biases]:
        total = _accumulation(graph, users, result)
        removed += nodes + ([total[0]] if total else [])
        operands += [operand] if operand is not None else []
        accumulators += [total[1]] if total else []
        accumulate.append(int(total is not None))
        outputs.append(total[0].outputs[0] if total else result)
    fused = Node("LSTMCellBackward", [grads.inputs[bind[v]] for v in BACKWARD_VARS] + operands + accumulators,
                 outputs, {"gates": [concat.inputs.index(by_role["d" + g]) for g in GATES],
                           "products": [kind for _, _, kind, _ in steps], "accumulate": accumulate[:len(mats)],
                           "bias": accumulate[-1] if biases else -1, "dc_out": int("dc" in by_role)},
                 name=f"{grads.name}/lstm_cell_grad", domain="opencann")
    _replace(graph, removed, fused)
    return True


def _product(graph: Graph, users: dict[int, list[Node]], mm: Node, dz: Value) -> tuple | None:
    """([the nodes], P, kind, result) for a MatMul of ``dz`` by ``P`` or by a Transpose of ``P`` read nowhere
    else (kinds as LSTMCellBackward's ``products``)."""
    a, b = mm.inputs
    if (a is dz) == (b is dz):
        return None
    left = a is dz
    other = b if left else a
    t = _producer(other, "Transpose")
    transposed = t is not None and _only(graph, users, other, mm) and list(t.attrs.get("perm") or [1, 0]) == [1, 0]
    operand = t.inputs[0] if transposed else other
    if not (_f32(operand, 2) and _float(mm.outputs[0])):
        return None
    kind = {(True, True): 0, (False, True): 1, (True, False): 2, (False, False): 3}[(left, transposed)]
    return ([t, mm] if transposed else [mm]), operand, kind, mm.outputs[0]


def _accumulation(graph: Graph, users: dict[int, list[Node]], result: Value) -> tuple[Node, Value] | None:
    """(the Sum/Add, the other term) when ``result`` is only added to a value of its own shape."""
    readers = users.get(id(result), [])
    if len(readers) != 1 or readers[0].op not in ("Sum", "Add") or readers[0].domain or \
            len(readers[0].inputs) != 2 or not _only(graph, users, result, readers[0]):
        return None
    node = readers[0]
    other = node.inputs[1] if node.inputs[0] is result else node.inputs[0]
    if other is result or not _float(other) or not _float(node.outputs[0]):
        return None
    return node, other
