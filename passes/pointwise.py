"""1x1 convs as matrix products over pixels (CPU targets, -O3).

A 1x1 stride-1 conv over NHWC data is a matrix product of the pixels [N*H*W, Cin] with the
weight [Cin, Cout]. As a conv, its register block runs along one image row (W pixels), which
7- and 14-wide rows divide badly; as a product, it runs along all N*H*W pixels, and the block
that suits the registers fits (MobileNetV2's 14x14 and 7x7 1x1 convs). The reshapes at the
group's edges change no data: they lower to views.

    before: %y = edlc.fused[kind="Conv+Add+Clip"](%x, %skip)
                 body: %c = edlc::Conv[1x1, NHWC, OHWI](%x, %w, %b); Add(%c, %skip); Clip
    after:  %x2 = Reshape(%x, [N*H*W, Cin]); %s2 = Reshape(%skip, [N*H*W, Cout])
            %y2 = edlc.fused[kind="MatMul+Add+Add+Clip"](%x2, %s2)
                  body: %m = MatMul(%x2, %wt); Add(%m, %b); Add(_, %s2); Clip
            %y = Reshape(%y2, [N, H, W, Cout])
"""

from __future__ import annotations

import numpy as np

from edlc.ir.copy import copy_graph
from edlc.ir.graph import Graph, Node, Value
from edlc.ir.types import TensorType
from edlc.pass_manager import PassResult, register_pass
from edlc.passes.fuse import conv_anchor


def _is_1x1(conv: Node) -> bool:
    w = conv.inputs[1]
    return w is not None and w.is_constant and tuple(w.const.shape[1:3]) == (1, 1)


def why_not(conv: Node, group: Node | None = None) -> str | None:
    """Why `conv` (the anchor of `group`, when given) stays a conv; None when it can go."""
    a = conv.attrs
    out = conv.outputs[0].type
    x = conv.inputs[0].type
    if out is None or x is None or not out.is_static or not x.is_static:
        return "shapes are not static"
    if out.dtype != "float32":
        return f"{out.dtype} output (only float32)"
    if a.get("layout", "NHWC") != "NHWC" or a.get("kernel_layout") != "OHWI":
        return "not NHWC with an OHWI weight"
    w = conv.inputs[1]
    if not _is_1x1(conv):
        return "not a 1x1 conv with a constant weight"
    if int(a.get("group", 1)) != 1:
        return "grouped"
    if any(int(s) != 1 for s in a.get("strides", [1, 1])) or \
            any(int(d) != 1 for d in a.get("dilations", [1, 1])) or \
            any(int(p) != 0 for p in a.get("pads", [0, 0, 0, 0])):
        return "strided, dilated or padded"
    if group is not None:
        body = group.attrs["body"]
        if conv.inputs[0] not in body.inputs:
            return "the conv reads its input through a prologue of its group"
        n, h, w_, _ = out.shape
        for v in [*body.inputs, *body.constants()]:
            if v is not w and v.type is not None and len(v.type.shape) == 4 and \
                    _flat(v.type.shape, (n, h, w_)) is None:
                return f"the group reads '{v.name}' of shape {list(v.type.shape)}"
        if any(len(v.type.shape) != 4 for v in body.outputs):
            return "an output of the group is not NHWC"
    return None


def _flat(shape, pixels) -> tuple[int, int] | None:
    """The 2-D shape a 4-D NHWC value takes: [N*H*W, C] over the pixels, [1, C] broadcast."""
    if tuple(shape[:3]) == tuple(pixels):
        return (int(np.prod(pixels)), int(shape[3]))
    if tuple(shape[:3]) == (1, 1, 1):
        return (1, int(shape[3]))
    return None


def _reshape(graph: Graph, v: Value, shape, before: Node, name: str) -> Value:
    """`v` in `shape`: a new Reshape, or the value a Reshape made `v` from where that already
    has the shape (a 1x1 conv group reading another's output)."""
    src = v.producer.inputs[0] if v.producer is not None and v.producer.op == "Reshape" \
        and not v.producer.domain else None
    if src is not None and src.type is not None and tuple(src.type.shape) == tuple(shape):
        return src
    target = graph.constant(np.array(shape, np.int64), f"{name}_shape")
    return graph.add_node("Reshape", [v, target], name=name, before=before,
                          output_types=[TensorType(tuple(shape), v.type.dtype)]).outputs[0]


