"""Embedding folding: an embedding lookup feeding a plain LSTM becomes one ``opencann::EmbeddingLSTM``.

Matched (as PyTorch exports ``nn.Embedding`` -> ``nn.LSTM``, batch-first or not)::

    LSTM(Gather(E, tokens) [-> Transpose perm=[1, 0, 2]], W, R, B?, , initial_h?, initial_c?)

with constant float32 ``E`` (vocab x d), ``W``, ``R`` and ``B``, rank-2 integer ``tokens``, one forward direction,
the default activations, and no clip, peepholes, sequence lengths, ``input_forget`` or ``layout``. Each step's input
projection ``x @ W^T + Wb + Rb`` is then a row of ``table = E @ W^T + Wb + Rb`` (vocab x 4*hidden, computed once in
float64 and rounded): the kernel reads rows instead of running the input GEMM, and the Gather and Transpose go. Only
when the table stays under ``MAX_TABLE_BYTES`` and the lookup's results are read by the LSTM alone. An LSTM output Y
that nothing reads becomes an empty one (``sequence=0``: the kernel skips writing every step's hidden state); a final
state Y_h read only by a ``Gather`` of direction 0 (``h[-1]`` in PyTorch), Y_c unread, is output as that Gather's
[batch, hidden] result (``squeeze=1``), and the Gather goes too.
"""
from __future__ import annotations

import numpy as np

from opencann.compiler.ir import Graph, Node, TensorType, Value
from opencann.compiler.passes import const_of, readers_of
from opencann.compiler.passes.dead_code import eliminate_dead_code
from opencann.ops.registry import OPENCANN_DOMAIN

MAX_TABLE_BYTES = 16 << 20
F32 = np.dtype(np.float32)
_DEFAULT_ACTIVATIONS = (None, ["Sigmoid", "Tanh", "Tanh"])


def fold_embedding(graph: Graph) -> Graph:
    """Fold every eligible embedding lookup -> LSTM pair of ``graph`` in place; returns it."""
    readers = readers_of(graph)
    replaced: dict[int, Node | None] = {}
    for node in graph.nodes:
        if node.op == "LSTM" and not node.domain:
            new = _fold(graph, node, readers, replaced)
            if new is not None:
                replaced[id(node)] = new
    if replaced:
        graph.nodes = [replaced.get(id(n), n) for n in graph.nodes if replaced.get(id(n), n) is not None]
        graph.opsets.setdefault(OPENCANN_DOMAIN, 1)
        eliminate_dead_code(graph)
    return graph


def _plain(lstm: Node) -> bool:
    a = lstm.attrs
    return a.get("direction", "forward") == "forward" and not a.get("layout", 0) and not a.get("input_forget", 0) \
        and a.get("activations") in _DEFAULT_ACTIVATIONS and a.get("clip") is None \
        and a.get("activation_alpha") is None and a.get("activation_beta") is None


def _read(v: Value | None, readers) -> list[Node | None]:
    return readers.get(v.name, []) if v is not None and v.name else []


def _lookup(x: Value, readers) -> tuple[Node, int] | None:
    """``(Gather, batch_major)`` when ``x`` is an embedding lookup (maybe transposed to time-major) read only here."""
    p, batch_major = x.producer, 0
    if p is not None and p.op == "Transpose" and not p.domain and list(p.attrs.get("perm", ())) == [1, 0, 2] \
            and len(_read(x, readers)) == 1:
        x, batch_major = p.inputs[0], 1
    gather = x.producer
    if gather is None or gather.op != "Gather" or gather.domain or gather.attrs.get("axis", 0) != 0 \
            or len(_read(x, readers)) != 1:
        return None
    tokens = gather.inputs[1].type
    if not isinstance(tokens, TensorType) or tokens.rank != 2 or tokens.dtype not in (np.int32, np.int64):
        return None
    return gather, batch_major


def _squeeze(outputs: list[Value], readers) -> Node | None:
    """The ``Gather(Y_h, 0 or -1, axis=0)`` that alone reads Y_h, when Y_c is unread; else None."""
    (_, y_h, y_c), gather = (outputs + [None] * 3)[:3], None
    if len(_read(y_h, readers)) == 1 and not _read(y_c, readers):
        gather = _read(y_h, readers)[0]
    if gather is None or gather.op != "Gather" or gather.domain or gather.attrs.get("axis", 0) != 0 \
            or gather.inputs[0] is not y_h:
        return None
    index = const_of(gather.inputs[1])
    return gather if index is not None and index.shape == () and int(index) in (0, -1) else None


def _fold(graph: Graph, lstm: Node, readers, replaced: dict[int, Node | None]) -> Node | None:
    """The ``opencann::EmbeddingLSTM`` replacing ``lstm``, when it is a plain LSTM over an embedding lookup."""
    x, w_v, r_v, b_v, lens, h0, c0, p = (lstm.inputs + [None] * 8)[:8]
    w, r, b = const_of(w_v), const_of(r_v), const_of(b_v)
    if not _plain(lstm) or lens is not None or p is not None or w is None or r is None or r.ndim != 3 \
            or (b_v is not None and b is None):
        return None
    hidden = r.shape[-1]
    if any(a.dtype != F32 for a in (w, r, *(() if b is None else (b,)))) or w.ndim != 3 \
            or w.shape[:2] != (1, 4 * hidden) or r.shape != (1, 4 * hidden, hidden) \
            or b is not None and b.shape != (1, 8 * hidden) or lstm.attrs.get("hidden_size", hidden) != hidden:
        return None
    found = _lookup(x, readers)
    if found is None:
        return None
    gather, batch_major = found
    e = const_of(gather.inputs[0])
    if e is None or e.dtype != F32 or e.ndim != 2 or e.shape[1] != w.shape[2] \
            or e.shape[0] * 16 * hidden > MAX_TABLE_BYTES:
        return None
    bias = 0.0 if b is None else b[0, :4 * hidden].astype(np.float64) + b[0, 4 * hidden:]
    table = Value(f"{gather.outputs[0].name}/table", const=(e.astype(np.float64) @ w[0].T + bias).astype(F32))
    rt = Value(f"{gather.outputs[0].name}/RT", const=np.ascontiguousarray(r[0].T))
    graph.initializers += [table, rt]
    inputs = [gather.inputs[1], table, rt, h0, c0]
    while inputs[-1] is None:
        inputs.pop()
    outputs = list(lstm.outputs)
    sequence = int(bool(outputs) and bool(_read(outputs[0], readers)))
    if not sequence and outputs and isinstance(outputs[0].type, TensorType) and outputs[0].type.rank == 4:
        outputs[0].type = TensorType(outputs[0].type.dtype, (0, *outputs[0].type.shape[1:]))
    squeeze = _squeeze(outputs, readers)
    if squeeze is not None:
        replaced[id(squeeze)] = None
        outputs[1] = squeeze.outputs[0]
        if len(outputs) > 2 and isinstance(outputs[2].type, TensorType) and outputs[2].type.rank == 3:
            outputs[2].type = TensorType(outputs[2].type.dtype, outputs[2].type.shape[1:])
    attrs = {"batch_major": batch_major, "sequence": sequence, "squeeze": int(squeeze is not None)}
    return Node("EmbeddingLSTM", inputs, outputs, attrs, name=lstm.name, domain=OPENCANN_DOMAIN)
