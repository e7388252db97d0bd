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
    Kernels that rules inside the body emitted themselves (emit_te) move to the main module."""
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
    moved = {gv.name_hint: ctx.bb.add_func(f, gv.name_hint)
             for gv, f in mod.functions.items() if gv.name_hint != fname}
    func = retarget_call_tir(mod[fname], moved) if moved else mod[fname]
    gv = ctx.bb.add_func(func, ctx.fresh(f"fused_{name}"))
    call = ctx.emit(relax.Call(gv, list(inputs) + [outer for _, outer in sub.captured]))
    if len(body.outputs) == 1:
        return call
    return [ctx.emit(relax.TupleGetItem(call, i)) for i in range(len(body.outputs))]


def retarget_call_tir(func, mapping: dict):
    """`func` with each call_tir of a kernel named in `mapping` calling mapping[name] instead."""
    import tvm
    from tvm import relax
    from tvm.relax.expr_functor import PyExprMutator, mutator

    call_tir = tvm.ir.Op.get("relax.call_tir")

    @mutator
    class _Retarget(PyExprMutator):
        def visit_call_(self, op):
            call = super().visit_call_(op)
            kernel = call.args[0] if call.args else None
            if call.op.same_as(call_tir) and isinstance(kernel, relax.GlobalVar) \
                    and kernel.name_hint in mapping:
                return relax.Call(call.op, [mapping[kernel.name_hint]] + list(call.args[1:]),
                                  call.attrs, call.ty_args)
            return call

    return _Retarget().visit_expr(func)


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
                         dict(node.attrs), num_outputs=len(node.outputs),
                         output_types=[v.type for v in node.outputs], name=node.name,
                         domain=node.domain)
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


def lift_primitive_constants(mod):
    """Make the tensor constants inside Primitive functions parameters (FuseTIR rejects
    constants there), passing them from each call site. Runs after LegalizeOps, when every
    binding in a Primitive function is a call_tir."""
    import tvm
    from tvm import relax
    from tvm.relax.expr_functor import PyExprMutator, mutator


    lifted: dict = {}  # name -> (new global var, constants)
    kept, new_funcs = {}, {}
    for gv, f in mod.functions.items():
        if isinstance(f, relax.Function) and f.attrs and "Primitive" in f.attrs:
            new, constants = _lift_constants(f)
            if constants:
                new_funcs[gv.name_hint] = (new, constants)
                continue
        kept[gv] = f
    if not new_funcs:
        return mod
    # a BlockBuilder gives the new functions GlobalVars typed with their new signatures
    bb = relax.BlockBuilder(tvm.IRModule(kept, attrs=mod.attrs, global_infos=mod.global_infos))
    for name, (new, constants) in new_funcs.items():
        lifted[name] = (bb.add_func(new, name), constants)

    @mutator
    class _Calls(PyExprMutator):
        def visit_call_(self, op):
            call = super().visit_call_(op)
            if isinstance(call.op, relax.GlobalVar) and call.op.name_hint in lifted:
                new_gv, constants = lifted[call.op.name_hint]
                return relax.Call(new_gv, list(call.args) + constants, call.attrs, call.ty_args)
            return call

    for gv, f in kept.items():
        if isinstance(f, relax.Function) and not (f.attrs and "Primitive" in f.attrs):
            bb.update_func(gv, _Calls().visit_expr(f))
    return bb.get()


def _lift_constants(f):
    """(function with its call_tir constant arguments as new params, those constants)."""
    import tvm
    from tvm import relax

    call_tir = tvm.ir.Op.get("relax.call_tir")
    constants: list = []
    params: list = []

    def param_for(c):
        for known, p in zip(constants, params):
            if known.same_as(c):
                return p
        constants.append(c)
        params.append(relax.Var(f"lifted_const{len(params)}", c.ty))
        return params[-1]

    blocks = []
    for block in f.body.blocks:
        bindings = []
        for b in block.bindings:
            v = b.value
            if isinstance(b, relax.VarBinding) and isinstance(v, relax.Call) and v.op.same_as(call_tir):
                fields = [param_for(x) if isinstance(x, tvm.ir.expr.Constant) else x for x in v.args[1].fields]
                v = relax.Call(v.op, [v.args[0], relax.Tuple(fields)] + list(v.args[2:]), v.attrs,
                               v.ty_args)
                b = relax.VarBinding(b.var, v)
            bindings.append(b)
        kind = relax.DataflowBlock if isinstance(block, relax.DataflowBlock) else relax.BindingBlock
        blocks.append(kind(bindings))
    if not constants:
        return f, []
    body = relax.SeqExpr(blocks, f.body.body)
    return relax.Function(list(f.params) + params, body, f.ret_ty, f.is_pure, f.attrs), constants
