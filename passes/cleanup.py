"""Cleanup passes: dead code."""

from __future__ import annotations

from edlc.ir.graph import Graph
from edlc.pass_manager import PassResult, register_pass


def _is_live(graph: Graph, node) -> bool:
    return any(v._uses or v in graph.outputs for v in node.outputs)


@register_pass("eliminate-dead-code", "remove nodes whose outputs nobody reads", min_opt_level=0)
def eliminate_dead_code(graph: Graph) -> PassResult:
    """Walk backwards so a chain of dead nodes goes in one sweep; subgraphs too."""
    modified = False
    for node in reversed(list(graph.nodes)):
        if not _is_live(graph, node):
            graph.remove_node(node)
            modified = True
    for node in graph.nodes:
        for sub in node.subgraphs:
            modified |= eliminate_dead_code(sub).modified
    return PassResult(graph, modified)
