"""A Keras LSTM's training while loops as one kernel each (domain ``opencann``; made by
:func:`opencann.compiler.passes.fuse_rnn_loops.fuse_lstm_loops`).

``LSTMSequenceForward`` and ``LSTMSequenceBackward`` are ``Loop`` nodes (same inputs, outputs and body) whose
body :func:`analyse` reads as one fused cell (:mod:`opencann.ops.cpu_rnn_train`) plus bookkeeping: counters
stepped by constants, a condition of ``Less``/``And`` over them, the input list read at a counter, lists set,
pushed to, popped from and accumulated into. The kernel works the bookkeeping out in Python (trip count, list
contents) and runs every step's arithmetic in one Numba call (:func:`~opencann.ops.cpu_rnn_train.forward_steps`,
:func:`~opencann.ops.cpu_rnn_train.backward_steps`): the same code as the cell kernels, so results are
bit-identical to the cell-by-cell loop. The forward kernel's pushed lists are :class:`StackedList` s, whose
elements are views of one array the gradient kernel reads directly. Whatever the fast path cannot take (a body
it does not read, no MKL, holes, other shapes or dtypes) runs as the plain ``Loop``.
"""
from __future__ import annotations

import weakref

import numpy as np

from opencann.compiler.ir import Graph, Value
from opencann.ops.blas import OneThread, sgemm_address
from opencann.ops.control import loop
from opencann.ops.cpu_rnn_train import FORWARD_ROLES, backward_steps, contiguous, forward_steps, product_shape
from opencann.ops.registry import op

DOMAIN = "opencann"
F32 = np.dtype(np.float32)
MAX_STEPS = 1 << 24
_specs: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # Plan -> its body's spec (or None)


class StackedList(list):
    """A TensorList whose elements are the views ``array[k]`` (lists are never mutated)."""

    def __init__(self, array: np.ndarray):
        super().__init__(array)
        self.array = array


# ---- reading a body

def _symbol(v: Value | None, sym: dict[int, tuple], local: set[int]) -> tuple | None:
    if v is None:
        return None
    if v.const is not None:
        return ("const", v.const)
    s = sym.get(id(v))
    return ("outer", v.name) if s is None and id(v) not in local else s


def _int_const(s: tuple | None) -> bool:
    return s is not None and s[0] == "const" and s[1].size == 1 and s[1].dtype.kind in "iu"


def _node_symbols(node, ins: list) -> list[tuple] | None:
    """The symbols of ``node``'s outputs given its inputs' (None: not bookkeeping this module reads)."""
    key, k = (node.domain, node.op), len(ins)
    old = [s is not None and s[0] == "old" for s in ins]
    if key == ("", "Add") and k == 2 and (old[0] and _int_const(ins[1]) or old[1] and _int_const(ins[0])):
        j, step = (ins[0], ins[1]) if old[0] else (ins[1], ins[0])
        return [("new", j[1], int(step[1].reshape(-1)[0]))]
    if key == ("", "Less") and k == 2 and all(s is not None and (s[0] in ("new", "old") or _int_const(s))
                                              for s in ins):
        return [("less", ins[0], ins[1])]
    if key == ("", "And") and k == 2 and all(s is not None and s[0] in ("less", "and") for s in ins):
        return [("and", ins)]
    if node.domain != DOMAIN:
        return [("push", ins[0][1], ins[1])] if node.op == "SequenceInsert" and k == 2 and old[0] else None
    return _list_symbols(node, ins, old)


