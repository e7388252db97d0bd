"""Import of ONNX's integer ops, MatMulInteger and ConvInteger (what onnxruntime's dynamic
quantization emits after DynamicQuantizeLinear), onto `edlc.qmatmul` / `edlc.qconv2d` without
scales: their output is the exact int32 accumulator, as the ONNX ops define it, computed by the
int8 kernels.

    before: %y = ConvInteger(%x, %w_u8, %x_zp, %w_zp)        %x_zp computed at run time
    after:  %acc = edlc.qconv2d(%x, -, -, %w_s8, -, %w_zp - 128)
            %y = Sub(%acc, Mul(Cast(%x_zp, int32), %taps))

uint8 weights are shifted into int8 (w - 128 with zero point w_zp - 128: the same differences),
so a weight zero point of 128 (or an int8 weight without one) leaves the fast packed kernels
open. The int8 ops take constant zero points; an activation zero point computed at run time
(DynamicQuantizeLinear) or given per row is subtracted after the op instead:
sum((x - zx) * w') = sum(x * w') - zx * sum(w'), where sum(w') runs over the taps a window
reads (padding excluded: ConvInteger pads with the zero point). Where the weight or its zero
point is computed at run time the node stays: a MatMulInteger runs on TVM's int32 matmul, a
ConvInteger on edlc.lower.quantized.conv_integer (int16 operands); both exact.
"""

from __future__ import annotations

import numpy as np

from edlc.errors import LoweringError
from edlc.ir.graph import Graph, Node, Value
from edlc.passes.quantize.ops import conv2d_exact

CONV_ATTRS = ("strides", "dilations", "group", "kernel_shape")


def _input(node: Node, i: int) -> Value | None:
    return node.inputs[i] if i < len(node.inputs) else None


def _fail(node: Node, what: str) -> LoweringError:
    return LoweringError(f"node '{node.name}' ({node.op}): {what}")


def _signed(w: np.ndarray, zp: np.ndarray | None) -> tuple[np.ndarray, np.ndarray | None]:
    """An int8 weight and its zero point (None if zero) with the same differences w - zp."""
    z = np.zeros((), np.int16) if zp is None else np.asarray(zp).astype(np.int16)
    if w.dtype == np.uint8:
        w, z = (w.astype(np.int16) - 128).astype(np.int8), z - 128
    return w, (z.astype(np.int8) if np.any(z) else None)


def _per_channel(node: Node, zp: Value | None, channels: int, name: str) -> np.ndarray | None:
    """A constant weight zero point as a scalar or a [channels] vector."""
    if zp is None:
        return None
    if zp.const.size not in (1, channels):
        raise _fail(node, f"input '{name}' has shape {list(zp.const.shape)}; expected a scalar or "
                          f"{channels} values (one per output channel)")
    return zp.const.reshape(()) if zp.const.size == 1 else zp.const.reshape(-1)


def _op(graph: Graph, node: Node, op: str, x: Value, zx: Value | None, w: np.ndarray,
        zw: np.ndarray | None, attrs: dict) -> Value:
    """The int8 op (int32 output); a constant scalar activation zero point goes into it."""
    inside = zx is not None and zx.is_constant and zx.const.size == 1
    zx_in = graph.constant(zx.const.reshape(()), f"{node.name}.x_zero_point") if inside else None
    zw_in = None if zw is None else graph.constant(zw, f"{node.name}.w_zero_point")
    return graph.add_node(op, [x, None, zx_in, graph.constant(w, f"{node.name}.weight_int8"), None, zw_in],
                          attrs, domain="edlc", name=f"{node.name}.int8", before=node).outputs[0]


def _minus_zero_point(graph: Graph, node: Node, acc: Value, zx: Value, taps: np.ndarray,
                      per_row: bool = False) -> Value:
    """acc - zx * taps, in int32 (zx as [.., M, 1] where it is given per row)."""
    def add(op: str, ins: list, **attrs) -> Value:
        return graph.add_node(op, ins, attrs, name=f"{node.name}.zp.{op}", before=node).outputs[0]

    z = add("Cast", [zx], to=6)  # int32
    if per_row:
        z = add("Unsqueeze", [z, graph.constant(np.array([-1], np.int64), f"{node.name}.zp.axes")])
    t = add("Mul", [z, graph.constant(taps.astype(np.int32), f"{node.name}.zp.taps")])
    return add("Sub", [acc, t])


