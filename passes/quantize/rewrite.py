"""Build the int8 graph: each chosen layer becomes `edlc.qconv2d` / `edlc.qmatmul` between a
QuantizeLinear of its input and a DequantizeLinear of its output; then the edges between int8
layers vanish, so Q/DQ stay only where an int8 region meets float ops.

    before: %c = Conv(%x, %w, %b); %r = Relu(%c); %p = MaxPool(%r); %d = Conv(%p, %w2)
    after:  %xq = QuantizeLinear(%x); %rq = edlc.qconv2d[clip_min=0](%xq, .., %w_int8, ..)
            %pq = MaxPool(%rq); %d = edlc.qconv2d(%pq, .., no y_scale: float output)

Three clean-ups do it: DequantizeLinear moves below ops that only move values (MaxPool,
Reshape, ...), a QuantizeLinear of a DequantizeLinear with the same parameters is the int8
value itself, and an int8 op whose output is only dequantized for float readers computes the
float output directly (no rounding to 8 bits on the way out).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from edlc.ir.graph import Graph, Node, Value
from edlc.passes.quantize.attention import int8_attention
from edlc.passes.quantize.epilogue import fold_epilogues, quantized_residuals
from edlc.passes.quantize.layers import PASSTHROUGH, Layer, find_layers
from edlc.passes.quantize.norm import fuse_norm_quantize
from edlc.passes.quantize.ops import Y_SCALE, Y_ZP
from edlc.passes.quantize.params import (
    QParams,
    activation_params,
    conv_pair_axis,
    output_shift,
    quantize_bias,
    quantize_weight,
)


@dataclass
class LayerParams:
    input: QParams
    weight: QParams
    output: QParams | None  # None: the layer's output stays float


def _passthrough(node: Node | None) -> bool:
    return node is not None and not node.domain and node.op in PASSTHROUGH and len(node.outputs) == 1


def plan_params(layers: Sequence[Layer], enabled: set[str], ranges: Mapping[str, tuple[float, float]],
                act_dtype: str) -> dict[str, tuple[QParams, QParams]]:
    """(input params, output params) per enabled layer. A value reached from an int8 layer's
    output through passthrough ops keeps that output's parameters, so no requantization is
    needed there."""
    outputs = {id(layer.output): layer for layer in layers if layer.name in enabled}

    def params(v: Value) -> QParams:
        src = v
        while _passthrough(src.producer) and src.producer.inputs[0] is not None:
            src = src.producer.inputs[0]
            if id(src) in outputs:
                return activation_params(*ranges[src.name], act_dtype)
        return activation_params(*ranges[v.name], act_dtype)

    return {layer.name: (params(layer.input), params(layer.output))
            for layer in layers if layer.name in enabled}


def _rename_swap(old: Value, new: Value) -> None:
    """`new` takes `old`'s name (graph outputs and taps keep their names)."""
    old.name, new.name = new.name, old.name


def _replace(graph: Graph, old: Value, new: Value) -> None:
    _rename_swap(old, new)
    graph.replace_all_uses(old, new)


def _consts(graph: Graph, p: QParams, name: str) -> tuple[Value, Value]:
    return graph.constant(p.scale, f"{name}.scale"), graph.constant(p.zero_point, f"{name}.zero_point")


def layer_weight(layer: Layer, paired: bool | str = True, means: np.ndarray | None = None
                 ) -> tuple[np.ndarray, QParams, np.ndarray | None]:
    """(int8 weight, its parameters, float bias) of a layer. Paired weights (params.weight_params)
    only where a kernel may take them as uint8 x int8 quads: not grouped (depthwise) convs,
    which run on int16 products. `paired="twins"`: matmul weights also in the twin range
    (params.weight_params). With `means` (calibrate.input_means) the bias is corrected for
    the weight's rounding: the mean output error it causes on the calibration data is removed."""
    group = int(layer.attrs.get("group", 1))
    axis, pair_axis = (0, conv_pair_axis(layer.weight.shape)) if layer.kind == "conv" else (1, 0)
    wq, pw = quantize_weight(layer.weight, axis, pair_axis if paired and group == 1 else None,
                             twins=paired == "twins" and layer.kind != "conv")
    bias = layer.bias
    if means is not None:
        shift = output_shift(pw.dequantize(wq).astype(np.float64) - layer.weight, means, group)
        bias = -shift if bias is None else bias - shift
    return wq, pw, bias


