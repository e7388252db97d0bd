"""Deep copy of a Graph, subgraphs included; constants' arrays are shared (never mutated)."""

from __future__ import annotations

import copy as _copy

from edlc.ir.graph import Graph, Node, Value


def copy_graph(g: Graph, value_map: dict[int, Value] | None = None, parent: Graph | None = None) -> Graph:
    vmap: dict[int, Value] = value_map if value_map is not None else {}
    new = Graph(g.name, g.opset, parent=parent)
    if parent is None:
        new._names.update(g._names)

    def get(v: Value | None) -> Value | None:
        if v is None:
            return None
        if id(v) not in vmap:
            # constants are copied lazily; outer values (captured by subgraphs) stay as mapped
            nv = Value(v.name, v.type, const=v.const)
            vmap[id(v)] = nv
        return vmap[id(v)]

    for v in g.inputs:
        new.inputs.append(get(v))
    for n in g.nodes:
        attrs = {
            k: copy_graph(a, vmap, new) if isinstance(a, Graph)
            else [copy_graph(s, vmap, new) for s in a] if isinstance(a, list) and a and isinstance(a[0], Graph)
            else _copy.copy(a)
            for k, a in n.attrs.items()
        }
        outs = [Value(v.name, v.type) for v in n.outputs]
        for old, nv in zip(n.outputs, outs, strict=True):
            vmap[id(old)] = nv
        node = Node(n.op, [get(v) for v in n.inputs], outs, attrs, name=n.name, domain=n.domain)
        node.meta = _copy.copy(n.meta)
        new.nodes.append(node)
    new.outputs = [get(v) for v in g.outputs]
    return new
