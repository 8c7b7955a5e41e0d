"""Fewer launches for training graphs (the TF adapter runs these after the pipeline): optimizer updates
chained per variable, and a while loop's gradient accumulators pushed and popped in one node.

Keras 3's optimizers update each variable with a dozen small elementwise ops (Adam: the two moment updates,
the square root, the division, the subtraction). Below ``fuse_elementwise``'s size limit these stay single
nodes — 200 to 300 launches a step for a small model. :func:`chain_updates` finds, for every new variable
value (a graph output), the connected elementwise ops of that value's shape that compute it and are read
nowhere else, and replaces each such group by one ``opencann::ElementwiseChain`` node: the same NumPy ufuncs
in the same order (bit-identical results), run by one kernel without the executor's per-node cost. Scalars
(learning rate, bias corrections) and everything else stay outside, as inputs. :func:`merge_chains` then runs
the chains of one kind (same ops, inputs of one shape each, the same scalars) as one
``opencann::ElementwiseChains`` node: one compiled pass over the variables side by side, again bit-identical.
:func:`chain_scalars` chains the scalar arithmetic (Adam's bias corrections) the same way, and
:func:`fold_transposes` lets Gemm read a gradient MatMul's transposed operand in place. :func:`batch_list_ops` merges
the TensorList appends (forward loop body) and pops (gradient loop body) of carried lists, after fusing the LSTM
cells of those bodies (:func:`~opencann.compiler.passes.fuse_rnn_loops.fuse_lstm_cells`).
:func:`hoist_invariants` moves a loop body's work on loop-invariant values (a TF while loop measuring its input
list for the gradient) in front of the loop. :func:`fold_attention` runs, for attention: :func:`fold_head_biases` (the
per-head projection biases added in the GEMM's epilogue), :func:`fold_scales` (the score scale in the Softmax and its
gradient) and :func:`fold_sum_reshapes` (the bias gradients' sums without the reshape after them); all bit-identical.
"""
from __future__ import annotations

import numpy as np

from opencann.compiler.ir import Graph, Node, TensorType, Value
from opencann.compiler.passes import const_of, readers_of
from opencann.compiler.passes.fuse_rnn_loops import fuse_lstm_cells
from opencann.ops.tf_ops import CHAIN_CODES, CHAIN_UFUNCS

MIN_OPS = 2
MAX_MERGED = 1 << 16  # elements of one merged ElementwiseChains node
HOISTABLE = frozenset({("", "SequenceLength"), ("", "Shape"), ("", "Size"), ("", "Cast"), ("", "Identity"),
                       ("opencann", "TensorListElementShape")})  # cheap, and never fail where the body would not


def chain_updates(graph: Graph, new_values: list[Value]) -> Graph:
    """Replace the elementwise groups computing ``new_values`` (outputs of ``graph``) by ElementwiseChain
    nodes, in place; returns the graph."""
    consumers: dict[int, list[Node]] = {}
    for node in graph.nodes:
        for v in node.inputs:
            if v is not None:
                consumers.setdefault(id(v), []).append(node)
    outputs = {id(v) for v in graph.outputs}
    roots = {id(v.producer) for v in new_values if v.producer is not None and _eligible(v.producer)}
    chained: set[int] = set()
    for node in reversed(graph.nodes):  # consumers before producers
        users = consumers.get(id(node.outputs[0]), []) if _eligible(node) else None
        if users is None or not all(id(u) in chained for u in users):
            continue
        if id(node) in roots or (users and _same_shape(node, users)):
            chained.add(id(node))
    groups = _components([n for n in graph.nodes if id(n) in chained])
    replaced: dict[int, Node] = {}
    for group in groups:
        if len(group) >= MIN_OPS:
            replaced[id(group[-1])] = _chain_node(group, outputs, consumers)
    members = {id(n) for g in groups if id(g[-1]) in replaced for n in g}
    graph.nodes = [replaced.get(id(n), n) for n in graph.nodes if id(n) not in members or id(n) in replaced]
    return graph


