"""Lowering of the ops edlc's fusion passes create.

`edlc.fused` holds a body graph (an anchor op and its epilogues). It lowers to a private Relax
function marked `Primitive`, called from `main`: TVM's FuseOps leaves such a function alone and
FuseTIR turns it into one PrimFunc, so edlc's fusion decision is exactly one kernel.
"""

from __future__ import annotations

from edlc.ir.graph import Graph, Node
from edlc.lower import LowerContext, _lower_node, register_lowering


def emit_primitive(ctx: LowerContext, body: Graph, inputs: list, name: str):
    """Lower `body` into its own Primitive function and call it; returns the call's value.

    Falls back to lowering the body inline when a rule inside it added functions of its own
    (emit_te kernels) that cannot move between BlockBuilders."""
    from tvm import relax

    sub = LowerContext(body, parent=ctx)
    params = [sub.new_input(v) for v in body.inputs]
    fname = "f"
    with sub.bb.function(fname, attrs={"Primitive": True}, private=True):
        with sub.bb.dataflow():
            for n in body.nodes:
                _lower_node(sub, n)
            outs = [sub.expr(v) for v in body.outputs]
            out = sub.bb.emit_output(outs[0] if len(outs) == 1 else relax.Tuple(outs))
        sub.bb.emit_func_output(out, params=params + [var for var, _ in sub.captured])
    mod = sub.bb.get()
    if len(mod.functions) != 1:
        return _inline(ctx, body, inputs)
    gv = ctx.bb.add_func(mod[fname], ctx.fresh(f"fused_{name}"))
    call = ctx.emit(relax.Call(gv, list(inputs) + [outer for _, outer in sub.captured]))
    if len(body.outputs) == 1:
        return call
    return [ctx.emit(relax.TupleGetItem(call, i)) for i in range(len(body.outputs))]


def _inline(ctx: LowerContext, body: Graph, inputs: list):
    for v, e in zip(body.inputs, inputs):
        ctx.bind(v, e)
    for n in body.nodes:
        _lower_node(ctx, n)
    outs = [ctx.expr(v) for v in body.outputs]
    return outs[0] if len(outs) == 1 else outs


@register_lowering("fused", "edlc")
def fused(ctx: LowerContext, node: Node, inputs: list):
    return emit_primitive(ctx, node.attrs["body"], inputs, node.name)


def lower_by_decomposition(ctx: LowerContext, node: Node, inputs: list):
    """Lower an edlc op through its standard-ONNX decomposition, as one kernel."""
    from edlc.ir.ops import op_def

    body = Graph(f"{node.name}.body", ctx.graph.opset)
    args = [body.add_input(v.name, v.type) for v in node.inputs if v is not None]
    it = iter(args)
    copy = body.add_node(node.op, [None if v is None else next(it) for v in node.inputs],
                         dict(node.attrs), output_types=[v.type for v in node.outputs],
                         name=node.name, domain=node.domain)
    body.outputs = op_def(node.op, node.domain).decompose(body, copy)
    body.remove_node(copy)
    return emit_primitive(ctx, body, [e for e in inputs if e is not None], node.name)


@register_lowering("Attention", "edlc")
def attention(ctx: LowerContext, node: Node, inputs: list):
    return lower_by_decomposition(ctx, node, inputs)


@register_lowering("Gelu", "edlc")
def gelu(ctx: LowerContext, node: Node, inputs: list):
    from tvm import relax

    if node.attrs.get("approximate", "none") == "tanh":
        return ctx.emit(relax.op.nn.gelu_tanh(inputs[0]))
    return ctx.emit(relax.op.nn.gelu(inputs[0]))
