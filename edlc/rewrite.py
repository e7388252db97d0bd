"""The pattern rewriter: match a small subgraph by op names and predicates, check it (a failed
check says why), replace it. Every fusion and peephole in `edlc.passes` is a rule; user passes
use the same three parts.

    from edlc.rewrite import Rule, apply_rules, op, var

    x = var("x")
    silu = Rule(
        "fuse-silu",
        pattern=op("Mul", x, op("Sigmoid", x)),          # the same var twice: the same value
        rewrite=lambda b, m: b.op("edlc.SiLU", [m["x"]]),  # the new value replaces the Mul's
    )
    stats = apply_rules(graph, [silu])                  # stats.applied, stats.rejected

A pattern is a tree of `op(...)` (one or several op names, `edlc.name` for edlc ops, input
patterns, attribute predicates, an optional capture name; one op pattern object used twice
binds one node), `var(...)` (any value, optionally with a predicate) and
`const(...)` (a constant value). `op("Conv", x, w, ...)` lets the node have further inputs.
Add and Mul match their inputs in either order. Nodes inside the match other than the root
must feed only the match: a value read elsewhere keeps its producer, and the rejection says
which node reads it.

`check(match)` returns None to accept or a reason string to reject; rejections are collected
(rule, node, reason) so passes can print a "why not fused" report.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from edlc.ir.graph import Graph, Node, Value
from edlc.ir.types import TensorType

COMMUTATIVE = frozenset({"Add", "Mul", "Max", "Min", "Sum", "And", "Or", "Xor", "Equal"})

Predicate = Callable[[Value], bool]
AttrPredicate = Callable[[Any], bool]


class Pattern:
    """Base of pattern nodes."""


@dataclass(eq=False)
class VarPattern(Pattern):
    name: str | None = None
    predicate: Predicate | None = None
    constant: bool = False


@dataclass(eq=False)
class OpPattern(Pattern):
    ops: tuple[str, ...]
    inputs: tuple[Pattern | None, ...]
    attrs: dict[str, Any] = field(default_factory=dict)  # value, or a predicate on the value
    name: str | None = None
    domain: str = ""
    more_inputs: bool = False  # `...` at the end: the node may have further inputs
    output: int = 0  # which output of the node the parent reads


def var(name: str | None = None, predicate: Predicate | None = None) -> VarPattern:
    """Any value (captured under `name`; the same name twice must be the same value)."""
    return VarPattern(name, predicate)


def const(name: str | None = None, predicate: Predicate | None = None) -> VarPattern:
    """A constant value (its array is `match[name].const`)."""
    return VarPattern(name, predicate, constant=True)


def op(ops: str | Sequence[str], *inputs: Pattern | None, name: str | None = None,
       domain: str = "", output: int = 0, **attrs: Any) -> OpPattern:
    """A node whose op is `ops` (or one of them) reading `inputs`; a trailing `...` admits more
    inputs. Keyword arguments constrain attributes: a value to equal, or a predicate."""
    more = bool(inputs) and inputs[-1] is Ellipsis
    if more:
        inputs = inputs[:-1]
    names = (ops,) if isinstance(ops, str) else tuple(ops)
    return OpPattern(names, tuple(inputs), attrs, name, domain, more, output)


class Match:
    """The values and nodes a pattern bound: `m["x"]` is a Value, `m.node("conv")` a Node."""

    def __init__(self, root: Node):
        self.root = root
        self.values: dict[str, Value] = {}
        self.named_nodes: dict[str, Node] = {}
        self.nodes: list[Node] = []  # every matched node, root first
        self.bound: dict[int, Node] = {}  # id(op pattern) -> node: a pattern used twice is one node

    def __getitem__(self, name: str) -> Value:
        return self.values[name]

    def get(self, name: str) -> Value | None:
        return self.values.get(name)

    def node(self, name: str) -> Node:
        return self.named_nodes[name]

    def has_node(self, name: str) -> bool:
        return name in self.named_nodes

    def copy(self) -> Match:
        m = Match(self.root)
        m.values, m.named_nodes, m.nodes = dict(self.values), dict(self.named_nodes), list(self.nodes)
        m.bound = dict(self.bound)
        return m


class _NoMatch(Exception):
    pass


def _attr_ok(node: Node, key: str, want: Any) -> bool:
    has = key in node.attrs
    got = node.attrs.get(key)
    if callable(want):
        return bool(want(got))
    if not has:
        return want is None
    if isinstance(got, np.ndarray) or isinstance(want, np.ndarray):
        return np.array_equal(np.asarray(got), np.asarray(want))
    return got == want


def _match_value(p: Pattern | None, v: Value | None, m: Match) -> list[Match]:
    """All ways `v` can match `p`, each extending a copy of `m`."""
    if p is None:
        return [m] if v is None else []
    if v is None:
        return []
    if isinstance(p, VarPattern):
        if p.constant and not v.is_constant:
            return []
        if p.predicate is not None and not p.predicate(v):
            return []
        if p.name is not None:
            bound = m.values.get(p.name)
            if bound is not None:
                return [m] if bound is v else []
            m = m.copy()
            m.values[p.name] = v
        return [m]
    assert isinstance(p, OpPattern)
    node = v.producer
    if node is None or v.index != p.output:
        return []
    return _match_node(p, node, m)


def _op_matches(p: OpPattern, node: Node) -> bool:
    """`op("Conv")` matches ONNX Conv; `op("edlc.fused")` or `op("fused", domain="edlc")` the
    edlc op."""
    if node.op in p.ops and (node.domain or "") == (p.domain or ""):
        return True
    return bool(node.domain) and f"{node.domain}.{node.op}" in p.ops


def _match_node(p: OpPattern, node: Node, m: Match) -> list[Match]:
    if id(p) in m.bound:
        return [m] if m.bound[id(p)] is node else []
    if not _op_matches(p, node):
        return []
    if not all(_attr_ok(node, k, want) for k, want in p.attrs.items()):
        return []
    if node in m.nodes:
        return []
    n_in = len(node.inputs)
    if n_in < len(p.inputs):
        # trailing optional inputs the node omits match a `None` pattern
        if any(q is not None for q in p.inputs[n_in:]):
            return []
    elif n_in > len(p.inputs) and not p.more_inputs and any(v is not None for v in node.inputs[len(p.inputs):]):
        return []
    m = m.copy()
    m.nodes.append(node)
    m.bound[id(p)] = node
    if p.name is not None:
        m.named_nodes[p.name] = node
    inputs = list(node.inputs) + [None] * (len(p.inputs) - n_in)
    orders = [list(range(len(p.inputs)))]
    if node.op in COMMUTATIVE and len(p.inputs) == 2:
        orders.append([1, 0])
    results: list[Match] = []
    for order in orders:
        partial = [m]
        for pi, vi in zip(range(len(p.inputs)), order):
            partial = [m2 for pm in partial for m2 in _match_value(p.inputs[pi], inputs[vi], pm)]
            if not partial:
                break
        results.extend(partial)
    return results


def match(pattern: OpPattern, node: Node) -> list[Match]:
    """Every way the pattern matches with `node` as its root (commutative orders included)."""
    return _match_node(pattern, node, Match(node))


def outside_use(graph: Graph, m: Match) -> str | None:
    """Why the match cannot be replaced as a whole: an inner node's output read elsewhere."""
    inside = set(map(id, m.nodes))
    for n in m.nodes[1:]:
        for v in n.outputs:
            if v in graph.outputs:
                return f"'{v.name}' (from {n.op} '{n.name}') is a graph output"
            for user in v.users:
                if id(user) not in inside:
                    return f"'{v.name}' (from {n.op} '{n.name}') is also read by {user.op} '{user.name}'"
    return None