def chain_scalars(graph: Graph) -> Graph:
    """Replace each connected group of scalar float ops of :data:`CHAIN_UFUNCS` in ``graph`` (an optimizer's
    bias corrections: powers, differences, a square root, a quotient) by one ElementwiseChain node where the
    group's results are read after its last member. In place; returns the graph."""
    captured = {name for n in graph.nodes for body in n.subgraphs.values() for name in body.outer_names()}
    consumers: dict[int, list[Node]] = {}
    position = {}
    for k, node in enumerate(graph.nodes):
        position[id(node)] = k
        for v in node.inputs:
            if v is not None:
                consumers.setdefault(id(v), []).append(node)
    outputs = {id(v) for v in graph.outputs}
    groups = [g for g in _components([n for n in graph.nodes if _scalar_op(n) and n.outputs[0].name not in captured])
              if len(g) >= MIN_OPS]
    replaced: dict[int, Node] = {}
    for group in groups:
        chain, last, members = _chain_node(group, outputs, consumers), position[id(group[-1])], {id(n) for n in group}
        if all(position[id(u)] > last for v in chain.outputs for u in consumers.get(id(v), []) if id(u) not in members):
            replaced[id(group[-1])] = chain
    members = {id(n) for g in groups if id(g[-1]) in replaced for n in g}
    graph.nodes = [replaced.get(id(n), n) for n in graph.nodes if id(n) not in members or id(n) in replaced]
    return graph


def _scalar_op(node: Node) -> bool:
    """A chainable op of one float dtype on rank-0 values."""
    t = node.outputs[0].type if len(node.outputs) == 1 else None
    return (node.op in CHAIN_UFUNCS and not node.domain and isinstance(t, TensorType) and t.shape == ()
            and t.dtype.kind == "f" and all(_dtype(v) == t.dtype and _static_shape(v) == () for v in node.inputs))


def fold_transposes(graph: Graph) -> Graph:
    """``MatMul(Transpose(a), b)`` and ``MatMul(a, Transpose(b))`` on float32 matrices, the transpose read nowhere
    else, become ``Gemm(a, b)`` with ``transA`` / ``transB`` (a gradient's ``X^T @ dY`` and ``dY @ W^T``): BLAS reads
    the operand transposed, no copy and no launch for it. In place; returns the graph."""
    readers = readers_of(graph)
    gone: set[int] = set()
    for k, node in enumerate(graph.nodes):
        if node.op != "MatMul" or node.domain or any(_static_shape(v) is None or len(_static_shape(v)) != 2
                                                      or _dtype(v) != np.float32 for v in node.inputs):
            continue
        ins, attrs = list(node.inputs), {}
        for j, flag in enumerate(("transA", "transB")):
            t = ins[j].producer
            if t is not None and t.op == "Transpose" and not t.domain and list(t.attrs.get("perm", [1, 0])) == [1, 0] \
                    and len(readers[ins[j].name]) == 1:
                ins[j], attrs[flag] = t.inputs[0], 1
                gone.add(id(t))
        if attrs:
            graph.nodes[k] = Node("Gemm", ins, node.outputs, attrs, name=f"{node.name}/gemm")
    graph.nodes = [n for n in graph.nodes if id(n) not in gone]
    return graph


def merge_chains(graph: Graph) -> Graph:
    """Replace the ElementwiseChain nodes of ``graph`` that run the same ops on inputs of one shape each (their
    scalars shared), whose results only leave the graph, by one ``opencann::ElementwiseChains`` node per such
    set: one compiled pass over all of them side by side (bit-identical; ~0.7 us a ufunc call saved per op
    and variable). In place; returns the graph."""
    read = {id(v) for n in graph.nodes for v in n.inputs}
    read |= {name for n in graph.nodes for body in n.subgraphs.values() for name in body.outer_names()}
    sets: dict[tuple, list[Node]] = {}
    for node in graph.nodes:
        key = _chain_key(node, read)
        if key is not None:
            sets.setdefault(key, []).append(node)
    merged: dict[int, Node] = {}
    gone: set[int] = set()
    for chains in (batch for kind in sets.values() for batch in _batches(kind)):
        if len(chains) >= MIN_OPS:
            merged[id(chains[-1])] = _merged(chains)
            gone |= {id(n) for n in chains[:-1]}
    graph.nodes = [merged.get(id(n), n) for n in graph.nodes if id(n) not in gone]
    return graph


