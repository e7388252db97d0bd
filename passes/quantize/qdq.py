"""Import of already-quantized ONNX (QDQ form): a float Conv or MatMul whose activation and
constant weight arrive through DequantizeLinear (and whose output, after an optional bias Add
and ReLU/Clip, may be quantized again) becomes `edlc.qconv2d` / `edlc.qmatmul`, so it runs in
int8 rather than on dequantized floats. It runs first, before constant folding would turn the
dequantized weights into float constants. (QOperator QLinearConv/QLinearMatMul lower as is;
MatMulInteger and ConvInteger become the same ops here: edlc.passes.quantize.integer.)

    before: %x = DequantizeLinear(%xq, s, z); %w = DequantizeLinear(%w8, ws, 0)
            %y = Conv(%x, %w, %b); %r = Relu(%y); %q = QuantizeLinear(%r, ys, yz)
    after:  %q = edlc.qconv2d[clip_min=0](%xq, s, z, %w8, ws, 0, ys, yz, %b_int32)

Float elementwise ops after such an op (a residual Add of a dequantized tensor, the ReLU after
it, and their QuantizeLinear) then move into its epilogue (edlc.passes.quantize.epilogue).
"""

from __future__ import annotations

import numpy as np

from edlc.ir.graph import Graph, Node, Value
from edlc.pass_manager import PassResult, register_pass
from edlc.passes.quantize.epilogue import fold_epilogues
from edlc.passes.quantize.integer import import_integer_ops
from edlc.passes.quantize.layers import _activation, _single_user
from edlc.passes.quantize.params import bias_scale, quantize_bias
from edlc.passes.quantize.rewrite import int8_maxpools

Q_TYPES = ("uint8", "int8")


def _dq(v: Value | None, *, const_data: bool = False) -> Node | None:
    """The DequantizeLinear producing `v`, with constant scale and zero point (and data)."""
    n = v.producer if v is not None else None
    if n is None or n.domain or n.op != "DequantizeLinear":
        return None
    if any(x is not None and not x.is_constant for x in n.inputs[1:]):
        return None
    if const_data and not n.inputs[0].is_constant:
        return None
    return n


def _zp(n: Node) -> Value | None:
    return n.inputs[2] if len(n.inputs) > 2 else None


def _weight_ok(dq: Node, axis: int) -> str | None:
    w, s = dq.inputs[0], dq.inputs[1]
    if w.const.dtype != np.int8:
        return "the weight is not int8"
    if s.const.size > 1 and dq.attrs.get("axis", 1) % w.const.ndim != axis:
        return "the weight is not quantized per output channel"
    return None


def _bias(node: Node, dx: Node, dw: Node, b: Value | None) -> np.ndarray | None | str:
    """The int32 bias at scale x_scale * w_scale, from DQ(int32) or a float constant."""
    if b is None:
        return None
    want = bias_scale(dx.inputs[1].const, dw.inputs[1].const)
    db = _dq(b, const_data=True)
    if db is not None and db.inputs[0].const.dtype == np.int32:
        z = _zp(db)
        if (z is None or not z.const.any()) and np.allclose(np.broadcast_to(db.inputs[1].const, want.shape), want, rtol=1e-5):
            return db.inputs[0].const.reshape(-1)
        return "the bias is not at scale x_scale * w_scale"
    if b.is_constant:
        return quantize_bias(b.const.reshape(-1), dx.inputs[1].const, dw.inputs[1].const)
    return "the bias is not a constant"


def _fold(graph: Graph, node: Node) -> bool:
    conv = node.op == "Conv"
    dx = _dq(node.inputs[0])
    dw = _dq(node.inputs[1], const_data=True)
    if dx is None or dw is None or dx.inputs[1].const.size != 1 or \
            dx.inputs[0].type is None or dx.inputs[0].type.dtype not in Q_TYPES:
        return False
    if _weight_ok(dw, 0 if conv else 1) or (not conv and dw.inputs[0].const.ndim != 2):
        return False
    nodes, out = [node], node.outputs[0]
    bias_v = node.inputs[2] if conv and len(node.inputs) > 2 else None
    nxt = _single_user(out, graph)
    if not conv and nxt is not None and nxt.op == "Add" and not nxt.domain:
        other = nxt.inputs[1] if nxt.inputs[0] is out else nxt.inputs[0]
        n = dw.inputs[0].const.shape[1]
        if other.type is not None and other.type.shape in ((n,), (1, n)):
            bias_v, out = other, nxt.outputs[0]
            nodes.append(nxt)
            nxt = _single_user(out, graph)
    bias = _bias(node, dx, dw, bias_v)
    if isinstance(bias, str):
        return False
    attrs = {k: v for k, v in node.attrs.items()} if conv else {}
    act = _activation(nxt) if nxt is not None else None
    if act is not None:
        nodes.append(nxt)
        out = nxt.outputs[0]
        nxt = _single_user(out, graph)
        if act[0] is not None:
            attrs["clip_min"] = act[0]
        if act[1] is not None:
            attrs["clip_max"] = act[1]
    qy: list[Value | None] = [None, None]
    if nxt is not None and not nxt.domain and nxt.op == "QuantizeLinear" and \
            all(x is None or (x.is_constant and x.const.size == 1) for x in nxt.inputs[1:]):
        qy = [nxt.inputs[1], _zp(nxt)]
        nodes.append(nxt)
        out = nxt.outputs[0]
    ins = [dx.inputs[0], dx.inputs[1], _zp(dx), dw.inputs[0], dw.inputs[1], _zp(dw), *qy]
    if bias is not None:
        ins.append(graph.constant(bias.astype(np.int32), f"{node.name}.bias_int32"))
    new = graph.add_node("qconv2d" if conv else "qmatmul", ins, attrs, domain="edlc",
                         name=f"{node.name}.int8", before=node, output_types=[out.type] if qy[0] is not None else None)
    out.name, new.outputs[0].name = new.outputs[0].name, out.name
    graph.replace_all_uses(out, new.outputs[0])
    for n in reversed(nodes):
        graph.remove_node(n)
    for d in (dx, dw):
        if d in graph.nodes and not any(v.uses or v in graph.outputs for v in d.outputs):
            graph.remove_node(d)
    return True


@register_pass("import-qdq", "run QDQ-quantized Conv/MatMul (DequantizeLinear -> op -> "
               "QuantizeLinear), MatMulInteger and ConvInteger as int8 ops", min_opt_level=0)
def import_qdq(graph: Graph) -> PassResult:
    changed = import_integer_ops(graph)
    for node in list(graph.nodes):
        if node in graph.nodes and not node.domain and node.op in ("Conv", "MatMul"):
            changed |= _fold(graph, node)
    if changed:
        int8_maxpools(graph)
        fold_epilogues(graph)  # a residual Add, ReLU, GELU after them: in the int8 kernel
    return PassResult(graph, changed)


__all__ = ["import_qdq"]
