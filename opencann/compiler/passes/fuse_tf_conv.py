"""Fold a TF convolution's BiasAdd (and a Relu after it) into the TFConv, and its BiasAddGrad into its filter gradient.

After elementwise fusion, ``TFConv(x, w)`` whose only reader is an ``Add(conv, b)`` or a FusedElementwise group
computing just that or ``Relu(Add(conv, b))``, with a float32 ``(M,)`` bias on a channels-last conv, becomes
``TFConv(x, w, b) relu=0|1``: the conv kernel starts its sums with the bias and clamps them (the direct kernels;
within an ulp or two of adding afterwards) or adds and clamps after its GEMM. The group's output takes the conv's
place; the pre-activation value goes (the backward reads the activation: ReluGrad and MaxPoolGrad ``relu=1``; and
BiasAddGrad reads ``dy``). A larger group whose body only adds the bias to its conv input (a batch norm's
statistics after a conv) loses that Add and the bias input: the biased conv output comes in instead, and where the
group returned the sum, the conv now produces that value.

:func:`fuse_bias_grads`: a ``BiasAddGrad(dy)`` and a ``ConvBackpropFilter(x, sizes, dy)`` of the same ``dy`` and
data format become one filter gradient with ``bias_grad=1`` (its second output: one pass over ``dy`` for both).
"""
from __future__ import annotations

from opencann.compiler.ir import Graph, Node
from opencann.compiler.passes import readers_of

DOMAIN = "opencann"


def fuse_tf_conv(graph: Graph) -> Graph:
    """Fold every eligible TFConv -> bias(+Relu) pair, then :func:`fuse_bias_grads`; in place, returns ``graph``."""
    readers = readers_of(graph)
    moved: dict[int, list[Node]] = {}  # id(node) -> what takes its place (a folded conv moves to its reader)
    for n in graph.nodes:
        folded = _fold(n, readers)
        if folded is not None:
            conv, keep = folded
            moved[id(conv)], moved[id(n)] = [], [conv, n] if keep else [conv]
    graph.nodes = [m for n in graph.nodes for m in moved.get(id(n), [n])]
    return fuse_bias_grads(graph)


def fuse_bias_grads(graph: Graph) -> Graph:
    """Each non-depthwise ``ConvBackpropFilter`` takes the ``BiasAddGrad`` of its ``dy`` (same data format) as its
    second output (``bias_grad=1``), at the earlier of the two places where its inputs are ready (else at its own,
    when nothing between reads the bias gradient; else the two stay apart). In place; returns ``graph``."""
    sums: dict[tuple, Node] = {}
    for n in graph.nodes:
        if n.op == "BiasAddGrad" and n.domain == DOMAIN and len(n.outputs) == 1:
            sums.setdefault((n.inputs[0].name, n.attrs.get("data_format", "NHWC")), n)
    for conv in list(graph.nodes):
        if conv.op != "ConvBackpropFilter" or conv.domain != DOMAIN or conv.attrs.get("depthwise") or \
                conv.attrs.get("bias_grad") or len(conv.outputs) != 1 or len(conv.inputs) != 3:
            continue
        total = sums.pop((conv.inputs[2].name, conv.attrs.get("data_format", "NHWC")), None)
        at = None if total is None else _joint_place(graph.nodes, conv, total)
        if at is None:
            continue
        conv.attrs["bias_grad"] = 1
        conv.outputs.append(total.outputs[0])
        total.outputs[0].producer = conv
        rest = [n for n in graph.nodes if n is not conv and n is not total]
        rest.insert(at, conv)
        graph.nodes = rest
    return graph


def _joint_place(nodes: list[Node], conv: Node, total: Node) -> int | None:
    """Where the filter gradient with ``total``'s output can run, as an index into ``nodes`` without the two."""
    where = {id(n): k for k, n in enumerate(nodes)}
    first, last = sorted((where[id(conv)], where[id(total)]))
    made_before = {v.name for n in nodes[:first] for v in n.outputs}
    if all(v is None or v.producer is None or v.name in made_before for v in conv.inputs):
        return first
    name = total.outputs[0].name
    between = nodes[first + 1:last]
    if where[id(conv)] == last and not any(name in {v.name for v in n.inputs if v is not None} or
                                           any(name in g.outer_names() for g in n.subgraphs.values())
                                           for n in between):
        return last - 1
    return None


