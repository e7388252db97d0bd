"""Common subexpression elimination: compute each thing once.

Two nodes with the same op, domain, attributes and the very same input values compute the same
outputs; the later one's readers are moved to the earlier one and it goes. Equal constants
(same dtype, shape and bytes) become one value first, so nodes reading copies of a weight merge
too. Subgraphs are handled one at a time: nodes merge only with nodes of their own graph.

    before: %a = Relu(%x); %b = Relu(%x); %y = Add(%a, %b)
    after:  %a = Relu(%x); %y = Add(%a, %a)

Never merged: random ops (each call draws anew), Dropout (random when training), nodes with
subgraphs, and ops of domains whose semantics edlc does not know.
"""

from __future__ import annotations

import hashlib
from collections.abc import Hashable
from typing import Any

import numpy as np

from edlc.ir.graph import Graph, Node, Value
from edlc.pass_manager import PassResult, register_pass

from .fold_constants import NON_DETERMINISTIC

MERGEABLE_DOMAINS = frozenset({"", "ai.onnx", "ai.onnx.ml", "edlc"})
NEVER_MERGED = frozenset(NON_DETERMINISTIC | {"Dropout"})
# Two-input ops whose inputs may be swapped exactly (IEEE + and * are commutative; Max and Min
# are not with NaNs in some kernels).
COMMUTATIVE = frozenset({"Add", "Mul", "And", "Or", "Xor", "Equal"})
# Arrays up to this size are compared by their bytes; larger ones by a SHA-256 digest.
SMALL_BYTES = 1024


class _Unmergeable(Exception):
    """An attribute that has no safe comparison (a subgraph, a protobuf message)."""


def _array_key(a: np.ndarray) -> Hashable:
    """Equal keys mean bit-identical arrays (so 0.0 and -0.0, or two NaN payloads, differ)."""
    a = np.asarray(a)
    if a.dtype.kind in "OUS":
        payload: Hashable = tuple(str(s) for s in a.reshape(-1).tolist())
    elif a.nbytes <= SMALL_BYTES:
        payload = a.tobytes()
    else:
        payload = hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest()
    return (str(a.dtype), a.shape, payload)


def _attr_key(value: Any) -> Hashable:
    """A hashable, type-tagged form of an attribute value (1, 1.0 and True stay apart)."""
    if isinstance(value, Graph):
        raise _Unmergeable
    if isinstance(value, (np.ndarray, np.generic)):
        return ("array", _array_key(np.asarray(value)))
    if isinstance(value, (list, tuple)):
        return ("list", tuple(_attr_key(v) for v in value))
    if isinstance(value, float):
        return ("float", value.hex())
    if isinstance(value, (bool, int, str, bytes)):
        return (type(value).__name__, value)
    if value is None:
        return ("none",)
    raise _Unmergeable


def node_key(node: Node) -> Hashable | None:
    """What makes two nodes interchangeable, or None when this node must never merge."""
    if node.op in NEVER_MERGED or node.domain not in MERGEABLE_DOMAINS or node.subgraphs:
        return None
    try:
        attrs = tuple(sorted((k, _attr_key(v)) for k, v in node.attrs.items()))
    except _Unmergeable:
        return None
    # Values hash by identity: the key holds the very input objects.
    inputs = tuple(node.inputs)
    if node.op in COMMUTATIVE and node.domain in ("", "ai.onnx") and len(inputs) == 2:
        inputs = tuple(sorted(inputs, key=id))
    return (node.qualified_op, inputs, len(node.outputs), attrs)


def _merge_constants(graph: Graph) -> bool:
    """Readers of a constant equal to an earlier one read the earlier one. Only constants
    that nothing outside this graph reads take part (no new sharing across scopes)."""
    own = {id(n) for n in graph.nodes}
    first: dict[Hashable, Value] = {}
    modified = False
    for v in graph.constants():
        if not v.uses or any(id(n) not in own for n, _ in v.uses):
            continue
        keep = first.setdefault((v.type, _array_key(v.const)), v)
        if keep is not v:
            v.replace_all_uses_with(keep)
            modified = True
    return modified


def _merge_nodes(graph: Graph) -> bool:
    """One sweep in topological order: a merged node's readers then match later nodes too."""
    pinned = graph.nested_output_ids() | {id(v) for v in graph.outputs}
    first: dict[Hashable, Node] = {}
    modified = False

    def is_pinned(n: Node) -> bool:
        return any(id(v) in pinned for v in n.outputs)

    for node in list(graph.nodes):
        key = node_key(node)
        if key is None:
            continue
        keep = first.setdefault(key, node)
        if keep is node:
            continue
        if is_pinned(node) and not is_pinned(keep):
            # keep the node that names an output; its inputs are keep's, so keep's place works
            graph.nodes.remove(node)
            graph.insert(node, before=keep)
            first[key], node, keep = node, keep, node
        for old, new in zip(node.outputs, keep.outputs):
            modified |= bool(old.uses)
            old.replace_all_uses_with(new)
        if not is_pinned(node):
            graph.remove_node(node)
            modified = True
    return modified


@register_pass("eliminate-common-subexpressions",
               "merge nodes that compute the same op on the same inputs; merge equal constants",
               min_opt_level=1)
def eliminate_common_subexpressions(graph: Graph) -> PassResult:
    """Constants first (so their readers can merge), then nodes, then each subgraph alone."""
    modified = _merge_constants(graph)
    modified |= _merge_nodes(graph)
    for node in graph.nodes:
        for sub in node.subgraphs:
            modified |= eliminate_common_subexpressions(sub).modified
    return PassResult(graph, modified)