def _rewrite_layer(graph: Graph, layer: Layer, pin: QParams, pout: QParams,
                   quantized_inputs: dict[int, tuple[Value, QParams]], paired: bool | str = True,
                   means: np.ndarray | None = None) -> QParams:
    before = layer.anchor
    x = layer.anchor.inputs[0]  # an earlier rewrite may have replaced `layer.input`
    key = id(x)
    if key not in quantized_inputs or not quantized_inputs[key][1].same_as(pin):
        s, z = _consts(graph, pin, x.name)
        q = graph.add_node("QuantizeLinear", [x, s, z], name=f"{x.name}.quantize", before=before)
        quantized_inputs[key] = (q.outputs[0], pin)
    xq = quantized_inputs[key][0]
    wq, pw, bias = layer_weight(layer, paired, means)
    ins = [xq, *_consts(graph, pin, f"{layer.name}.x"), graph.constant(wq, f"{layer.name}.weight_int8"),
           *_consts(graph, pw, f"{layer.name}.w"), *_consts(graph, pout, f"{layer.name}.y")]
    if bias is not None:
        ins.append(graph.constant(quantize_bias(bias, pin.scale, pw.scale), f"{layer.name}.bias_int32"))
    attrs = dict(layer.attrs)
    lo, hi = layer.clip
    if lo is not None:
        attrs["clip_min"] = float(lo)
    if hi is not None:
        attrs["clip_max"] = float(hi)
    op = "qconv2d" if layer.kind == "conv" else "qmatmul"
    node = graph.add_node(op, ins, attrs, domain="edlc", name=f"{layer.name}.int8", before=before)
    s, z = _consts(graph, pout, layer.output.name)
    dq = graph.add_node("DequantizeLinear", [node.outputs[0], s, z], name=f"{layer.name}.dequantize",
                        before=before)
    _replace(graph, layer.output, dq.outputs[0])
    for n in reversed(layer.nodes):
        graph.remove_node(n)
    return pw


# ---- clean-ups -------------------------------------------------------------------------------
def _is(node: Node | None, op: str) -> bool:
    return node is not None and not node.domain and node.op == op


def _dq_params(node: Node) -> tuple[Value, Value | None] | None:
    """(scale, zero point) of a per-tensor DequantizeLinear with constant parameters."""
    s = node.inputs[1]
    z = node.inputs[2] if len(node.inputs) > 2 else None
    if not s.is_constant or s.const.size != 1 or (z is not None and not z.is_constant):
        return None
    return s, z


def _same(a: Value | None, b: Value | None) -> bool:
    if a is None or b is None:
        return a is b
    return a.const.dtype == b.const.dtype and np.array_equal(a.const, b.const)


def _requantized(v: Value, depth: int = 0) -> bool:
    """Whether `v` reaches a QuantizeLinear through ops that only move values."""
    return depth < 16 and any(_is(u, "QuantizeLinear") or (_passthrough(u) and _requantized(u.outputs[0], depth + 1))
                              for u in v.users)


def sink_dequantize(graph: Graph) -> bool:
    """P(DQ(q)) -> DQ(P(q)) for ops P that only move values, where P's output is quantized
    again (for the next int8 layer); where only float ops read it (a Reshape and Transpose
    before float attention), P stays float and the int8 op can output float itself."""
    changed = False
    for node in list(graph.nodes):
        if not _passthrough(node) or node.inputs[0] is None or not _requantized(node.outputs[0]):
            continue
        dq = node.inputs[0].producer
        if not _is(dq, "DequantizeLinear") or _dq_params(dq) is None:
            continue
        q = dq.inputs[0]
        moved = graph.add_node(node.op, [q, *node.inputs[1:]], dict(node.attrs),
                               name=f"{node.name}.int8", before=node)
        new = graph.add_node("DequantizeLinear", [moved.outputs[0], *dq.inputs[1:]],
                             name=f"{node.name}.dequantize", before=node)
        _replace(graph, node.outputs[0], new.outputs[0])
        graph.remove_node(node)
        changed = True
    return changed


def fold_requantize(graph: Graph) -> bool:
    """Q(DQ(q, s, z), s, z) -> q."""
    changed = False
    for node in list(graph.nodes):
        if not _is(node, "QuantizeLinear") or node.outputs[0] in graph.outputs:
            continue
        dq = node.inputs[0].producer
        if not _is(dq, "DequantizeLinear") or _dq_params(dq) is None:
            continue
        zq = node.inputs[2] if len(node.inputs) > 2 else None
        zd = dq.inputs[2] if len(dq.inputs) > 2 else None
        if not (node.inputs[1].is_constant and _same(node.inputs[1], dq.inputs[1]) and
                (zq is None or zq.is_constant) and _same(zq, zd)):
            continue
        graph.replace_all_uses(node.outputs[0], dq.inputs[0])
        changed = True
    return changed