def _eligible(node: Node, readers: dict) -> Node | None:
    """The TFConv producing ``node``'s first input, when it is that value's only reader, has no bias yet and its
    float32 NHWC output matches the ``(M,)`` float32 second input of ``node``."""
    conv = node.inputs[0].producer if len(node.inputs) >= 2 and node.inputs[0] is not None else None
    if conv is None or conv.op != "TFConv" or conv.domain != DOMAIN or len(conv.inputs) != 2 or \
            len(conv.outputs) != 1 or len(readers.get(node.inputs[0].name, ())) != 1 or \
            conv.attrs.get("data_format", "NHWC") != "NHWC":
        return None
    bias, y = node.inputs[1], conv.outputs[0].type
    if bias is None or bias.type is None or getattr(y, "shape", None) is None or \
            tuple(getattr(bias.type, "shape", None) or ()) != (y.shape[-1],) or \
            str(bias.type.dtype) != "float32" or str(y.dtype) != "float32":
        return None
    return conv


def _fold(node: Node, readers: dict) -> tuple[Node, bool] | None:
    """Fold ``node``'s bias (and Relu) into the TFConv it reads: ``(conv, whether node stays)``, or None."""
    conv = _eligible(node, readers)
    if conv is None:
        return None
    bias = node.inputs[1]
    if node.op == "Add" and not node.domain and len(node.inputs) == len(node.outputs) + 1 == 2:
        relu = False
    elif node.op == "FusedElementwise" and node.domain == DOMAIN and isinstance(node.attrs.get("body"), Graph):
        relu = _bias_body(node.attrs["body"]) if len(node.inputs) == 2 and len(node.outputs) == 1 else None
        if relu is None:
            return (conv, True) if _drop_bias_add(node, conv) else None
    else:
        return None
    conv.inputs = [*conv.inputs, bias]
    conv.attrs["relu"] = int(relu)
    conv.outputs = [node.outputs[0]]
    node.outputs[0].producer = conv
    return conv, False


def _bias_body(body: Graph) -> bool | None:
    """Whether ``body`` is ``Relu(Add(in0, in1))`` (True) or ``Add(in0, in1)`` (False); None: neither."""
    if len(body.inputs) != 2 or len(body.outputs) != 1 or body.initializers or not 1 <= len(body.nodes) <= 2:
        return None
    add = body.nodes[0]
    if add.op != "Add" or add.domain or len(add.inputs) != 2 or add.inputs[0] is add.inputs[1] or \
            {id(v) for v in add.inputs} != {id(v) for v in body.inputs}:
        return None
    relu = len(body.nodes) == 2
    if relu and (body.nodes[1].op != "Relu" or body.nodes[1].domain or body.nodes[1].inputs != [add.outputs[0]]):
        return None
    return relu if body.outputs[0] is body.nodes[-1].outputs[0] else None


def _drop_bias_add(group: Node, conv: Node) -> bool:
    """Take ``Add(in0, in1)`` (conv, bias) out of ``group``'s body when nothing else there reads its inputs: the
    conv adds the bias instead. Returns whether it did."""
    body = group.attrs["body"]
    conv_in, bias_in = body.inputs[0], body.inputs[1]
    uses = [n for n in body.nodes if any(v is conv_in or v is bias_in for v in n.inputs)]
    if len(uses) != 1 or len(body.nodes) < 2 or any(v is conv_in or v is bias_in for v in body.outputs):
        return False
    add = uses[0]
    if add.op != "Add" or add.domain or len(add.inputs) != 2 or {id(v) for v in add.inputs} != {id(conv_in),
                                                                                                 id(bias_in)}:
        return False
    total = add.outputs[0]
    body.nodes.remove(add)
    for n in body.nodes:
        n.inputs = [conv_in if v is total else v for v in n.inputs]
    body.inputs = [conv_in, *body.inputs[2:]]
    conv.inputs = [*conv.inputs, group.inputs[1]]
    conv.attrs["relu"] = 0
    group.inputs = [group.inputs[0], *group.inputs[2:]]
    if total in body.outputs:  # the group returned the sum: the conv produces it now
        k = body.outputs.index(total)
        out = group.outputs.pop(k)
        body.outputs.pop(k)
        conv.outputs, out.producer = [out], conv
        group.inputs[0] = out
    return True