def _batches(chains: list[Node]) -> list[list[Node]]:
    """``chains`` in runs of at most :data:`MAX_MERGED` elements (a larger run outgrows the caches: its gathered
    inputs and results stream from memory, slower than the chains one by one)."""
    batches, total = [[]], 0
    for node in chains:
        size = int(np.prod(node.outputs[0].type.shape))
        if batches[-1] and total + size > MAX_MERGED:
            batches.append([])
            total = 0
        batches[-1].append(node)
        total += size
    return batches


def _chain_key(node: Node, read: set) -> tuple | None:
    """What chains merge on: ops, operands, results, dtype and the shared scalars; None for a node that is not a
    chain, or whose inputs are neither scalars nor of its results' shape, or whose results are read in ``graph``."""
    if node.op != "ElementwiseChain" or node.domain != "opencann" or not getattr(node.outputs[0].type, "shape", 0) or \
            any(id(v) in read or v.name in read for v in node.outputs) or \
            any(name not in CHAIN_CODES for name in node.attrs["ops"]):
        return None
    t = node.outputs[0].type
    scalars = []
    for i, v in enumerate(node.inputs):
        shape = _static_shape(v)
        if shape == () and _dtype(v) == t.dtype:
            scalars.append((i, id(v)))
        elif shape != t.shape or _dtype(v) != t.dtype:
            return None
    return (t.dtype, tuple(node.attrs["ops"]), tuple(node.attrs["operands"]), tuple(node.attrs["results"]),
            tuple(scalars))


def _static_shape(v: Value | None) -> tuple | None:
    if v is None:
        return None
    if v.const is not None:
        return v.const.shape
    t = v.type
    return tuple(t.shape) if isinstance(t, TensorType) and t.is_static else None


def _merged(chains: list[Node]) -> Node:
    """The ElementwiseChains node running ``chains`` (same key): each chain's own inputs, then the scalars."""
    first = chains[0]
    shared = [i for i, v in enumerate(first.inputs) if _static_shape(v) == ()]
    own = [v for n in chains for i, v in enumerate(n.inputs) if i not in shared]
    attrs = {k: first.attrs[k] for k in ("ops", "operands", "results")}
    return Node("ElementwiseChains", own + [first.inputs[i] for i in shared], [v for n in chains for v in n.outputs],
                {**attrs, "shared": shared, "pieces": len(chains), "n_inputs": len(first.inputs)},
                name=f"{chains[-1].name}/merged", domain="opencann")


def _eligible(node: Node) -> bool:
    """A chainable op with a static, non-scalar float output, reading only values of that dtype (the ufunc
    alone then gives the same values as the op's kernel)."""
    t = node.outputs[0].type if len(node.outputs) == 1 else None
    return (node.op in CHAIN_UFUNCS and not node.domain and isinstance(t, TensorType) and t.is_static
            and t.dtype.kind == "f" and len(t.shape) > 0 and all(_dtype(v) == t.dtype for v in node.inputs))


def _dtype(v: Value | None):
    if v is None:
        return None
    return v.const.dtype if v.const is not None else getattr(v.type, "dtype", None)


def _same_shape(node: Node, users: list[Node]) -> bool:
    return all(u.outputs[0].type.shape == node.outputs[0].type.shape for u in users)


def _components(nodes: list[Node]) -> list[list[Node]]:
    """Connected groups of ``nodes`` (in graph order) through the values they pass each other."""
    parent = {id(n): id(n) for n in nodes}

    def find(k: int) -> int:
        while parent[k] != k:
            parent[k] = parent[parent[k]]
            k = parent[k]
        return k

    for n in nodes:
        for v in n.inputs:
            if v is not None and v.producer is not None and id(v.producer) in parent:
                parent[find(id(v.producer))] = find(id(n))
    groups: dict[int, list[Node]] = {}
    for n in nodes:
        groups.setdefault(find(id(n)), []).append(n)
    return list(groups.values())


