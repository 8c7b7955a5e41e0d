"""Dead-code elimination: drop nodes whose outputs nothing reads, and unused initializers."""
from __future__ import annotations

from opencann.compiler.ir import Graph


def eliminate_dead_code(graph: Graph) -> Graph:
    """Remove unreachable nodes and initializers, in place; returns ``graph``."""
    live = {v.name for v in graph.outputs}
    kept = []
    for node in reversed(graph.nodes):
        if any(v.name in live for v in node.outputs if v.name):
            kept.append(node)
            live.update(v.name for v in node.inputs if v is not None)
            for sub in node.subgraphs.values():
                live.update(sub.outer_names())
    graph.nodes = kept[::-1]
    graph.initializers = [v for v in graph.initializers if v.name in live]
    return graph