def _list_symbols(node, ins: list, old: list[bool]) -> list[tuple] | None:
    k, name = len(ins), node.op
    second = ins[1] if k > 1 else None
    popped = second is not None and second[0] == "pop"
    idx = int(second[1].reshape(-1)[0]) if _int_const(second) else second if popped else None
    if name == "TensorListGetItem" and old[0] and (old[1] or idx is not None):
        return [("x", ins[0][1], ins[1][1]) if old[1] else ("read", ins[0][1], idx)]
    if name == "TensorListSetItem" and not node.attrs.get("resize_if_index_out_of_bounds", 0) and ins[2] is not None:
        if ins[0] is not None and ins[0][0] == "reserve" and popped:
            return [("one", ins[0][1], ins[1][1], ins[2])]
        if old[0] and idx is not None and ins[2][0] == "const":
            return [("zeroset", ins[0][1], idx, ins[2][1])]
        if old[0] and (old[1] or type(idx) is int):
            return [("set", ins[0][1], ins[1] if old[1] else idx, ins[2])]
    if name == "TensorListPushBackMany" and k % 2 == 0 and all(old[:k // 2]):
        return [("push", ins[i][1], ins[k // 2 + i]) for i in range(k // 2)]
    if name in ("TensorListPopBack", "TensorListPopBackMany") and k % 2 == 0 and all(old[:k // 2]):
        lists = [s[1] for s in ins[:k // 2]]
        return [("rest", j) for j in lists] + [("pop", j) for j in lists]
    if name == "TensorListReserve" and k == 1 and ins[0] is not None and ins[0][0] == "pop":
        return [("reserve", ins[0][1])]
    if name == "TensorListAddN" and k == 2:
        acc, one = (ins[0], ins[1]) if ins[1] is not None and ins[1][0] == "one" else (ins[1], ins[0])
        if acc is not None and acc[0] == "old" and one is not None and one[0] == "one":
            return [("additem", acc[1], *one[1:])]
    if name == "TensorListAddItem" and k == 4 and old[0] and all(s is not None and s[0] == "pop" for s in ins[1:3]):
        return [("additem", ins[0][1], ins[1][1], ins[2][1], ins[3])]
    if name == "LSTMCellForward":
        return [("fwd", FORWARD_ROLES[r]) for r in node.attrs["results"]]
    if name == "LSTMCellBackward":
        return [("bwd", m) for m in range(len(node.outputs))]
    return None


def analyse(body: Graph) -> dict | None:
    """What a Loop body computes, when it is one LSTM cell (forward or gradient) and bookkeeping:
    ``{"kind", "cell": (node, input symbols), "cond": [(a, b) for each Less], "outs": symbol per carried value}``;
    None for any other body."""
    sym = {id(v): ("old", j) for j, v in enumerate(body.inputs[2:])}
    local = {id(v) for v in body.values()}
    cells = []
    for node in body.nodes:
        ins = [_symbol(v, sym, local) for v in node.inputs]
        outs = _node_symbols(node, ins)
        if outs is None or len(outs) != len(node.outputs) or node.subgraphs:
            return None
        if node.op in ("LSTMCellForward", "LSTMCellBackward"):
            cells.append((node, ins))
        sym.update((id(v), s) for v, s in zip(node.outputs, outs, strict=True))
    n = len(body.inputs) - 2
    results = [_symbol(v, sym, local) for v in body.outputs]
    if len(cells) != 1 or n < 1 or len(results) != 1 + n or None in results:
        return None
    cond = _lesses(results[0])
    spec = {"kind": cells[0][0].op, "cell": cells[0], "cond": cond, "outs": results[1:]}
    ok = cond is not None and all(_leaf(spec, s) for pair in cond for s in pair)
    return spec if ok and (_forward_ok(spec) if cells[0][0].op == "LSTMCellForward" else _backward_ok(spec)) else None


def _lesses(s: tuple) -> list[tuple] | None:
    if s[0] == "less":
        return [s[1:]]
    if s[0] == "and":
        parts = [_lesses(p) for p in s[1]]
        return None if None in parts else [pair for p in parts for pair in p]
    return None


def _kind(spec: dict, j: int) -> str:
    """How carried value ``j`` changes: "same", "count", or its new value's symbol kind."""
    s = spec["outs"][j]
    return "same" if s == ("old", j) else "count" if s[0] == "new" and s[1] == j else s[0]


def _leaf(spec: dict, s: tuple) -> bool:
    """A condition operand: an integer constant, a counter's new value, an unchanged carried value."""
    return _int_const(s) or s[0] == "new" and _kind(spec, s[1]) == "count" or \
        s[0] == "old" and _kind(spec, s[1]) == "same"


def _given(spec: dict, s: tuple | None) -> bool:
    """A value every step sees the same: captured, constant, or carried unchanged."""
    return s is not None and (s[0] in ("outer", "const") or s[0] == "old" and _kind(spec, s[1]) == "same")


def _forward_ok(spec: dict) -> bool:
    node, (x, w, h, r, b, c) = spec["cell"]
    if not (x is not None and x[0] == "x" and _kind(spec, x[1]) == "same" and _kind(spec, x[2]) == "count"
            and h is not None and c is not None and h[0] == c[0] == "old" and h != c and all(
                _given(spec, s) for s in (w, r, b))):
        return False
    spec["h"], spec["c"] = h[1], c[1]
    for j, s in enumerate(spec["outs"]):
        kind = _kind(spec, j)
        if kind in ("same", "count") or s == ("fwd", "h") and j == h[1] or s == ("fwd", "c") and j == c[1]:
            continue
        if kind == "set" and s[1] == j and s[3][0] == "fwd" and (type(s[2]) is int or _kind(spec, s[2][1]) == "count"):
            continue
        if kind != "push" or s[1] != j or not _item_ok(spec, s[2]):
            return False
    return True


def _item_ok(spec: dict, s: tuple) -> bool:
    """A forward push's item: a cell result, the step's input, a counter or state, a given value."""
    return s[0] == "fwd" or s == spec["cell"][1][0] or _given(spec, s) or s[0] == "old" and (
        _kind(spec, s[1]) == "count" or s[1] in (spec["h"], spec["c"]))


def _backward_ok(spec: dict) -> bool:
    node, ins = spec["cell"]
    products, accumulate, bias = node.attrs["products"], node.attrs["accumulate"], node.attrs["bias"]
    dc_out, outs = node.attrs["dc_out"], spec["outs"]
    if len(products) != 4 or not dc_out or bias not in (-1, 1) or len(ins) != 13 + sum(accumulate) + (bias == 1):
        return False
    dh1, dh2, dc, pops, operands = ins[0], ins[1], ins[4], ins[2:4] + ins[5:9], ins[9:13]
    accs = ins[13:]
    if not (dh1 is not None and dc is not None and dh1[0] == dc[0] == "old" and dh2 is not None and dh2[0] == "read"
            and outs[dc[1]] == ("bwd", 0) and outs[dh2[1]][:3] == ("zeroset", dh2[1], dh2[2])
            and all(s is not None and s[0] == "pop" for s in pops)
            and all(s is not None and (s[0] == "pop" or _given(spec, s)) for s in operands)):
        return False
    state = outs[dh1[1]]
    if state[0] != "bwd" or not 1 <= state[1] <= 4 or accumulate[state[1] - 1]:
        return False
    targets = [1 + q for q in range(4) if accumulate[q]] + ([5] if bias == 1 else [])
    if any(s is None or s[0] != "old" or outs[s[1]] != ("bwd", m) for s, m in zip(accs, targets, strict=True)):
        return False
    spec.update(dh1=dh1[1], dc=dc[1], state=state[1] - 1)
    popped = [s[1] for s in pops + operands if s[0] == "pop"] + [s[2][1] for s in outs if s[0] == "zeroset"
                                                                 and type(s[2]) is not int]
    return all(outs[j] == ("rest", j) for j in popped) and all(_backward_ok_out(spec, j, s) for j, s in enumerate(outs))


def _backward_ok_out(spec: dict, j: int, s: tuple) -> bool:
    kind = _kind(spec, j)
    if kind in ("same", "count", "bwd", "zeroset") or s == ("rest", j):
        return True
    if kind != "additem" or s[1] != j or s[4][0] != "bwd" or not 1 <= s[4][1] <= 4:
        return False
    q = s[4][1] - 1
    return not spec["cell"][0].attrs["accumulate"][q] and q != spec["state"] and all(
        spec["outs"][p] == ("rest", p) for p in (s[2], s[3]))


# ---- running the steps

def _trips(spec: dict, m, cond, carried) -> int | None:
    """The number of iterations the Loop runs (None: not worked out here). Each condition ``a < b`` compares
    values linear in the iteration number k (counters' new values, constants): it fails first at some k."""
    trip = None if m is None else int(np.asarray(m).reshape(-1)[0])
    if cond is not None and not bool(np.asarray(cond).reshape(-1)[0]):
        return 0
    stop = trip
    for pair in spec["cond"] if cond is not None else ():
        linear = [_linear(s, carried) for s in pair]
        if None in linear:
            return None
        (a0, a1), (b0, b1) = linear
        d0, d1 = a0 - b0, a1 - b1  # the condition holds after iteration k while d0 + d1 * k < 0
        first = 1 if d0 + d1 >= 0 else -(d0 // d1) if d1 > 0 else None
        stop = first if stop is None or first is not None and first < stop else stop
    return None if stop is None or stop > MAX_STEPS else max(stop, 1 if trip is None or trip > 0 else 0)


def _linear(s: tuple, carried) -> tuple[int, int] | None:
    """A condition operand after iteration k as (value at 0, step)."""
    if s[0] == "const":
        return int(s[1].reshape(-1)[0]), 0
    v = carried[s[1]]
    if type(v) is not np.ndarray or v.size != 1 or v.dtype.kind not in "iu":
        return None
    return int(v.reshape(-1)[0]), s[2] if s[0] == "new" else 0


def _counts(spec: dict, carried, steps: int) -> dict[int, list[int]] | None:
    """Each counter's value at the start of every step and after the last."""
    out = {}
    for j, s in enumerate(spec["outs"]):
        if _kind(spec, j) == "count":
            v = carried[j]
            if type(v) is not np.ndarray or v.size != 1 or v.dtype.kind not in "iu":
                return None
            start = int(v.reshape(-1)[0])
            out[j] = [start + s[2] * k for k in range(steps + 1)]
            if max(abs(out[j][0]), abs(out[j][-1])) >= 1 << 31:
                return None
    return out


def _scalar(x) -> int:
    """A list's integer element (a 0-d array, the fast way) as an int."""
    if type(x) is int:
        return x
    return int(x) if type(x) is np.ndarray and x.ndim == 0 else int(np.asarray(x).reshape(-1)[0])


def _tensor(v, shape: tuple[int, ...]) -> np.ndarray | None:
    return contiguous(v) if type(v) is np.ndarray and v.dtype == F32 and v.shape == shape else None


def _value(spec_symbol: tuple, carried, scope):
    s = spec_symbol
    return s[1] if s[0] == "const" else scope[s[1]] if s[0] == "outer" else carried[s[1]]


@op("LSTMSequenceForward", domain=DOMAIN)
def lstm_sequence_forward(m, cond, *carried, body):
    """A forward LSTM while loop (see the module docstring)."""
    spec = _spec(body, "LSTMCellForward")
    out = _run_forward(spec, m, cond, carried, body.scope) if spec is not None and sgemm_address() else None
    return out if out is not None else loop(m, cond, *carried, body=body)


@op("LSTMSequenceBackward", domain=DOMAIN)
def lstm_sequence_backward(m, cond, *carried, body):
    """An LSTM gradient while loop (see the module docstring)."""
    spec = _spec(body, "LSTMCellBackward")
    out = _run_backward(spec, m, cond, carried, body.scope) if spec is not None and sgemm_address() else None
    return out if out is not None else loop(m, cond, *carried, body=body)


def _spec(body, kind: str) -> dict | None:
    plan = body.plan
    if plan not in _specs:
        spec = analyse(plan.graph)
        _specs[plan] = spec if spec is not None and spec["kind"] == kind else None
    return _specs[plan]


def _run_forward(spec: dict, m, cond, carried, scope) -> tuple | None:
    steps = _trips(spec, m, cond, carried)
    counts = _counts(spec, carried, steps or 0) if steps else None
    if not steps or counts is None:
        return None
    node, (xs, w, h, r, b, c) = spec["cell"]
    items = carried[xs[1]]
    index = counts[xs[2]][:steps]
    if not isinstance(items, list) or not all(0 <= i < len(items) and items[i] is not None for i in index):
        return None
    x = [items[i] for i in index]
    c0 = carried[spec["c"]]
    if type(c0) is not np.ndarray or c0.ndim != 2 or type(x[0]) is not np.ndarray or x[0].ndim != 2:
        return None
    (rows, hidden), d = c0.shape, x[0].shape[1]
    x = np.stack(x) if all(type(a) is np.ndarray and a.shape == (rows, d) for a in x) else None
    w, r, b = (_tensor(_value(s, carried, scope), shape) for s, shape in
               ((w, (d, 4 * hidden)), (r, (hidden, 4 * hidden)), (b, (4 * hidden,))))
    h0, c0 = _tensor(carried[spec["h"]], (rows, hidden)), _tensor(c0, (rows, hidden))
    if x is None or x.dtype != F32 or any(a is None for a in (w, r, b, h0, c0)) or not _sets_fit(spec, carried, counts):
        return None
    hs, cs = np.empty((steps + 1, rows, hidden), F32), np.empty((steps + 1, rows, hidden), F32)
    acts = np.empty((5, steps, rows, hidden), F32)
    hs[0], cs[0] = h0, c0
    gi, gf, gg, go = (hidden * k for k in node.attrs["gates"])
    with OneThread():
        forward_steps(sgemm_address(), x, w, r, b, hs, cs, gi, gf, gg, go, acts)
    roles = dict(zip(("i", "f", "g", "o", "tanh_c"), acts, strict=True))
    roles.update(c=cs[1:], h=hs[1:])
    seqs = {"x": x, "h": hs[:steps], "c": cs[:steps]}
    return (*(_forward_out(spec, j, s, carried, scope, counts, roles, seqs) for j, s in enumerate(spec["outs"])),)


def _sets_fit(spec: dict, carried, counts) -> bool:
    """Every list set at an index holds it (as TensorListSetItem checks)."""
    for j, s in enumerate(spec["outs"]):
        if _kind(spec, j) == "set":
            items = carried[j]
            where = [s[2]] if type(s[2]) is int else counts[s[2][1]][:-1]
            if not isinstance(items, list) or not all(0 <= i < len(items) for i in where):
                return False
        elif _kind(spec, j) == "push" and not isinstance(carried[j], list):
            return False
    return True


def _forward_out(spec, j, s, carried, scope, counts, roles, seqs):
    kind, steps = _kind(spec, j), len(seqs["x"])
    if kind == "same":
        return carried[j]
    if kind == "count":
        return np.array(counts[j][-1], carried[j].dtype)
    if kind == "fwd":
        return roles[s[1]][-1]
    if kind == "set":
        out = list(carried[j])
        for k, i in enumerate([s[2]] * steps if type(s[2]) is int else counts[s[2][1]][:-1]):
            out[i] = roles[s[3][1]][k]
        return out
    item = s[2]
    if item[0] in ("fwd", "x"):
        new = roles[item[1]] if item[0] == "fwd" else seqs["x"]
    elif item[0] == "old" and item[1] in (spec["h"], spec["c"]):
        new = seqs["h" if item[1] == spec["h"] else "c"]
    elif item[0] == "old" and _kind(spec, item[1]) == "count":
        return [*carried[j], *(np.array(v, carried[item[1]].dtype) for v in counts[item[1]][:-1])]
    else:
        return [*carried[j], *[_value(item, carried, scope)] * steps]
    return StackedList(new) if not carried[j] else [*carried[j], *new]


def _stack(items, steps: int, shape: tuple[int, ...]) -> np.ndarray | None:
    """The last ``steps`` elements of a list as one C-contiguous array (one element when they are one array)."""
    if not isinstance(items, list) or len(items) < steps:
        return None
    tail = items[len(items) - steps:]
    first = tail[0]
    if type(first) is not np.ndarray or first.dtype != F32 or first.shape != shape:
        return None
    if all(a is first for a in tail):
        return contiguous(first)[None]
    array = getattr(items, "array", None)
    if array is not None and array.flags.c_contiguous and array.shape[1:] == shape and len(array) == len(items):
        return array[len(items) - steps:]
    if not all(type(a) is np.ndarray and a.dtype == F32 and a.shape == shape for a in tail):
        return None
    return np.stack(tail)


def _popped(items, steps: int) -> list | None:
    """The elements popped from the end of a list in ``steps`` iterations, in popping order."""
    if not isinstance(items, list) or len(items) < steps or any(a is None for a in items[len(items) - steps:]):
        return None
    return items[len(items) - steps:][::-1]


def _run_backward(spec: dict, m, cond, carried, scope) -> tuple | None:
    steps = _trips(spec, m, cond, carried)
    counts = _counts(spec, carried, steps or 0) if steps else None
    if not steps or counts is None:
        return None
    node, ins = spec["cell"]
    dh1 = carried[spec["dh1"]]
    if type(dh1) is not np.ndarray or dh1.ndim != 2 or dh1.dtype != F32:
        return None
    (rows, hidden), gates = dh1.shape, 4 * dh1.shape[1]
    state = [_tensor(carried[spec["dh1"]], dh1.shape), _tensor(carried[spec["dc"]], dh1.shape)]
    roles = [_stack(carried[s[1]], steps, dh1.shape) for s in ins[2:4] + ins[5:9]]
    zeroed = {j: _zeroed(spec, j, carried, steps) for j, s in enumerate(spec["outs"]) if s[0] == "zeroset"}
    dh2 = None if None in zeroed.values() else _read_zeroed(spec, ins[1], zeroed, dh1.shape)
    operands = [_stack(carried[s[1]], steps, getattr(carried[s[1]][-1], "shape", ()))
                if s[0] == "pop" and isinstance(carried[s[1]], list) and carried[s[1]]
                else _as_stack(_value(s, carried, scope)) for s in ins[9:13]]
    if any(a is None for a in (*state, *roles, *operands, dh2)):
        return None
    ys = _product_buffers(spec, node, ins, carried, operands, rows, gates, steps)
    adds = _additems(spec, carried, steps)
    if ys is None or adds is None:
        return None
    bias = node.attrs["bias"]
    db = np.array(carried[ins[-1][1]], F32) if bias == 1 else np.empty(0, F32)
    if bias == 1 and db.shape != (gates,):
        return None
    dh1, dc = state[0].copy(), state[1].copy()
    gi, gf, gg, go = (hidden * k for k in node.attrs["gates"])
    backward_steps(sgemm_address(), steps, dh1, dc, dh2, roles, (gi, gf, gg, go), node.attrs["products"],
                   node.attrs["accumulate"], spec["state"], operands, ys, db, bias)
    results = [dc, *(dh1 if q == spec["state"] else ys[q][-1] for q in range(4)), db]
    return tuple(zeroed[j][1] if j in zeroed else _backward_out(spec, j, s, carried, counts, results, ys, adds, steps)
                 for j, s in enumerate(spec["outs"]))


def _as_stack(v) -> np.ndarray | None:
    return contiguous(v)[None] if type(v) is np.ndarray and v.dtype == F32 and v.ndim == 2 else None


def _zeroed(spec: dict, j: int, carried, steps: int) -> tuple[list, list] | None:
    """(the element read before each step's set, the final list) of a list whose element at a constant or popped
    index the body reads, then sets to a constant."""
    items, idx, zero = carried[j], spec["outs"][j][2], spec["outs"][j][3]
    where = [idx] * steps if type(idx) is int else _popped(carried[idx[1]], steps)
    if not isinstance(items, list) or where is None:
        return None
    out, seen = list(items), []
    for i in where:
        i = _scalar(i)
        if not 0 <= i < len(out):
            return None
        seen.append(out[i])
        out[i] = zero
    return seen, out


def _read_zeroed(spec: dict, read: tuple, zeroed: dict, shape: tuple[int, ...]) -> np.ndarray | None:
    """``dh2`` for every step (the read list's element, then the constant the body puts in its place: two)."""
    seen, zero = zeroed[read[1]][0], spec["outs"][read[1]][3]
    if zero.dtype != F32 or zero.shape != shape or not all(a is zero or _tensor(a, shape) is not None for a in seen):
        return None
    if all(a is zero for a in seen[1:]):
        return np.stack(seen[:2])
    return np.stack(seen)


def _product_buffers(spec, node, ins, carried, operands, rows: int, gates: int, steps: int) -> list | None:
    """:func:`backward_steps`'s product buffers: every step's where a list accumulates the product, else one."""
    collected = {s[4][1] - 1 for s in spec["outs"] if s[0] == "additem"}
    accs = iter(ins[13:])
    ys = []
    for q, (kind, acc) in enumerate(zip(node.attrs["products"], node.attrs["accumulate"], strict=True)):
        shape = product_shape(kind, operands[q][0], rows, gates)
        if shape is None:
            return None
        if acc:
            a = _tensor(carried[next(accs)[1]], shape)
            if a is None:
                return None
            ys.append(np.array(a)[None])
        else:
            ys.append(np.empty((steps if q in collected else 1, *shape), F32))
    return ys


def _additems(spec: dict, carried, steps: int) -> dict[int, list[int]] | None:
    """Per accumulated list: the index each step adds at (its length checked, as TensorListAddN does)."""
    out = {}
    for j, s in enumerate(spec["outs"]):
        if s[0] != "additem":
            continue
        counts, where = _popped(carried[s[2]], steps), _popped(carried[s[3]], steps)
        if counts is None or where is None or not isinstance(carried[j], list):
            return None
        n = len(carried[j])
        index = [_scalar(i) for i in where]
        if any(_scalar(v) != n for v in {id(v): v for v in counts}.values()) or not all(0 <= i < n for i in index):
            return None
        out[j] = index
    return out


def _backward_out(spec, j, s, carried, counts, results, ys, adds, steps: int):
    kind = _kind(spec, j)
    if kind == "same":
        return carried[j]
    if kind == "count":
        return np.array(counts[j][-1], carried[j].dtype)
    if kind == "bwd":
        return results[s[1]]
    if kind == "rest":
        return carried[j][:len(carried[j]) - steps]
    return _add_items(list(carried[j]), adds[j], ys[s[4][1] - 1])


def _add_items(out: list, index: list[int], y: np.ndarray) -> list:
    """``out`` with ``y[k]`` added at ``index[k]`` in order (a hole takes it): one NumPy sum where the indices
    differ and hold float32 arrays of y's elements' shape."""
    if len(set(index)) == len(index) and all(type(out[i]) is np.ndarray and out[i].dtype == F32
                                             and out[i].shape == y.shape[1:] for i in index):
        total = np.stack([out[i] for i in index])
        np.add(total, y, out=total)
        for k, i in enumerate(index):
            out[i] = total[k]
        return out
    for k, i in enumerate(index):
        out[i] = y[k] if out[i] is None else out[i] + y[k]
    return out