def _chain_node(group: list[Node], outputs: set[int], consumers: dict[int, list[Node]]) -> Node:
    """One ElementwiseChain for ``group``: ``ops`` names the ufuncs, ``operands`` two slots per op (-1: none)
    in a list of the node's inputs followed by each op's result, ``results`` the slots it returns."""
    produced = {id(n.outputs[0]): i for i, n in enumerate(group)}
    inputs: list[Value] = []
    slot: dict[int, int] = {}
    for n in group:
        for v in n.inputs:
            if id(v) not in produced and id(v) not in slot:
                slot[id(v)] = len(inputs)
                inputs.append(v)
    base = len(inputs)
    operands: list[int] = []
    for n in group:
        refs = [produced[id(v)] + base if id(v) in produced else slot[id(v)] for v in n.inputs]
        operands += (refs + [-1])[:2]
    members = {id(n) for n in group}
    kept = [n.outputs[0] for n in group if id(n.outputs[0]) in outputs
            or any(id(u) not in members for u in consumers.get(id(n.outputs[0]), []))]
    results = [produced[id(v)] + base for v in kept]
    return Node("ElementwiseChain", inputs, kept, {"ops": [n.op for n in group], "operands": operands,
                                                  "results": results}, name=f"{group[-1].name}/chain",
                domain="opencann")


def batch_list_ops(graph: Graph) -> Graph:
    """Fuse the LSTM cells of ``graph`` (:func:`fuse_lstm_cells`), then :func:`batch_lists` and
    :func:`add_list_items`. In place; returns the graph."""
    return add_list_items(batch_lists(fuse_lstm_cells(graph)))


def add_list_items(graph: Graph) -> Graph:
    """In ``graph`` and its subgraphs: ``TensorListAddN(acc, TensorListSetItem(TensorListReserve(n), i, x))``
    (a gradient loop accumulating one element's gradient), its intermediate lists read nowhere else, becomes one
    ``opencann::TensorListAddItem(acc, n, i, x)``. In place; returns the graph."""
    for node in graph.nodes:
        for body in node.subgraphs.values():
            add_list_items(body)
    readers: dict[int, int] = {}
    for node in graph.nodes:
        for v in node.inputs:
            if v is not None:
                readers[id(v)] = readers.get(id(v), 0) + 1
    for v in graph.outputs:
        readers[id(v)] = readers.get(id(v), 0) + 1
    gone: set[int] = set()
    for k, node in enumerate(graph.nodes):
        if node.op != "TensorListAddN" or node.domain != "opencann" or len(node.inputs) != 2:
            continue
        for j, v in enumerate(node.inputs):
            put = _list_op(v, "TensorListSetItem", readers)
            new = _list_op(put.inputs[0], "TensorListReserve", readers) if put is not None else None
            if new is not None and not put.attrs.get("resize_if_index_out_of_bounds", 0):
                graph.nodes[k] = Node("TensorListAddItem", [node.inputs[1 - j], new.inputs[0], *put.inputs[1:]],
                                      node.outputs, name=f"{node.name}/item", domain="opencann")
                gone |= {id(put), id(new)}
                break
    graph.nodes = [n for n in graph.nodes if id(n) not in gone]
    return graph


def _list_op(v: Value | None, op: str, readers: dict[int, int]) -> Node | None:
    """The ``opencann::op`` node producing ``v`` when ``v`` is read once (by the caller's node), else None."""
    node = getattr(v, "producer", None)
    if node is None or node.op != op or node.domain != "opencann" or readers.get(id(v)) != 1:
        return None
    return node


