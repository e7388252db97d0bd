"""Which output channels can be removed together: channel spaces, groups and the edits that
removing channels implies downstream.

Every Conv (group 1), Gemm and MatMul with a constant weight *produces* a channel space: its
output channels. Walking the graph in order, each value records its `Layout`: along which axis
its channels lie and which producers' channels they are (a Concat joins several, a plain input
part is `None`). Ops that keep channels apart (activations, pools, BatchNormalization, bias
and scale constants, depthwise convs, Flatten/Reshape that only merge trailing dims) pass the
layout on and note the per-channel constants to slice; a residual Add of two layouts ties
their producers into one *group* that must keep the same channel set. The next Conv, Gemm or
MatMul *consumes* the channels (its weight loses the matching input rows). Anything else that
reads a layout (a graph output, a Transpose, a Softmax over channels, ...) *freezes* its
groups: they keep every channel, and the report says why.

    %a = Conv(%x, %w1)            producer: group g1 (64 channels)
    %b = Relu(%a)                 layout g1 on axis 1
    %c = Conv(%b, %w2, %b2)       consumer of g1 (w2[:, kept_g1]); producer g2
    %d = Add(%c, %b)              ties g2 and g1: one group, one kept set
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from edlc.ir.graph import Graph, Node, Value

UNARY = frozenset({
    "Relu", "LeakyRelu", "Elu", "Selu", "Celu", "Sigmoid", "Tanh", "HardSigmoid", "HardSwish",
    "Softplus", "Softsign", "Clip", "Identity", "Dropout", "Erf", "Abs", "Neg", "Exp", "Log",
    "Sqrt", "Reciprocal", "Floor", "Ceil", "Round", "Sign", "Cast", "Gelu", "Mish", "ThresholdedRelu",
})
BINARY = frozenset({"Add", "Sub", "Mul", "Div", "Max", "Min", "Pow", "PRelu"})
EDLC_UNARY = frozenset({"Gelu", "SiLU"})
POOLS = frozenset({"MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool", "LpPool", "GlobalLpPool"})


@dataclass(frozen=True)
class Segment:
    """`count` consecutive channels of one group (`None`: channels nothing may remove)."""

    group: int | None
    count: int


@dataclass(frozen=True)
class Layout:
    """Where a value's channels lie: the axis, the segments along it in order, and how many
    consecutive elements each channel spans (more than 1 after a Flatten of [C, H, W])."""

    axis: int
    segments: tuple[Segment, ...]
    inner: int = 1

    @property
    def size(self) -> int:
        return sum(s.count for s in self.segments) * self.inner


@dataclass
class Producer:
    node: Node
    group: int
    channels: int
    kind: str  # conv | gemm | matmul


@dataclass
class Edit:
    """Slice input `index` of `node` along `axis` by the kept channels of `layout` (weights,
    biases, per-channel constants), or fix an attribute / a shape after the slice."""

    node: Node
    index: int
    axis: int
    layout: Layout
    what: str = "slice"  # slice | group-attr | reshape


@dataclass
class ChannelPlan:
    """The result of the analysis: producers, the groups they form, why some are frozen and
    the edits pruning implies."""

    producers: list[Producer] = field(default_factory=list)
    parent: dict[int, int] = field(default_factory=dict)
    frozen: dict[int, str] = field(default_factory=dict)  # group root -> why it keeps every channel
    edits: list[Edit] = field(default_factory=list)
    layouts: dict[int, Layout] = field(default_factory=dict)  # id(value) -> layout

    def find(self, g: int) -> int:
        while self.parent[g] != g:
            self.parent[g] = self.parent[self.parent[g]]
            g = self.parent[g]
        return g

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return
        self.parent[rb] = ra
        if rb in self.frozen:
            self.frozen.setdefault(ra, self.frozen.pop(rb))

    def freeze(self, layout: Layout, why: str) -> None:
        for s in layout.segments:
            if s.group is not None:
                self.frozen.setdefault(self.find(s.group), why)

    def groups(self) -> dict[int, list[Producer]]:
        """Group root -> its producers, in graph order."""
        out: dict[int, list[Producer]] = {}
        for p in self.producers:
            out.setdefault(self.find(p.group), []).append(p)
        return out


def _const(v: Value | None) -> np.ndarray | None:
    return v.const if v is not None and v.is_constant else None


def _static(v: Value) -> tuple[int, ...] | None:
    t = v.type
    if t is None or t.shape is None or not all(isinstance(d, int) for d in t.shape):
        return None
    return tuple(t.shape)


def _rank(v: Value) -> int | None:
    return v.type.rank if v.type is not None else None


class _Walker:
    def __init__(self, graph: Graph, skip: set[str]):
        self.graph = graph
        self.skip = skip
        self.plan = ChannelPlan()

    def layout(self, v: Value | None) -> Layout | None:
        return None if v is None else self.plan.layouts.get(id(v))

    def set(self, v: Value, layout: Layout | None) -> None:
        if layout is not None:
            self.plan.layouts[id(v)] = layout

    def freeze_inputs(self, node: Node, why: str) -> None:
        for v in node.inputs:
            lay = self.layout(v)
            if lay is not None:
                self.plan.freeze(lay, why)

    # ---- producers -------------------------------------------------------------------------
    def new_group(self, node: Node, channels: int, kind: str) -> Segment:
        g = len(self.plan.producers)
        self.plan.parent[g] = g
        self.plan.producers.append(Producer(node, g, channels, kind))
        if node.name in self.skip:
            self.plan.frozen[g] = f"{node.name} excluded"
        return Segment(g, channels)

    def produce(self, node: Node, w_index: int, w_axis: int, kind: str, out_axis: int,
                bias_index: int | None) -> None:
        w = _const(node.inputs[w_index])
        seg = self.new_group(node, int(w.shape[w_axis]), kind)
        lay = Layout(out_axis, (seg,))
        self.plan.edits.append(Edit(node, w_index, w_axis, lay))
        if bias_index is not None and len(node.inputs) > bias_index and node.inputs[bias_index] is not None:
            b = node.inputs[bias_index]
            if b.const.ndim > 0 and b.const.shape[-1] != 1:
                self.plan.edits.append(Edit(node, bias_index, b.const.ndim - 1, lay))
        self.set(node.outputs[0], lay)

    # ---- the walk --------------------------------------------------------------------------
    def run(self) -> ChannelPlan:
        for node in self.graph.nodes:
            self.visit(node)
        for v in self.graph.outputs:
            lay = self.layout(v)
            if lay is not None:
                self.plan.freeze(lay, f"'{v.name}' is a graph output")
        return self.plan

    def visit(self, node: Node) -> None:
        ins = [self.layout(v) for v in node.inputs]
        if node.domain == "edlc" and node.op in EDLC_UNARY:
            if not self.unary(node, ins):
                self.freeze_inputs(node, f"read by {node.qualified_op} '{node.name}'")
            return
        if node.subgraphs or node.domain not in ("", "ai.onnx"):
            self.freeze_inputs(node, f"read by {node.qualified_op} '{node.name}'")
            for v in node.captured_values():
                if self.layout(v) is not None:
                    self.plan.freeze(self.layout(v), f"read inside '{node.name}'")
            return
        handler = getattr(self, f"op_{node.op}", None)
        if handler is None:
            if node.op in UNARY:
                handler = self.unary
            elif node.op in BINARY:
                handler = self.binary
            elif node.op in POOLS:
                handler = self.pool
        handled = handler is not None and handler(node, ins)
        if not handled and any(lay is not None for lay in ins):
            self.freeze_inputs(node, f"read by {node.op} '{node.name}'")

    def unary(self, node: Node, ins: list) -> bool:
        lay = ins[0]
        extra = node.inputs[1:]
        if any(v is not None and (_const(v) is None or _const(v).size != 1) for v in extra):
            return False
        if len([v for v in node.outputs if v.users or v in self.graph.outputs]) > 1:
            return False
        self.set(node.outputs[0], lay)
        return True

    def pool(self, node: Node, ins: list) -> bool:
        lay = ins[0]
        if lay is None:
            return True
        if lay.axis != 1 or lay.inner != 1 or any(v.users for v in node.outputs[1:]):
            return False
        self.set(node.outputs[0], lay)
        return True

    def binary(self, node: Node, ins: list) -> bool:
        out = node.outputs[0]
        out_rank = _rank(out)
        laid = [(i, lay) for i, lay in enumerate(ins) if lay is not None]
        if not laid:
            return True
        if out_rank is None or len(node.inputs) != 2:
            return False
        shifted = [(i, Layout(lay.axis + out_rank - _rank(node.inputs[i]), lay.segments, lay.inner))
                   for i, lay in laid]
        first = shifted[0][1]
        if any(lay.axis != first.axis or lay.inner != first.inner for _, lay in shifted):
            return False
        if len(shifted) == 2:
            a, b = shifted[0][1].segments, shifted[1][1].segments
            if [s.count for s in a] != [s.count for s in b]:
                return False
            for sa, sb in zip(a, b):
                if sa.group is None or sb.group is None:
                    if sa.group is not None or sb.group is not None:
                        self.plan.freeze(Layout(0, (sa, sb)), f"{node.op} '{node.name}' adds unprunable channels")
                else:
                    self.plan.union(sa.group, sb.group)
            self.set(out, first)
            return True
        other = node.inputs[1 - laid[0][0]]
        full = (1,) * (out_rank - (_rank(other) or 0)) + tuple(other.type.shape or ())
        dim = full[first.axis] if len(full) == out_rank else None
        if dim == 1:
            pass
        elif _const(other) is not None and dim == first.size:
            axis = first.axis - (out_rank - other.const.ndim)
            self.plan.edits.append(Edit(node, 1 - laid[0][0], axis, first))
        else:
            return False
        self.set(out, first)
        return True

    def op_BatchNormalization(self, node: Node, ins: list) -> bool:
        lay = ins[0]
        if lay is None:
            return True
        if lay.axis != 1 or lay.inner != 1 or len(node.outputs) > 1 and any(v.users for v in node.outputs[1:]):
            return False
        params = [v for v in node.inputs[1:5]]
        if any(_const(v) is None for v in params):
            return False
        for i in range(1, 5):
            self.plan.edits.append(Edit(node, i, 0, lay))
        self.set(node.outputs[0], lay)
        return True

    def op_Conv(self, node: Node, ins: list) -> bool:
        w = _const(node.inputs[1])
        bias = node.inputs[2] if len(node.inputs) > 2 else None
        if w is None or (bias is not None and _const(bias) is None):
            return False
        group = int(node.attrs.get("group", 1))
        lay = ins[0]
        if lay is not None and (lay.axis != 1 or lay.inner != 1):
            return False
        if group == 1:
            if lay is not None:
                self.plan.edits.append(Edit(node, 1, 1, lay))
            self.produce(node, 1, 0, "conv", 1, 2)
            return True
        if lay is not None and group == lay.size and w.shape[0] == group and w.shape[1] == 1:
            # depthwise: channel c in, channel c out; the weight and bias follow the input
            self.plan.edits.append(Edit(node, 1, 0, lay))
            if bias is not None:
                self.plan.edits.append(Edit(node, 2, 0, lay))
            self.plan.edits.append(Edit(node, -1, 0, lay, "group-attr"))
            self.set(node.outputs[0], lay)
            return True
        return lay is None

    def op_Gemm(self, node: Node, ins: list) -> bool:
        w = _const(node.inputs[1])
        c = node.inputs[2] if len(node.inputs) > 2 else None
        if w is None or w.ndim != 2 or (c is not None and _const(c) is None):
            return False
        trans_b = int(node.attrs.get("transB", 0))
        lay = ins[0]
        if lay is not None:
            if node.attrs.get("transA", 0) or lay.axis != 1:
                return False
            self.plan.edits.append(Edit(node, 1, 1 if trans_b else 0, lay))
        self.produce(node, 1, 0 if trans_b else 1, "gemm", 1, 2)
        return True

    def op_MatMul(self, node: Node, ins: list) -> bool:
        w = _const(node.inputs[1])
        if w is None or w.ndim != 2 or ins[1] is not None:
            return False
        lay = ins[0]
        rank = _rank(node.inputs[0])
        if lay is not None:
            if rank is None or lay.axis != rank - 1:
                return False
            self.plan.edits.append(Edit(node, 1, 0, lay))
        out_rank = _rank(node.outputs[0])
        if out_rank is None or out_rank < 2:
            return lay is None
        self.produce(node, 1, 1, "matmul", out_rank - 1, None)
        return True

    def op_Concat(self, node: Node, ins: list) -> bool:
        if all(lay is None for lay in ins):
            return True
        rank = _rank(node.outputs[0])
        axis = int(node.attrs.get("axis", 0)) % rank if rank else None
        segments: list[Segment] = []
        for v, lay in zip(node.inputs, ins):
            if lay is None:
                shape = v.type.shape if v.type is not None else None
                if shape is None or not isinstance(shape[axis], int):
                    return False
                segments.append(Segment(None, shape[axis]))
            elif lay.axis != axis or lay.inner != 1:
                return False
            else:
                segments.extend(lay.segments)
        self.set(node.outputs[0], Layout(axis, tuple(segments)))
        return True

    def op_Flatten(self, node: Node, ins: list) -> bool:
        lay = ins[0]
        if lay is None:
            return True
        t = node.inputs[0].type
        shape = t.shape if t is not None else None
        if not shape:
            return False
        f = int(node.attrs.get("axis", 1)) % len(shape)
        if not all(isinstance(d, int) for d in shape[f:]):  # the batch dims before may be symbolic
            return False
        if lay.axis < f or int(np.prod(shape[f:lay.axis])) != 1:
            return False
        inner = lay.inner * int(np.prod(shape[lay.axis + 1:]))
        self.set(node.outputs[0], Layout(1, lay.segments, inner))
        return True

    def op_Reshape(self, node: Node, ins: list) -> bool:
        lay = ins[0]
        if lay is None:
            return True
        s_in, s_out = _static(node.inputs[0]), _static(node.outputs[0])
        shape = _const(node.inputs[1])
        if s_in is None or s_out is None or shape is None:
            return False
        before = int(np.prod(s_in[:lay.axis]))
        block = lay.inner * int(np.prod(s_in[lay.axis + 1:]))
        for k in range(len(s_out)):
            if int(np.prod(s_out[:k])) != before:
                continue
            after = int(np.prod(s_out[k + 1:]))
            if block % after or s_out[k] != lay.size // lay.inner * (block // after):
                continue
            new = Layout(k, lay.segments, block // after)
            if shape[k] > 0:
                self.plan.edits.append(Edit(node, 1, k, new, "reshape"))
            elif shape[k] == 0 and k != lay.axis:
                continue
            self.set(node.outputs[0], new)
            return True
        return False


def analyze(graph: Graph, skip: set[str] | None = None) -> ChannelPlan:
    """Producers, groups, frozen groups (with why) and the edits channel pruning implies."""
    return _Walker(graph, set(skip or ())).run()


__all__ = ["ChannelPlan", "Edit", "Layout", "Producer", "Segment", "analyze"]