def _constant_weight(w: Value | None, zw: Value | None) -> bool:
    return w is not None and w.is_constant and (zw is None or zw.is_constant)


def _matmul(graph: Graph, node: Node) -> Value | None:
    a, b, za, zb = (_input(node, i) for i in range(4))
    if not _constant_weight(b, zb) or b.const.ndim != 2:
        return None  # a product by a run-time tensor: TVM's int32 MatMulInteger
    w, zw = _signed(b.const, _per_channel(node, zb, b.const.shape[1], "b_zero_point"))
    acc = _op(graph, node, "qmatmul", a, za, w, zw, {})
    if za is None or (za.is_constant and za.const.size == 1):
        return acc
    rank = za.type.rank if za.type is not None else None
    if rank is None or (rank >= 2 and a.type is not None and rank != a.type.rank):
        raise _fail(node, f"input 'a_zero_point' has rank {rank}; expected a scalar, [M] (per "
                          "row), or A's rank with a last dimension of 1")
    centered = w.astype(np.int32) - (0 if zw is None else zw.astype(np.int32))
    return _minus_zero_point(graph, node, acc, za, centered.sum(axis=0), per_row=rank == 1)


def _conv(graph: Graph, node: Node) -> Value | None:
    from edlc.passes.layout import explicit_pads

    x, wv, zx, zwv = (_input(node, i) for i in range(4))
    xt = x.type
    if xt is None or xt.rank != 4:
        raise _fail(node, f"input 'x' has rank {None if xt is None else xt.rank}; only 2-D "
                          "convolutions (rank 4: N, C, H, W) are supported")
    if zx is not None and (zx.type is None or zx.type.numel not in (None, 1)):
        raise _fail(node, "input 'x_zero_point' must be a scalar (per-tensor quantization)")
    if not _constant_weight(wv, zwv):
        return None  # edlc.lower.quantized.conv_integer: int16 operands, exact
    w, zw = _signed(wv.const, _per_channel(node, zwv, wv.const.shape[0], "w_zero_point"))
    pads = explicit_pads(node, w.shape[2:])
    if pads is None:
        raise _fail(node, f"auto_pad={node.attrs['auto_pad']} needs static spatial dims; input "
                          f"'x' has shape {list(xt.shape)}")
    attrs = {k: node.attrs[k] for k in CONV_ATTRS if k in node.attrs}
    attrs["pads"] = pads
    acc = _op(graph, node, "qconv2d", x, zx, w, zw, attrs)
    if zx is None or zx.is_constant:
        return acc
    centered = w.astype(np.float64) - (0 if zw is None else zw.reshape(-1, 1, 1, 1))
    if not any(pads):  # every window reads all its taps
        return _minus_zero_point(graph, node, acc, zx, centered.sum(axis=(1, 2, 3)).reshape(1, -1, 1, 1))
    if not all(isinstance(d, int) for d in xt.shape[1:]):
        raise _fail(node, f"a run-time 'x_zero_point' with pads needs static C, H, W; input 'x' "
                          f"has shape {list(xt.shape)}")
    # border windows read fewer taps: count them with the same conv over ones
    taps = conv2d_exact(np.ones((1, *xt.shape[1:])), centered, attrs.get("strides", [1, 1]), pads,
                        attrs.get("dilations", [1, 1]), int(attrs.get("group", 1)))
    return _minus_zero_point(graph, node, acc, zx, taps)


def import_integer_ops(graph: Graph) -> bool:
    """Rewrite every MatMulInteger and ConvInteger by a constant weight onto the int8 ops (see
    the module doc)."""
    changed = False
    for node in list(graph.nodes):
        if node.domain or node.op not in ("MatMulInteger", "ConvInteger"):
            continue
        out = _conv(graph, node) if node.op == "ConvInteger" else _matmul(graph, node)
        if out is None:
            continue
        old = node.outputs[0]
        old.name, out.name = out.name, old.name
        graph.replace_all_uses(old, out)
        graph.remove_node(node)
        changed = True
    return changed


__all__ = ["import_integer_ops"]