def batch_lists(graph: Graph) -> Graph:
    """In ``graph`` and every loop body in it: the appends to carried TensorLists whose results only leave
    the body become one ``opencann::TensorListPushBackMany`` node, the pops of carried lists whose rest
    only leaves the body one ``opencann::TensorListPopBackMany`` (a while loop's gradient accumulators:
    ~13 pushes an iteration forward, as many pops backward). In place; returns the graph."""
    for node in graph.nodes:
        for body in node.subgraphs.values():
            batch_lists(body)
    inputs, outputs = {id(v) for v in graph.inputs}, {id(v) for v in graph.outputs}
    read = {id(v) for n in graph.nodes for v in n.inputs if v is not None}

    def carried(n: Node) -> bool:
        return id(n.inputs[0]) in inputs and id(n.outputs[0]) in outputs and id(n.outputs[0]) not in read

    pushes = [n for n in graph.nodes if n.op == "SequenceInsert" and not n.domain and len(n.inputs) == 2
              and carried(n)]
    pops = [n for n in graph.nodes if n.op == "TensorListPopBack" and n.domain == "opencann" and carried(n)
            and (n.inputs[1].const is not None or id(n.inputs[1]) in inputs)]
    nodes = graph.nodes
    if len(pops) >= MIN_OPS:
        merged = Node("TensorListPopBackMany", [n.inputs[0] for n in pops] + [n.inputs[1] for n in pops],
                      [n.outputs[0] for n in pops] + [n.outputs[1] for n in pops],
                      {"element_dtypes": [n.attrs["element_dtype"] for n in pops]}, name=f"{pops[0].name}/many",
                      domain="opencann")
        nodes = [merged] + [n for n in nodes if n not in pops]
    if len(pushes) >= MIN_OPS:
        merged = Node("TensorListPushBackMany", [n.inputs[0] for n in pushes] + [n.inputs[1] for n in pushes],
                      [n.outputs[0] for n in pushes], name=f"{pushes[0].name}/many", domain="opencann")
        nodes = [n for n in nodes if n not in pushes] + [merged]
    graph.nodes = nodes
    return graph


def hoist_invariants(graph: Graph) -> Graph:
    """In ``graph`` and its subgraphs: the :data:`HOISTABLE` nodes of a Loop body that read only loop-invariant
    values (carried values the body returns unchanged, values captured from outside, other such nodes' results)
    move in front of the Loop: they run once, not once per iteration. In place; returns the graph."""
    nodes = []
    for node in graph.nodes:
        for body in node.subgraphs.values():
            hoist_invariants(body)
        if node.op == "Loop" and not node.domain and "body" in node.attrs:
            nodes.extend(_hoist(node, node.attrs["body"]))
        nodes.append(node)
    graph.nodes = nodes
    return graph


def _hoist(loop: Node, body: Graph) -> list[Node]:
    """The nodes taken out of ``body`` (their invariant carried inputs replaced by the Loop's own inputs)."""
    outer: dict[int, Value] = {}  # id(body input) -> the Loop input it always equals
    for j, v in enumerate(loop.inputs[2:]):
        inner = body.inputs[2 + j] if 2 + j < len(body.inputs) else None
        if v is not None and inner is not None and 1 + j < len(body.outputs) and body.outputs[1 + j] is inner:
            outer[id(inner)] = v
    local = {id(v) for v in body.values()}
    moved: list[Node] = []
    for node in body.nodes:
        if (node.domain, node.op) in HOISTABLE and not node.subgraphs and node.inputs and \
                all(v is not None and (id(v) in outer or id(v) not in local) for v in node.inputs):
            node.inputs = [outer.get(id(v), v) for v in node.inputs]
            local.difference_update(id(v) for v in node.outputs)
            moved.append(node)
    if moved:
        taken = {id(n) for n in moved}
        body.nodes = [n for n in body.nodes if id(n) not in taken]
    return moved


def fold_attention(graph: Graph) -> Graph:
    """:func:`fold_head_biases`, :func:`fold_scales`, :func:`fold_sum_reshapes`: a Keras attention layer's training
    step in ~8 launches fewer. In place; returns the graph."""
    return fold_sum_reshapes(fold_scales(fold_head_biases(graph)))


