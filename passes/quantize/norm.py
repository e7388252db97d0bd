"""LayerNormalization and the QuantizeLinear after it as one op, `edlc.qlayernorm`, lowered as
one kernel (edlc.lower.int8_norm).

In a quantized transformer every LayerNorm output is quantized for the next int8 matmuls (and
read as float by the residual Add after them). As ops of their own, the normalization is a
kernel per step (mean, subtract, square, mean, rsqrt, scale, shift) and the quantization one
more pass over memory; as one op it is one row-parallel pass that writes both.

    before: %y = LayerNormalization(%x, %g, %b) {axis=-1}; %q = QuantizeLinear(%y, s, z)
    after:  %y, %q = edlc.qlayernorm[float_output=1](%x, %g, %b, s, z) {axis=-1}

    qlayernorm(x, scale, bias?, y_scale, y_zero_point)  [axis, epsilon, float_output]
      y = LayerNormalization(x, scale, bias)      float32 (output 0 where float_output)
      q = QuantizeLinear(y, y_scale, y_zero_point)

Its decomposition is those two standard ops, so the QDQ export is unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from edlc.ir.graph import Graph, Node, Value
from edlc.ir.ops import register_op
from edlc.ir.types import TensorType
from edlc.passes.quantize.params import quantize

X, SCALE, BIAS, Y_SCALE, Y_ZP = range(5)
LN_ATTRS = ("axis", "epsilon", "stash_type")


def _is(node: Node | None, op: str) -> bool:
    return node is not None and not node.domain and node.op == op


def _layer_norm_node(node: Node, graph: Graph) -> Node:
    ins = [graph.add_input(f"in{i}", v.type) if v is not None else None for i, v in enumerate(node.inputs[:3])]
    return graph.add_node("LayerNormalization", ins, {k: v for k, v in node.attrs.items() if k in LN_ATTRS},
                          output_types=[TensorType(node.inputs[X].type.shape, node.inputs[X].type.dtype)])


def _type(node: Node) -> list[TensorType]:
    x = node.inputs[X].type
    zp = node.inputs[Y_ZP] if len(node.inputs) > Y_ZP else None
    q = TensorType(x.shape, zp.type.dtype if zp is not None else "uint8")
    return [TensorType(x.shape, x.dtype), q] if node.attrs.get("float_output", 0) else [q]


def _reference(node: Node, inputs: Sequence[np.ndarray | None]) -> list[np.ndarray]:
    from edlc.ir.ops import evaluate

    g = Graph("qlayernorm")
    (y,) = evaluate(_layer_norm_node(node, g), list(inputs[:3]), g.opset)
    y = np.asarray(y, np.float32)
    zp = inputs[Y_ZP] if len(inputs) > Y_ZP and inputs[Y_ZP] is not None else np.array(0, np.uint8)
    q = quantize(y, inputs[Y_SCALE], zp)
    return [y, q] if node.attrs.get("float_output", 0) else [q]


def _decompose(graph: Graph, node: Node) -> list[Value]:
    ln = graph.add_node("LayerNormalization", list(node.inputs[:3]),
                        {k: v for k, v in node.attrs.items() if k in LN_ATTRS},
                        name=f"{node.name}.layernorm", before=node)
    y = ln.outputs[0]
    q = graph.add_node("QuantizeLinear", [y, *node.inputs[Y_SCALE:Y_ZP + 1]], name=f"{node.name}.quantize",
                       before=node).outputs[0]
    return [y, q] if node.attrs.get("float_output", 0) else [q]


register_op("qlayernorm", "edlc", infer=_type, reference=_reference, decompose=_decompose,
            doc="LayerNormalization then per-tensor QuantizeLinear in one kernel; outputs [y, q] "
                "with float_output=1, else [q]")


def _per_tensor_quantize(node: Node) -> bool:
    if not _is(node, "QuantizeLinear") or len(node.inputs) < 2:
        return False
    s = node.inputs[1]
    z = node.inputs[2] if len(node.inputs) > 2 else None
    return _is(node, "QuantizeLinear") and s.is_constant and s.const.size == 1 and \
        (z is None or (z.is_constant and z.const.size == 1)) and "axis" not in node.attrs


def fuse_norm_quantize(graph: Graph) -> bool:
    """Each single-output float32 LayerNormalization (constant scale and bias) read by one
    per-tensor QuantizeLinear becomes an edlc.qlayernorm (which also outputs the float values
    where anything else reads them)."""
    changed = False
    for node in list(graph.nodes):
        if not _is(node, "LayerNormalization") or len(node.outputs) != 1 or \
                any(v is not None and not v.is_constant for v in node.inputs[1:]):
            continue
        y = node.outputs[0]
        quants = [u for u in y.users if _per_tensor_quantize(u) and u.inputs[0] is y]
        if len(quants) != 1 or y.type is None or not y.type.is_static or y.type.dtype != "float32" or \
                node.attrs.get("stash_type", 1) != 1:
            continue
        (quant,) = quants
        float_output = int(y in graph.outputs or len(y.uses) > 1)
        zp = quant.inputs[2] if len(quant.inputs) > 2 and quant.inputs[2] is not None else \
            graph.constant(np.array(0, np.uint8), f"{quant.name}.zero_point")
        ins = [node.inputs[X], node.inputs[SCALE], node.inputs[BIAS] if len(node.inputs) > BIAS else None,
               quant.inputs[1], zp]
        attrs = {k: v for k, v in node.attrs.items() if k in LN_ATTRS}
        attrs["float_output"] = float_output
        new = graph.add_node("qlayernorm", ins, attrs, domain="edlc", num_outputs=1 + float_output,
                             name=f"{node.name}.quantize", before=node)
        olds = ([y] if float_output else []) + [quant.outputs[0]]
        for old, out in zip(olds, new.outputs):
            old.name, out.name = out.name, old.name
            graph.replace_all_uses(old, out)
        graph.remove_node(quant)
        graph.remove_node(node)
        changed = True
    return changed


__all__ = ["fuse_norm_quantize"]
