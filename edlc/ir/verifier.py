"""Structural checks on a Graph: run after every pass in tests and with --verify-each."""

from __future__ import annotations

import itertools
from typing import TYPE_CHECKING

from edlc.errors import ModelError

if TYPE_CHECKING:
    from edlc.ir.graph import Graph


def verify(graph: Graph, outer: set[int] | None = None) -> None:
    """Raise ModelError naming the first broken invariant: SSA (one producer a value), values
    defined before use, consistent use lists, unique names, typed values."""
    visible = set(outer or ()) | {id(v) for v in graph.inputs}
    names: dict[str, object] = {}

    def define(v, where: str) -> None:
        other = names.get(v.name)
        if other is not None and other is not v:
            raise ModelError(f"graph '{graph.name}': value name '{v.name}' is defined twice ({where})")
        names[v.name] = v
        _check_type(v, where)

    for v in graph.inputs:
        define(v, "graph input")
    for n in graph.nodes:
        for i, v in enumerate(n.inputs):
            if v is None:
                continue
            if (n, i) not in v._uses:
                raise ModelError(f"node '{n.name}' ({n.op}): input {i} '{v.name}' does not list it as a user")
            if v.is_constant:
                define(v, f"constant read by '{n.name}'")
                visible.add(id(v))
            elif id(v) not in visible:
                raise ModelError(
                    f"node '{n.name}' ({n.op}): input {i} '{v.name}' is used before it is defined "
                    "or is dangling"
                )
        for sub in n.subgraphs:
            verify(sub, visible)
        for i, v in enumerate(n.outputs):
            if v.producer is not n or v.index != i:
                raise ModelError(f"node '{n.name}' ({n.op}): output {i} '{v.name}' has a wrong producer link")
            if not v.name:  # an omitted optional output (ONNX writes it as "")
                continue
            if v.type is None:
                raise ModelError(f"node '{n.name}' ({n.op}): output '{v.name}' has no type")
            define(v, f"output of '{n.name}'")
            visible.add(id(v))
    for v in graph.outputs:
        if id(v) not in visible and not v.is_constant:
            raise ModelError(f"graph '{graph.name}': output '{v.name}' is not defined")
    for v in itertools.chain(graph.inputs, *(n.outputs for n in graph.nodes)):
        for node, i in v._uses:
            if node.inputs[i] is not v:
                raise ModelError(f"value '{v.name}': stale use by node '{node.name}' input {i}")


def _check_type(v, where: str) -> None:
    """Dims are non-negative ints or names; a constant's array matches its type."""
    t = v.type
    if t is None:
        return
    if t.shape is not None and any(not (isinstance(d, str) and d) and not (isinstance(d, int) and d >= 0)
                                   for d in t.shape):
        raise ModelError(f"value '{v.name}' ({where}) has a malformed shape {list(t.shape)}")
    if v.is_constant and tuple(v.const.shape) != t.shape:
        raise ModelError(f"constant '{v.name}' ({where}) holds an array of shape {list(v.const.shape)} "
                         f"but is typed {t}")