class Builder:
    """Creates replacement nodes just before the match's root, keeping topological order."""

    def __init__(self, graph: Graph, before: Node):
        self.graph = graph
        self.before = before
        self.created: list[Node] = []
        self.wanted_names: dict[int, str] = {}  # node -> the name it asked for (maybe taken now)

    def op(self, op: str, inputs: Sequence[Value | None], attrs: dict[str, Any] | None = None, *,
           domain: str = "", num_outputs: int = 1, output_types: Sequence[TensorType | None] | None = None,
           name: str | None = None) -> Any:
        """Add a node; returns its output Value (or the list of them when several)."""
        if "." in op and not domain:
            domain, op = op.rsplit(".", 1)
        wanted = name or f"{self.before.name}/{op}"
        node = self.graph.add_node(op, inputs, attrs, num_outputs=num_outputs, output_types=output_types,
                                   name=wanted, domain=domain, before=self.before)
        self.created.append(node)
        self.wanted_names[id(node)] = wanted
        return node.outputs[0] if len(node.outputs) == 1 else list(node.outputs)

    def constant(self, array: Any, name: str = "const") -> Value:
        return self.graph.constant(np.asarray(array), name)


RewriteFn = Callable[[Builder, Match], "Value | Sequence[Value] | None"]
CheckFn = Callable[[Match], "str | None"]