def float_outputs(graph: Graph) -> bool:
    """An int8 op whose output is only dequantized, and never requantized, outputs float."""
    changed = False
    for node in list(graph.nodes):
        if node.domain != "edlc" or node.op not in ("qconv2d", "qmatmul") or len(node.inputs) <= Y_SCALE \
                or node.inputs[Y_SCALE] is None:
            continue
        out = node.outputs[0]
        users = out.users
        if out in graph.outputs or len(users) != 1 or not _is(users[0], "DequantizeLinear"):
            continue
        dq = users[0]
        if any(_is(u, "QuantizeLinear") for u in dq.outputs[0].users):
            continue
        ins = list(node.inputs)
        ins[Y_SCALE] = ins[Y_ZP] = None
        while ins and ins[-1] is None:
            ins.pop()
        new = graph.add_node(node.op, ins, dict(node.attrs), domain="edlc", name=node.name, before=dq)
        _replace(graph, dq.outputs[0], new.outputs[0])
        graph.remove_node(dq)
        graph.remove_node(node)
        new.name = node.name
        changed = True
    return changed


def int8_maxpools(graph: Graph) -> bool:
    """MaxPool on int8 data -> edlc.qmaxpool (the same values; a kernel TVM vectorizes)."""
    from edlc.passes.quantize.ops import qmaxpool_supported

    changed = False
    for node in list(graph.nodes):
        if not _is(node, "MaxPool") or not qmaxpool_supported(node) or \
                node.inputs[0].type.dtype not in ("uint8", "int8"):
            continue
        attrs = dict(node.attrs)
        new = graph.add_node("qmaxpool", [node.inputs[0]], attrs, domain="edlc", name=node.name, before=node)
        if new.outputs[0].type != node.outputs[0].type:  # a shape rule disagreement: keep MaxPool
            graph.remove_node(new)
            continue
        _replace(graph, node.outputs[0], new.outputs[0])
        graph.remove_node(node)
        new.name = node.name
        changed = True
    return changed


def remove_dead(graph: Graph) -> None:
    changed = True
    while changed:
        changed = False
        for node in reversed(list(graph.nodes)):
            if not any(v.uses or v in graph.outputs for v in node.outputs):
                graph.remove_node(node)
                changed = True


def build_quantized(graph: Graph, enabled: set[str], ranges: Mapping[str, tuple[float, float]],
                    act_dtype: str = "uint8", taps: Sequence[str] = (), weights: str = "paired",
                    means: Mapping[str, np.ndarray] | None = None) -> tuple[Graph, dict[str, LayerParams]]:
    """A copy of `graph` with the `enabled` layers in int8. Values named in `taps` become extra
    graph outputs first, so they keep a float view in the result (for accuracy checks). `means`
    (calibrate.input_means, per layer) turns on bias correction (`layer_weight`)."""
    g = graph.copy()
    named = {v.name: v for v in g.values()}
    for t in taps:
        if t in named and named[t] not in g.outputs and not named[t].is_constant and named[t] not in g.inputs:
            g.outputs.append(named[t])
    layers, _ = find_layers(g)
    plan = plan_params(layers, enabled, ranges, act_dtype)
    quantized_inputs: dict[int, tuple[Value, QParams]] = {}
    chosen: dict[str, LayerParams] = {}
    for layer in layers:
        if layer.name in plan:
            pin, pout = plan[layer.name]
            pw = _rewrite_layer(g, layer, pin, pout, quantized_inputs,
                                "twins" if weights == "twins" else weights == "paired",
                                None if means is None else means.get(layer.name))
            chosen[layer.name] = LayerParams(pin, pw, pout)
    while sink_dequantize(g) | fold_requantize(g):
        remove_dead(g)
    float_outputs(g)
    remove_dead(g)
    int8_attention(g, ranges)
    remove_dead(g)
    int8_maxpools(g)
    quantized_residuals(g)
    fold_epilogues(g)
    remove_dead(g)
    fuse_norm_quantize(g)
    for n in g.nodes:
        if n.domain == "edlc" and n.name.endswith(".int8"):
            base = n.name[: -len(".int8")]
            if base not in chosen:
                continue
            if len(n.inputs) <= Y_SCALE or n.inputs[Y_SCALE] is None:
                chosen[base].output = None
            elif n.inputs[Y_SCALE].is_constant and n.inputs[Y_ZP] is not None and n.inputs[Y_ZP].is_constant:
                # the parameters the output got (int8_attention quantizes K and V its own way)
                chosen[base].output = QParams(np.asarray(n.inputs[Y_SCALE].const, np.float32),
                                              np.asarray(n.inputs[Y_ZP].const))
    return g, chosen


__all__ = ["LayerParams", "build_quantized", "fold_requantize", "float_outputs", "int8_maxpools", "layer_weight", "plan_params",
           "remove_dead", "sink_dequantize"]
