"""The edlc graph IR: SSA values, nodes, and graphs that own them.

Use-def links are kept by the IR itself (as in torch.fx): setting a node's input updates the
old and new values' use lists, so no pass maintains them by hand.

    g = Graph("tiny")
    x = g.add_input("x", TensorType((1, 4), "float32"))
    w = g.constant(np.ones((4, 2), np.float32), "w")
    (y,) = g.add_node("MatMul", [x, w]).outputs
    g.outputs.append(y)
    print(g)
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from edlc.errors import ModelError
from edlc.ir.types import TensorType


class Value:
    """An SSA value: produced once (by a node, as a graph input, or as a constant), used many
    times. `const` holds the array of a constant value."""

    def __init__(self, name: str, type: TensorType | None, const: np.ndarray | None = None):
        self.name = name
        self.type = type
        self.const = const
        self.producer: Node | None = None
        self.index = 0  # which output of the producer
        self._uses: list[tuple[Node, int]] = []

    @property
    def is_constant(self) -> bool:
        return self.const is not None

    @property
    def uses(self) -> list[tuple[Node, int]]:
        """(node, input index) pairs that read this value."""
        return list(self._uses)

    @property
    def users(self) -> list[Node]:
        """Nodes that read this value, each once, in use order."""
        return list(dict.fromkeys(n for n, _ in self._uses))

    def replace_all_uses_with(self, other: Value) -> None:
        """Make every reader of this value read `other` instead (graph outputs are the caller's)."""
        for node, i in list(self._uses):
            node.set_input(i, other)

    def __repr__(self) -> str:
        kind = "const " if self.is_constant else ""
        return f"%{self.name}: {kind}{self.type}"


class Node:
    """One operation. `op` is an ONNX op name (ONNX semantics) or an `edlc.*` name; `meta`
    carries per-node facts (provenance, quantization parameters) through copies."""

    def __init__(
        self,
        op: str,
        inputs: Sequence[Value | None],
        outputs: Sequence[Value],
        attrs: dict[str, Any] | None = None,
        name: str = "",
        domain: str = "",
    ):
        self.op = op
        self.domain = domain
        self.name = name
        self.attrs: dict[str, Any] = dict(attrs or {})
        self.meta: dict[str, Any] = {}
        self._inputs: list[Value | None] = []
        for v in inputs:
            self._append_input(v)
        self.outputs: list[Value] = list(outputs)
        for i, v in enumerate(self.outputs):
            v.producer, v.index = self, i

    @property
    def inputs(self) -> tuple[Value | None, ...]:
        """Inputs in order; None marks an omitted optional input."""
        return tuple(self._inputs)

    def _append_input(self, v: Value | None) -> None:
        if v is not None:
            v._uses.append((self, len(self._inputs)))
        self._inputs.append(v)

    def set_input(self, i: int, v: Value | None) -> None:
        old = self._inputs[i]
        if old is not None:
            old._uses.remove((self, i))
        self._inputs[i] = v
        if v is not None:
            v._uses.append((self, i))

    def set_inputs(self, values: Sequence[Value | None]) -> None:
        self.drop_inputs()
        for v in values:
            self._append_input(v)

    def drop_inputs(self) -> None:
        """Unlink this node from the values it reads (before it is removed)."""
        for i, v in enumerate(self._inputs):
            if v is not None:
                v._uses.remove((self, i))
        self._inputs = []

    @property
    def subgraphs(self) -> list[Graph]:
        """Graphs held in attributes (If branches, Loop and Scan bodies)."""
        out: list[Graph] = []
        for a in self.attrs.values():
            if isinstance(a, Graph):
                out.append(a)
            elif isinstance(a, list) and a and isinstance(a[0], Graph):
                out.extend(a)
        return out

    def captured_values(self) -> list[Value]:
        """Outer-scope values that this node's subgraphs read (implicit inputs)."""
        captured: dict[int, Value] = {}
        for sub in self.subgraphs:
            for v in sub.free_values():
                captured[id(v)] = v
        return list(captured.values())

    @property
    def qualified_op(self) -> str:
        return f"{self.domain}::{self.op}" if self.domain not in ("", "ai.onnx") else self.op

    def __repr__(self) -> str:
        return f"<Node {self.name or '?'}: {self.qualified_op}>"


class Graph:
    """Owns nodes in topological order, graph inputs and outputs. Constants are values with
    `const` set and no producer; they live inline in the nodes that read them."""

    def __init__(self, name: str = "graph", opset: dict[str, int] | None = None, parent: Graph | None = None):
        self.name = name
        self.opset: dict[str, int] = dict(opset or {"": 17})
        self.nodes: list[Node] = []
        self.inputs: list[Value] = []
        self.outputs: list[Value] = []
        self.parent = parent
        # One name space for the whole model, subgraphs included (ONNX requires it).
        self._names: set[str] = parent._names if parent is not None else set()
        self._counter = parent._counter if parent is not None else itertools.count()

    # ---- naming ----------------------------------------------------------------------------
    def unique_name(self, hint: str = "v") -> str:
        name = hint or "v"
        while name in self._names:
            name = f"{hint}_{next(self._counter)}"
        self._names.add(name)
        return name

    # ---- building --------------------------------------------------------------------------
    def add_input(self, name: str, type: TensorType) -> Value:
        v = Value(self.unique_name(name), type)
        self.inputs.append(v)
        return v

    def constant(self, array: np.ndarray, name: str = "const") -> Value:
        array = np.asarray(array)
        return Value(self.unique_name(name), TensorType.of(array), const=array)

    def add_node(
        self,
        op: str,
        inputs: Sequence[Value | None],
        attrs: dict[str, Any] | None = None,
        *,
        num_outputs: int = 1,
        output_types: Sequence[TensorType | None] | None = None,
        output_names: Sequence[str] | None = None,
        name: str | None = None,
        domain: str = "",
        before: Node | None = None,
    ) -> Node:
        """Create a node, give its outputs types (inferred when not given) and insert it at the
        end, or before `before` to keep the order topological."""
        if output_names is not None:
            num_outputs = len(output_names)
        names = output_names or [f"{name or op.lower()}_out{i}" if num_outputs > 1 else (name or op.lower()) for i in range(num_outputs)]
        outputs = [Value(self.unique_name(n), None) for n in names]
        node = Node(op, inputs, outputs, attrs, name=self.unique_node_name(name or op), domain=domain)
        if output_types is None:
            from edlc.ir.ops import infer_types

            output_types = infer_types(node, self.opset)
        for v, t in zip(outputs, output_types, strict=True):
            v.type = t
        self.insert(node, before)
        return node

    def unique_node_name(self, hint: str) -> str:
        taken = {n.name for n in self.all_nodes()}
        if hint not in taken:
            return hint
        for i in itertools.count(1):
            if f"{hint}_{i}" not in taken:
                return f"{hint}_{i}"
        raise AssertionError("unreachable")

    def insert(self, node: Node, before: Node | None = None) -> None:
        if before is None:
            self.nodes.append(node)
        else:
            self.nodes.insert(self.nodes.index(before), node)

    def remove_node(self, node: Node) -> None:
        """Remove a node whose outputs nobody reads any more."""
        for v in node.outputs:
            if v._uses or v in self.outputs:
                users = [u.name for u in v.users] + (["<graph output>"] if v in self.outputs else [])
                raise ValueError(f"cannot remove node '{node.name}': output '{v.name}' is still used by {users}")
        node.drop_inputs()
        self.nodes.remove(node)

    def replace_all_uses(self, old: Value, new: Value) -> None:
        """Redirect readers and graph outputs from `old` to `new`."""
        old.replace_all_uses_with(new)
        self.outputs = [new if v is old else v for v in self.outputs]

    def freeze_input(self, name: str, array: np.ndarray) -> Value:
        """Turn graph input `name` into a constant holding `array` (e.g. shape-like inputs)."""
        old = self.input(name)
        array = np.asarray(array)
        want = old.type
        if want is not None and want.shape is not None and (
            len(want.shape) != array.ndim
            or any(isinstance(d, int) and d != s for d, s in zip(want.shape, array.shape))
        ):
            raise ModelError(f"freeze_input: '{name}' expects {want}, got array of shape {array.shape}")
        const = Value(old.name, TensorType.of(array), const=array)
        self.replace_all_uses(old, const)
        self.inputs.remove(old)
        return const

    # ---- lookup ----------------------------------------------------------------------------
    def input(self, name: str) -> Value:
        for v in self.inputs:
            if v.name == name:
                return v
        raise KeyError(f"graph has no input '{name}' (inputs: {[v.name for v in self.inputs]})")

    def all_nodes(self) -> Iterator[Node]:
        """Nodes of this graph and of every subgraph, depth first."""
        for n in self.nodes:
            yield n
            for sub in n.subgraphs:
                yield from sub.all_nodes()

    def values(self) -> Iterator[Value]:
        """Every value this graph defines or reads (inputs, constants, node outputs), once."""
        seen: set[int] = set()
        for v in itertools.chain(self.inputs, *(n.inputs for n in self.nodes), *(n.outputs for n in self.nodes), self.outputs):
            if v is not None and id(v) not in seen:
                seen.add(id(v))
                yield v

    def constants(self) -> list[Value]:
        return [v for v in self.values() if v.is_constant]

    def defined_values(self) -> set[int]:
        """ids of values this graph itself defines: inputs, node outputs and constants."""
        ids = {id(v) for v in self.inputs}
        for n in self.nodes:
            ids.update(id(v) for v in n.outputs)
        ids.update(id(v) for v in self.values() if v.is_constant)
        return ids

    def nested_output_ids(self) -> set[int]:
        """ids of the values that subgraphs below this graph's nodes (any depth) name as their
        outputs: redirecting uses does not reach those names, so passes keep such values."""
        ids: set[int] = set()
        for node in self.nodes:
            for sub in node.subgraphs:
                ids.update(id(v) for v in sub.outputs)
                ids |= sub.nested_output_ids()
        return ids

    def free_values(self) -> list[Value]:
        """Values read inside this graph (or its subgraphs) but defined outside it."""
        defined = self.defined_values()
        free: dict[int, Value] = {}
        for n in self.nodes:
            for v in itertools.chain(n.inputs, n.captured_values()):
                if v is not None and id(v) not in defined:
                    free[id(v)] = v
        for v in self.outputs:
            if id(v) not in defined:
                free[id(v)] = v
        return list(free.values())

    # ---- order and checks ------------------------------------------------------------------
    def toposort(self) -> None:
        """Reorder nodes topologically (stable: keeps the current order where it is valid)."""
        producer_of = {id(v): n for n in self.nodes for v in n.outputs}
        state: dict[int, int] = {}
        order: list[Node] = []

        def deps(n: Node) -> list[Node]:
            vals = [v for v in itertools.chain(n.inputs, n.captured_values()) if v is not None]
            return [producer_of[id(v)] for v in vals if id(v) in producer_of]

        for root in self.nodes:
            stack = [(root, iter(deps(root)))]
            if state.get(id(root)) == 2:
                continue
            state[id(root)] = 1
            while stack:
                node, it = stack[-1]
                nxt = next(it, None)
                if nxt is None:
                    stack.pop()
                    state[id(node)] = 2
                    order.append(node)
                elif state.get(id(nxt)) == 1:
                    raise ModelError(f"graph '{self.name}' has a cycle through node '{nxt.name}' ({nxt.op})")
                elif state.get(id(nxt)) is None:
                    state[id(nxt)] = 1
                    stack.append((nxt, iter(deps(nxt))))
        self.nodes = order

    def verify(self) -> None:
        from edlc.ir.verifier import verify

        verify(self)

    def copy(self) -> Graph:
        """A deep copy (constants' arrays are shared: they are never mutated in place)."""
        from edlc.ir.copy import copy_graph

        return copy_graph(self)

    # ---- views -----------------------------------------------------------------------------
    def to_networkx(self):
        """A networkx.DiGraph view (node objects as vertices, value edges) for graph analyses."""
        import networkx as nx

        g = nx.DiGraph()
        g.add_nodes_from(self.nodes)
        producer_of = {id(v): n for n in self.nodes for v in n.outputs}
        for n in self.nodes:
            for v in itertools.chain(n.inputs, n.captured_values()):
                if v is not None and id(v) in producer_of:
                    g.add_edge(producer_of[id(v)], n, value=v)
        return g

    def to_onnx(self, decompose: bool = True):
        """Export as an onnx.ModelProto: edlc ops with a standard form are written in it (so
        onnxruntime can run the result), others stay in the 'edlc' domain."""
        from edlc.frontend.onnx import to_onnx

        return to_onnx(self, decompose=decompose)

    def op_histogram(self, nested: bool = False) -> dict[str, int]:
        """Op -> count over the top-level nodes (with `nested`, subgraphs and fused bodies too)."""
        hist: dict[str, int] = {}
        for n in (self.all_nodes() if nested else self.nodes):
            hist[n.qualified_op] = hist.get(n.qualified_op, 0) + 1
        return dict(sorted(hist.items(), key=lambda kv: (-kv[1], kv[0])))

    def __str__(self) -> str:
        from edlc.ir.printer import format_graph

        return format_graph(self)

    def __repr__(self) -> str:
        return f"<Graph {self.name}: {len(self.nodes)} nodes>"