@dataclass
class Rule:
    """pattern + check (None = accept, str = reason to reject) + rewrite (the new values for the
    root's outputs, in order; None declines without a reason)."""

    name: str
    pattern: OpPattern
    rewrite: RewriteFn
    check: CheckFn | None = None
    allow_outside_uses: bool = False  # the rewrite keeps inner nodes alive itself (e.g. fusion copies)


@dataclass
class Rejection:
    rule: str
    node: str
    op: str
    reason: str

    def __str__(self) -> str:
        return f"{self.rule}: {self.op} '{self.node}' not rewritten: {self.reason}"


@dataclass
class RewriteStats:
    applied: dict[str, int] = field(default_factory=dict)
    rejected: list[Rejection] = field(default_factory=list)

    @property
    def modified(self) -> bool:
        return any(self.applied.values())

    def report(self) -> list[str]:
        return [str(r) for r in self.rejected]


def _replace_root(graph: Graph, m: Match, new: Sequence[Value], b: Builder) -> None:
    old = [v for v in m.root.outputs]
    if len(new) != len(old):
        raise ValueError(f"rewrite of '{m.root.name}' gave {len(new)} values for {len(old)} outputs")
    for o, n in zip(old, new):
        if n is o:
            continue
        if n.type is None:
            n.type = o.type
        if o in graph.outputs or n.producer in b.created:
            # the new value takes the old name (the model's output names are its interface;
            # elsewhere it keeps printed graphs readable across rewrites)
            o.name, n.name = n.name, o.name
        graph.replace_all_uses(o, n)
    pending = list(m.nodes)  # remove whatever became dead; a shared inner node may die last
    while pending:
        dead = [n for n in pending if not any(v._uses or v in graph.outputs for v in n.outputs)]
        if not dead:
            break
        for n in dead:
            if n in graph.nodes:
                graph.remove_node(n)
            pending.remove(n)
    taken = {n.name for n in graph.nodes}
    for node in b.created:  # a name taken by a node now removed is free again
        wanted = b.wanted_names[id(node)]
        if node.name != wanted and wanted not in taken:
            taken.discard(node.name)
            node.name = wanted
            taken.add(wanted)


def _drop_created(graph: Graph, b: Builder) -> None:
    for n in reversed(b.created):
        if not any(v._uses for v in n.outputs):
            graph.remove_node(n)


def _try_rule(graph: Graph, rule: Rule, node: Node, stats: RewriteStats) -> bool:
    reasons: list[str] = []
    for m in match(rule.pattern, node):
        why = None if rule.allow_outside_uses else outside_use(graph, m)
        if why is None and rule.check is not None:
            why = rule.check(m)
        if why:
            reasons.append(why)
            continue
        b = Builder(graph, m.root)
        out = rule.rewrite(b, m)
        if out is None:
            _drop_created(graph, b)
            continue
        new = [out] if isinstance(out, Value) else list(out)
        if any(o in graph.outputs and o is not n and (n.producer is None or n in graph.outputs)
               for o, n in zip(m.root.outputs, new)):
            # a graph output would take another value's name: the model's interface would change
            _drop_created(graph, b)
            reasons.append("its output is a graph output and would be replaced by an input, "
                           "a constant or another output")
            continue
        _replace_root(graph, m, new, b)
        stats.applied[rule.name] = stats.applied.get(rule.name, 0) + 1
        return True
    if reasons:
        stats.rejected.append(Rejection(rule.name, node.name, node.op, reasons[0]))
    return False


def apply_rules(graph: Graph, rules: Sequence[Rule], max_rounds: int = 16,
                subgraphs: bool = True) -> RewriteStats:
    """Apply rules until none matches (or `max_rounds` sweeps); rejections of the last sweep
    are kept (earlier ones may have been resolved by later rewrites)."""
    stats = RewriteStats()
    for _ in range(max_rounds):
        stats.rejected = []
        changed = False
        for node in list(graph.nodes):
            if node not in graph.nodes:
                continue
            for rule in rules:
                if _try_rule(graph, rule, node, stats):
                    changed = True
                    break
        if not changed:
            break
    if subgraphs:
        for node in graph.nodes:
            if node.domain == "edlc" and node.op == "fused":
                continue  # a fused group's body is one kernel: leave it as fused
            for sub in node.subgraphs:
                inner = apply_rules(sub, rules, max_rounds, subgraphs)
                for k, n in inner.applied.items():
                    stats.applied[k] = stats.applied.get(k, 0) + n
                stats.rejected.extend(inner.rejected)
    return stats


__all__ = ["Builder", "Match", "Rejection", "RewriteStats", "Rule", "apply_rules", "const", "match",
           "op", "outside_use", "var"]