def fold_sum_reshapes(graph: Graph) -> Graph:
    """``Reshape(ReduceSum(x, axes, keepdims=1))`` to the sum's shape without its reduced axes (a bias gradient of
    per-head biases: ``[1, 1, heads, size]`` to ``[heads, size]``), the sum read nowhere else, becomes
    ``ReduceSum(x, axes, keepdims=0)``: one launch less, the same values. In place; returns the graph."""
    readers = readers_of(graph)
    gone: set[int] = set()
    for k, node in enumerate(graph.nodes):
        total = node.inputs[0].producer if node.op == "Reshape" and not node.domain else None
        if total is None or total.op != "ReduceSum" or total.domain or not total.attrs.get("keepdims", 1) or \
                readers[total.outputs[0].name] != [node]:
            continue
        axes = const_of(total.inputs[1]) if len(total.inputs) > 1 else total.attrs.get("axes")
        shape, kept = _shape(total.inputs[0]), _static_shape(total.outputs[0])
        if axes is None or shape is None or kept is None or not np.size(axes) or \
                not all(-len(shape) <= a < len(shape) for a in np.ravel(axes)):
            continue
        reduced = {int(a) % len(shape) for a in np.ravel(axes)}
        if _static_shape(node.outputs[0]) == tuple(d for i, d in enumerate(kept) if i not in reduced):
            graph.nodes[k] = Node("ReduceSum", total.inputs, node.outputs, {**total.attrs, "keepdims": 0},
                                  name=f"{total.name}/squeezed")
            gone.add(id(total))
    graph.nodes = [n for n in graph.nodes if id(n) not in gone]
    return graph


def fold_head_biases(graph: Graph) -> Graph:
    """``Add(Reshape(MatMul(a, W)), bias)`` (Keras' attention projections: a dense layer whose result splits into
    heads, then the per-head bias), float32, a 2-D ``W`` whose columns the reshape splits over the trailing axes the
    bias spans, becomes ``Reshape(FusedMatMul(a, W, Reshape(bias, [n])))``: the GEMM's epilogue adds the bias, one
    launch and one pass over the product less, same values. In place; returns the graph."""
    readers = readers_of(graph)
    fused: dict[int, list[Node]] = {}
    gone: set[int] = set()
    for node in graph.nodes:
        match = _head_bias(node, readers)
        if match is not None:
            product, split, bias = match
            fused[id(node)] = _biased_product(graph, node, product, split, bias)
            gone |= {id(product), id(split)}
    graph.nodes = [m for n in graph.nodes if id(n) not in gone for m in fused.get(id(n), [n])]
    return graph


def _head_bias(add: Node, readers: dict) -> tuple[Node, Node, Value] | None:
    """(MatMul, Reshape, bias) when ``add`` ends the pattern :func:`fold_head_biases` folds, else None. The reshape's
    trailing axes that the bias spans hold exactly W's n columns (static; the leading ones may be dynamic): each of
    their blocks is one row of the product, whatever the leading axes."""
    if add.op != "Add" or add.domain or len(add.inputs) != 2:
        return None
    for j, v in enumerate(add.inputs):
        split, bias = v.producer, add.inputs[1 - j]
        product = split.inputs[0].producer if split is not None and split.op == "Reshape" and not split.domain \
            else None
        if product is None or product.op != "MatMul" or product.domain or readers[v.name] != [add] \
                or readers[split.inputs[0].name] != [split]:
            continue
        a, w, b, r = _shape(product.inputs[0]), _static_shape(product.inputs[1]), _static_shape(bias), _shape(v)
        if a is None or w is None or b is None or r is None or len(a) < 2 or len(w) != 2 or a[-1] != w[0] or \
                len(b) > len(r) or _shape(add.outputs[0]) != r or \
                any(_dtype(x) != np.float32 for x in (*product.inputs, bias)):
            continue
        tail = _strip(b)
        if r[len(r) - len(tail):] == tail and int(np.prod(tail)) == w[1]:
            return product, split, bias
    return None


def _shape(v: Value) -> tuple | None:
    """``v``'s shape (dims may be unknown or symbolic); None where its rank is unknown."""
    return v.type.shape if isinstance(v.type, TensorType) else None


def _strip(shape: tuple) -> tuple:
    """``shape`` without its leading ones."""
    k = 0
    while k < len(shape) and shape[k] == 1:
        k += 1
    return tuple(shape[k:])