def _matmul(body: Graph, conv: Node, x: Value) -> Value:
    """MatMul (+ bias Add) in `body` before `conv`, reading `x`; returns its output."""
    w = conv.inputs[1].const
    wt = body.constant(np.ascontiguousarray(w.reshape(w.shape[0], -1).T),
                       f"{conv.inputs[1].name}_matmul")
    rows = x.type.shape[0]
    ty = TensorType((rows, int(w.shape[0])), "float32")
    y = body.add_node("MatMul", [x, wt], name=conv.name, before=conv, output_types=[ty]).outputs[0]
    if len(conv.inputs) > 2 and conv.inputs[2] is not None:
        y = body.add_node("Add", [y, conv.inputs[2]], name=f"{conv.name}/bias", before=conv,
                          output_types=[ty]).outputs[0]
    return y


def _rewrite_conv(graph: Graph, conv: Node) -> None:
    n, h, w, cout = conv.outputs[0].type.shape
    x = conv.inputs[0]
    x2 = _reshape(graph, x, _flat(x.type.shape, (n, h, w)), conv, f"{conv.name}/pixels")
    y2 = _matmul(graph, conv, x2)
    y = _reshape(graph, y2, (n, h, w, cout), conv, f"{conv.name}/nhwc")
    graph.replace_all_uses(conv.outputs[0], y)
    graph.remove_node(conv)


def _rewrite_group(graph: Graph, group: Node) -> None:
    body = copy_graph(group.attrs["body"], parent=graph)
    conv = body.nodes[0]
    n, h, w, _ = conv.outputs[0].type.shape
    pixels = (n, h, w)
    external = list(group.inputs)
    for k, (bv, v) in enumerate(zip(body.inputs, group.inputs)):
        if len(v.type.shape) == 4:
            external[k] = _reshape(graph, v, _flat(v.type.shape, pixels), group,
                                   f"{group.name}/{bv.name}/pixels")
            bv.type = external[k].type
    for c in body.constants():
        if c is not conv.inputs[1] and c.type is not None and len(c.type.shape) == 4:
            c.const = c.const.reshape(_flat(c.const.shape, pixels))
            c.type = TensorType(c.const.shape, c.type.dtype)
    y = _matmul(body, conv, conv.inputs[0])
    body.replace_all_uses(conv.outputs[0], y)
    body.remove_node(conv)
    kind = group.attrs["kind"].replace("Conv", "MatMul" + ("+Add" if y.producer.op == "Add" else ""), 1)
    new = graph.add_node("fused", external, {"body": body, "kind": kind}, domain="edlc",
                         name=group.name, before=group, num_outputs=len(group.outputs))
    for old, v in zip(group.outputs, new.outputs):
        graph.replace_all_uses(old, _reshape(graph, v, old.type.shape, group,
                                             f"{group.name}/nhwc{old.index}"))
    graph.remove_node(group)


@register_pass("pointwise-matmul", "1x1 stride-1 NHWC convs as matrix products over the pixels",
               min_opt_level=3, devices=("cpu",))
def pointwise_matmul(graph: Graph) -> PassResult:
    """Rewrite each eligible 1x1 conv (alone or the anchor of a fused group) as a MatMul over
    its pixels; each one left as a conv says why in the report."""
    report, changed = [], False
    for node in list(graph.nodes):
        conv = conv_anchor(node)
        if conv is None or not _is_1x1(conv):
            continue
        reason = why_not(conv, None if node is conv else node)
        if reason is not None:
            report.append(f"pointwise-matmul: conv '{node.name}' stays a conv: {reason}")
            continue
        (_rewrite_conv if node is conv else _rewrite_group)(graph, node)
        changed = True
    return PassResult(graph, changed, report)


__all__ = ["pointwise_matmul", "why_not"]