def _biased_product(graph: Graph, add: Node, product: Node, split: Node, bias: Value) -> list[Node]:
    """The nodes replacing ``add`` (and ``product`` and ``split``): the bias as a row, the FusedMatMul, the
    reshape into ``add``'s result."""
    n = _static_shape(product.inputs[1])[1]
    nodes = []
    row = Value(f"{add.name}/bias_row", TensorType(np.dtype(np.float32), (n,)))
    if const_of(bias) is not None:
        row.const = np.ascontiguousarray(const_of(bias).reshape(n))
        graph.initializers.append(row)
    else:
        shape = Value(f"{add.name}/bias_shape", const=np.array([n], np.int64))
        graph.initializers.append(shape)
        nodes.append(Node("Reshape", [bias, shape], [row], name=f"{add.name}/bias_row"))
    y = Value(f"{product.name}/biased", product.outputs[0].type)
    nodes.append(Node("FusedMatMul", [*product.inputs, row], [y], {"alpha": 1.0, "activation": "none"},
                      name=f"{product.name}/biased", domain="opencann"))
    nodes.append(Node("Reshape", [y, split.inputs[1]], add.outputs, split.attrs, name=f"{split.name}/biased"))
    return nodes


def fold_scales(graph: Graph) -> Graph:
    """Attention's score scale, a float32 scalar constant, into its neighbours: ``Softmax(Mul(x, c))`` over the last
    axis becomes ``opencann::ScaledSoftmax(x, scale=c)``, ``Mul(SoftmaxGrad(dy, y), c)`` becomes ``SoftmaxGrad`` with
    ``scale=c`` (the products read nowhere else): the kernels multiply by ``c`` in float32 where the Mul did, one
    launch and one pass over the scores less each, same values. In place; returns the graph."""
    readers = readers_of(graph)
    gone: set[int] = set()
    for k, node in enumerate(graph.nodes):
        if node.op == "Softmax" and not node.domain and _last_axis(node, graph.opsets.get("", 1)):
            scaled = _scaled(node.inputs[0].producer)
            if scaled is not None and readers[node.inputs[0].name] == [node]:
                x, c = scaled
                graph.nodes[k] = Node("ScaledSoftmax", [x], node.outputs, {"scale": c}, name=f"{node.name}/scaled",
                                      domain="opencann")
                gone.add(id(node.inputs[0].producer))
        scaled = _scaled(node)
        grad = scaled[0].producer if scaled is not None else None
        if grad is not None and grad.op == "SoftmaxGrad" and grad.domain == "opencann" and \
                grad.attrs.get("scale", 1.0) == 1.0 and readers[grad.outputs[0].name] == [node]:
            graph.nodes[k] = Node("SoftmaxGrad", grad.inputs, node.outputs, {"scale": scaled[1]},
                                  name=f"{grad.name}/scaled", domain="opencann")
            gone.add(id(grad))
    graph.nodes = [n for n in graph.nodes if id(n) not in gone]
    return graph


def _last_axis(softmax: Node, opset: int) -> bool:
    """Whether ``softmax`` normalizes over its input's last axis alone (before opset 13, axis 1 by default)."""
    shape = _shape(softmax.inputs[0])
    return bool(shape) and softmax.attrs.get("axis", -1 if opset >= 13 else 1) in (-1, len(shape) - 1)


def _scaled(mul: Node | None) -> tuple[Value, float] | None:
    """(x, c) for ``mul`` = ``Mul(x, c)`` or ``Mul(c, x)``, float32 ``x`` of known rank, ``c`` a float32 one-element
    constant of no higher rank (the product has ``x``'s shape); else None."""
    if mul is None or mul.op != "Mul" or mul.domain or len(mul.inputs) != 2:
        return None
    for j, c in enumerate(mul.inputs):
        value, x = const_of(c), mul.inputs[1 - j]
        if value is not None and value.size == 1 and value.dtype == np.float32 and _dtype(x) == np.float32 and \
                _shape(x) is not None and value.ndim <= len(_shape(x)):
            return x, float(value.reshape(()))
    return None
