"""Winograd convolution F(m x m, 3 x 3) for the 3x3 stride-1 convs of CPU targets (-O3).

A 3x3 conv over NHWC data becomes three kernels: the input cut into overlapping
(m+2) x (m+2) tiles and transformed (B^T d B), one batched matrix product per tile position
against the weight transformed when compiling (G g G^T: the weight is a constant), and the
output transform (A^T M A) with the conv group's epilogue (bias, residual add, activation)
fused into it. The product does (m+2)^2 / (9 m^2) of the direct conv's multiply-adds: 4/9 for
F(2,3), 1/4 for F(4,3).

    before: %y = edlc.fused[kind="Conv+Add+Relu"](%x, %skip)
                 body: %c = edlc::Conv[3x3, NHWC, OHWI](%x, %w, %b); Add(%c, %skip); Relu
    after:  %v = edlc::WinogradInput[tile=4, pads](%x)               [36, tiles, Cin]
            %m = MatMul(%v, %u)                                      %u: [36, Cin, Cout] constant
            %y = edlc.fused[kind="WinogradOutput+Add+Relu"](%m, %skip)
                 body: %c = edlc::WinogradOutput[tile=4](%m, %b); Add(%c, %skip); Relu

The MatMul is an ordinary batch matmul: the contraction schedule (and its weight prepacking)
and tuning treat it as any other. The transforms are memory-bound and get their own schedule
(edlc.schedules.winograd). Tiles are 4x4 outputs where the output is large enough for them to
pay (F(4,3)), 2x2 below that, none on maps so small that most of a tile would be padding;
see `choose_tile`. Each conv not rewritten says why in the pass report.

The transformed weight is (m+2)^2 / 9 times the conv's (4x for F(4,3), 1.8x for F(2,3)) and
is read once per run: on deep layers at batch 1 the product is bound by reading it. Measured
on Zen 3 (AVX2), 2 threads, ResNet-18 at 224x224 -O3: 32.9 ms direct, 19.8 ms with F(4,3) on
the 56/28/14 maps and F(2,3) on the 7x7 ones (onnxruntime 26.6 ms in the same window);
F(2,3) on 14x14 or none on 7x7 were slower, per layer and for the model. Per conv (bias,
residual add, ReLU): 64 channels at 56x56 1.75 -> 0.62 ms, 256 at 14x14 2.30 -> 0.87 ms.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from edlc.ir.copy import copy_graph
from edlc.ir.graph import Graph, Node, Value
from edlc.ir.ops import register_op
from edlc.ir.types import TensorType
from edlc.pass_manager import PassResult, register_pass
from edlc.passes.fuse import conv_anchor

# ---- the transforms (Lavin & Gray, "Fast Algorithms for Convolutional Neural Networks") --------
# F(2,3): points 0, 1, -1, inf
_BT2 = [[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]]
_G2 = [[1, 0, 0], [1 / 2, 1 / 2, 1 / 2], [1 / 2, -1 / 2, 1 / 2], [0, 0, 1]]
_AT2 = [[1, 1, 1, 0], [0, 1, -1, -1]]
# F(4,3): points 0, 1, -1, 2, -2, inf
_BT4 = [[4, 0, -5, 0, 1, 0], [0, -4, -4, 1, 1, 0], [0, 4, -4, -1, 1, 0], [0, -2, -1, 2, 1, 0],
        [0, 2, -1, -2, 1, 0], [0, 4, 0, -5, 0, 1]]
_G4 = [[1 / 4, 0, 0], [-1 / 6, -1 / 6, -1 / 6], [-1 / 6, 1 / 6, -1 / 6],
       [1 / 24, 1 / 12, 1 / 6], [1 / 24, -1 / 12, 1 / 6], [0, 0, 1]]
_AT4 = [[1, 1, 1, 1, 1, 0], [0, 1, -1, 2, -2, 0], [0, 1, 1, 4, 4, 0], [0, 1, -1, 8, -8, 1]]

TILES = (2, 4)


def matrices(m: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(B^T [a, a], G [a, 3], A^T [m, a]) of F(m x m, 3 x 3), a = m + 2, in float64."""
    if m not in TILES:
        raise ValueError(f"Winograd tile {m} is not one of {TILES}")
    bt, g, at = (_BT2, _G2, _AT2) if m == 2 else (_BT4, _G4, _AT4)
    return np.array(bt, np.float64), np.array(g, np.float64), np.array(at, np.float64)


def tiles_of(size: int, m: int) -> int:
    return -(-size // m)


def transform_weight(w_ohwi: np.ndarray, m: int) -> np.ndarray:
    """An OHWI 3x3 weight [Cout, 3, 3, Cin] as the product's operand [a*a, Cin, Cout]:
    G g G^T per (Cout, Cin) pair, in float64, then in the weight's type."""
    _, g, _ = matrices(m)
    a = m + 2
    u = np.einsum("ik,okla,jl->ijao", g, w_ohwi.astype(np.float64), g)  # [a, a, Cin, Cout]
    return np.ascontiguousarray(u.reshape(a * a, w_ohwi.shape[3], w_ohwi.shape[0]).astype(w_ohwi.dtype))


# ---- edlc::WinogradInput: NHWC [N, H, W, C] -> [a*a, rows >= N*TH*TW, C] ------------------
def _input_geometry(node: Node, shape: Sequence[int]) -> tuple[int, int, int]:
    """(output height, output width, tiles) of a WinogradInput over an input of `shape`
    (tiles without the padding rows, see `rows`)."""
    m = int(node.attrs["tile"])
    top, left, bottom, right = (int(p) for p in node.attrs["pads"])
    n, h, w, _ = shape
    oh, ow = h + top + bottom - 2, w + left + right - 2
    return oh, ow, n * tiles_of(oh, m) * tiles_of(ow, m)


def _infer_input(node: Node) -> list[TensorType]:
    t = node.inputs[0].type
    if t is None or t.shape is None or not t.is_static:
        return [TensorType(None, t.dtype if t is not None else "float32")]
    a = int(node.attrs["tile"]) + 2
    _, _, p = _input_geometry(node, t.shape)
    return [TensorType((a * a, int(node.attrs.get("rows", p)), t.shape[3]), t.dtype)]


def _reference_input(node: Node, arrays: Sequence[np.ndarray]) -> list[np.ndarray]:
    x = arrays[0]
    m = int(node.attrs["tile"])
    a = m + 2
    top, left, _, _ = (int(p) for p in node.attrs["pads"])
    oh, ow, _ = _input_geometry(node, x.shape)
    th, tw = tiles_of(oh, m), tiles_of(ow, m)
    n, h, w, c = x.shape
    xp = np.zeros((n, th * m + 2, tw * m + 2, c), np.float64)
    rows, cols = min(h, th * m + 2 - top), min(w, tw * m + 2 - left)
    xp[:, top:top + rows, left:left + cols] = x[:, :rows, :cols]
    d = np.stack([np.stack([xp[:, i:i + th * m:m, j:j + tw * m:m] for j in range(a)], 3)
                  for i in range(a)], 3)  # [n, th, tw, a(row), a(col), c]
    bt, _, _ = matrices(m)
    v = np.einsum("ei,fj,ntwijc->efntwc", bt, bt, d).reshape(a * a, n * th * tw, c)
    rows = int(node.attrs.get("rows", n * th * tw))
    v = np.concatenate([v, np.zeros((a * a, rows - v.shape[1], c))], 1)
    return [np.ascontiguousarray(v.astype(x.dtype))]


# ---- edlc::WinogradOutput: [a*a, rows, C] (+ bias [C]) -> NHWC [N, OH, OW, C] ----------------
def _infer_output(node: Node) -> list[TensorType]:
    t = node.inputs[0].type
    if t is None or t.shape is None or not t.is_static:
        return [TensorType(None, t.dtype if t is not None else "float32")]
    n, oh, ow = (int(s) for s in node.attrs["size"])
    return [TensorType((n, oh, ow, t.shape[2]), t.dtype)]


def _reference_output(node: Node, arrays: Sequence[np.ndarray]) -> list[np.ndarray]:
    mm = arrays[0]
    m = int(node.attrs["tile"])
    a = m + 2
    n, oh, ow = (int(s) for s in node.attrs["size"])
    th, tw = tiles_of(oh, m), tiles_of(ow, m)
    c = mm.shape[2]
    _, _, at = matrices(m)
    prods = mm[:, :n * th * tw].astype(np.float64).reshape(a, a, n, th, tw, c)
    y = np.einsum("ie,jf,efntwc->ntiwjc", at, at, prods)
    y = y.reshape(n, th * m, tw * m, c)[:, :oh, :ow]
    if len(arrays) > 1 and arrays[1] is not None:
        y = y + arrays[1].astype(np.float64)
    return [np.ascontiguousarray(y.astype(mm.dtype))]


# ---- standard ONNX forms (export: `edlc optimize` writes graphs other runtimes run) -----------
def _const(graph: Graph, array, name: str) -> Value:
    return graph.constant(np.asarray(array), name)


def _decompose_input(graph: Graph, node: Node) -> list[Value]:
    """Pad, then a depthwise Conv of stride m whose (m+2)^2 filters per channel are the
    outer products of B^T's rows, then the layout [(m+2)^2, tiles, C] and the zero rows."""
    x = node.inputs[0]
    m = int(node.attrs["tile"])
    a = m + 2
    top, left, _, _ = (int(p) for p in node.attrs["pads"])
    n, h, w, c = x.type.shape
    oh, ow, tiles = _input_geometry(node, x.type.shape)
    th, tw = tiles_of(oh, m), tiles_of(ow, m)
    rows = int(node.attrs.get("rows", tiles))
    bt, _, _ = matrices(m)
    filters = np.einsum("ei,fj->efij", bt, bt).reshape(a * a, 1, a, a)
    weight = np.tile(filters, (c, 1, 1, 1)).astype(x.type.dtype)  # [C * a*a, 1, a, a]

    def add(op, inputs, **attrs):
        return graph.add_node(op, inputs, attrs, before=node, name=f"{node.name}/{op.lower()}").outputs[0]

    y = add("Transpose", [x], perm=[0, 3, 1, 2])
    pads = [0, 0, top, left, 0, 0, th * m + 2 - h - top, tw * m + 2 - w - left]
    y = add("Pad", [y, _const(graph, np.array(pads, np.int64), f"{node.name}_pads")])
    y = add("Conv", [y, _const(graph, weight, f"{node.name}_filters")], group=c, strides=[m, m],
            kernel_shape=[a, a])
    y = add("Reshape", [y, _const(graph, np.array([n, c, a * a, th, tw], np.int64), f"{node.name}_s1")])
    y = add("Transpose", [y], perm=[2, 0, 3, 4, 1])
    y = add("Reshape", [y, _const(graph, np.array([a * a, tiles, c], np.int64), f"{node.name}_s2")])
    if rows > tiles:
        y = add("Pad", [y, _const(graph, np.array([0, 0, 0, 0, rows - tiles, 0], np.int64),
                                  f"{node.name}_rows")])
    return [y]


def _decompose_output(graph: Graph, node: Node) -> list[Value]:
    """The tiles' rows, a depthwise ConvTranspose of stride m whose filters are the outer
    products of A^T's columns, the output cropped to its size, NHWC, plus the bias."""
    prods = node.inputs[0]
    m = int(node.attrs["tile"])
    a = m + 2
    n, oh, ow = (int(s) for s in node.attrs["size"])
    th, tw = tiles_of(oh, m), tiles_of(ow, m)
    c = prods.type.shape[2]
    _, _, at = matrices(m)
    filters = np.einsum("ie,jf->efij", at, at).reshape(a * a, 1, m, m)
    weight = np.tile(filters, (c, 1, 1, 1)).astype(prods.type.dtype)  # [C * a*a, 1, m, m]

    def add(op, inputs, **attrs):
        return graph.add_node(op, inputs, attrs, before=node, name=f"{node.name}/{op.lower()}").outputs[0]

    def ints(values, suffix):
        return _const(graph, np.array(values, np.int64), f"{node.name}_{suffix}")

    y = add("Slice", [prods, ints([0], "start"), ints([n * th * tw], "end"), ints([1], "axis")])
    y = add("Reshape", [y, ints([a * a, n, th, tw, c], "s1")])
    y = add("Transpose", [y], perm=[1, 4, 0, 2, 3])
    y = add("Reshape", [y, ints([n, c * a * a, th, tw], "s2")])
    y = add("ConvTranspose", [y, _const(graph, weight, f"{node.name}_filters")], group=c,
            strides=[m, m], kernel_shape=[m, m])
    y = add("Slice", [y, ints([0, 0], "start2"), ints([oh, ow], "end2"), ints([2, 3], "axes2")])
    y = add("Transpose", [y], perm=[0, 2, 3, 1])
    if len(node.inputs) > 1 and node.inputs[1] is not None:
        y = add("Add", [y, node.inputs[1]])
    return [y]


register_op("WinogradInput", "edlc", infer=_infer_input, reference=_reference_input,
            decompose=_decompose_input,
            doc="NHWC input cut into padded (m+2)^2 tiles, transformed (B^T d B): [(m+2)^2, rows, C]")
register_op("WinogradOutput", "edlc", infer=_infer_output, reference=_reference_output,
            decompose=_decompose_output,
            doc="Winograd products [(m+2)^2, rows, C] transformed back (A^T M A), plus bias: NHWC")


# ---- when a conv is rewritten ----------------------------------------------------------------
# the product's rows (tile positions) are padded with zero rows to a multiple of this where
# that adds few rows, so that the contraction schedule's register block over them (up to 5
# rows of 2 vectors on AVX2) divides them: 49 tiles have no such divisor, 196 only 4. On Zen 3,
# 2 threads: 128x28 (49 -> 50 rows) and 64x56 (196 -> 200) products 4-5% faster; 16 -> 20
# rows made the 14x14 and 7x7 ones (weight-bound) 5-20% slower
ROW_MULTIPLE = 5


def padded_rows(tiles: int) -> int:
    """The product's rows for `tiles` tile positions: a multiple of ROW_MULTIPLE if that adds
    at most a sixteenth."""
    rows = -(-tiles // ROW_MULTIPLE) * ROW_MULTIPLE
    return rows if (rows - tiles) * 16 <= tiles else tiles


# below this many channels in or out the product is too thin to gain what the transforms cost
MIN_CHANNELS = 16


def choose_tile(oh: int, ow: int) -> int | None:
    """The tile size m of F(m x m, 3 x 3) for an output of oh x ow, None for no Winograd."""
    if min(oh, ow) >= 12:
        return 4
    if min(oh, ow) >= 6:
        return 2
    return None


def why_not(conv: Node, tile: int | None = None) -> str | None:
    """Why `conv` (an edlc::Conv) cannot run as Winograd, None when it can."""
    attrs = conv.attrs
    if attrs.get("layout") != "NHWC" or attrs.get("kernel_layout") != "OHWI":
        return f"layout {attrs.get('layout')}/{attrs.get('kernel_layout')} (Winograd takes NHWC/OHWI)"
    if list(attrs.get("kernel_shape", [])) != [3, 3]:
        return f"kernel {attrs.get('kernel_shape')} is not 3x3"
    if list(attrs.get("strides", [1, 1])) != [1, 1]:
        return f"strides {attrs.get('strides')}"
    if list(attrs.get("dilations", [1, 1])) != [1, 1]:
        return f"dilations {attrs.get('dilations')}"
    if int(attrs.get("group", 1)) != 1:
        return f"{attrs.get('group')} groups"
    x, w = conv.inputs[0], conv.inputs[1]
    y = conv.outputs[0]
    if x is None or x.type is None or not x.type.is_static or y.type is None or not y.type.is_static:
        return "shapes are not static"
    if x.type.dtype != "float32":
        return f"{x.type.dtype} data (Winograd is for float32)"
    if w is None or not w.is_constant:
        return "the weight is not a constant"
    bias = conv.inputs[2] if len(conv.inputs) > 2 else None
    if bias is not None and not bias.is_constant:
        return "the bias is not a constant"
    cout, cin = int(w.const.shape[0]), int(w.const.shape[3])
    if min(cin, cout) < MIN_CHANNELS:
        return f"{cin} -> {cout} channels (fewer than {MIN_CHANNELS})"
    _, oh, ow, _ = y.type.shape
    if (tile or choose_tile(oh, ow)) is None:
        return f"output {oh}x{ow} is too small for Winograd tiles"
    return None


def _front(graph: Graph, conv: Node, x: Value, before: Node, m: int) -> Value:
    """WinogradInput and MatMul of `conv`'s input `x`, before `before`; returns the products."""
    w = conv.inputs[1].const
    n, oh, ow, _ = conv.outputs[0].type.shape
    rows = padded_rows(n * tiles_of(oh, m) * tiles_of(ow, m))
    v = graph.add_node("WinogradInput", [x], {"tile": m, "pads": [int(p) for p in conv.attrs["pads"]],
                                              "rows": rows},
                       domain="edlc", name=f"{conv.name}/winograd_input", before=before).outputs[0]
    u = graph.constant(transform_weight(w, m), f"{conv.inputs[1].name}_winograd{m}")
    a = m + 2
    mtype = TensorType((a * a, v.type.shape[1], int(w.shape[0])), v.type.dtype)
    return graph.add_node("MatMul", [v, u], name=f"{conv.name}/winograd_matmul", before=before,
                          output_types=[mtype]).outputs[0]


def _output_attrs(conv: Node, m: int) -> dict:
    n, oh, ow, _ = conv.outputs[0].type.shape
    return {"tile": m, "size": [int(n), int(oh), int(ow)]}


def _rewrite_conv(graph: Graph, conv: Node, m: int) -> None:
    prods = _front(graph, conv, conv.inputs[0], conv, m)
    bias = conv.inputs[2] if len(conv.inputs) > 2 else None
    out = graph.add_node("WinogradOutput", [prods] + ([bias] if bias is not None else []),
                         _output_attrs(conv, m), domain="edlc", name=conv.name, before=conv,
                         output_types=[conv.outputs[0].type])
    graph.replace_all_uses(conv.outputs[0], out.outputs[0])
    graph.remove_node(conv)


def _rewrite_group(graph: Graph, group: Node, m: int) -> None:
    body = copy_graph(group.attrs["body"], parent=graph)
    conv = body.nodes[0]
    slot = next(k for k, v in enumerate(body.inputs) if v is conv.inputs[0])
    prods = _front(graph, conv, group.inputs[slot], group, m)
    inner = Value(body.unique_name(prods.name), prods.type)
    bias = conv.inputs[2] if len(conv.inputs) > 2 else None
    out = body.add_node("WinogradOutput", [inner] + ([bias] if bias is not None else []),
                        _output_attrs(conv, m), domain="edlc", name=conv.name, before=conv,
                        output_types=[conv.outputs[0].type])
    body.replace_all_uses(conv.outputs[0], out.outputs[0])
    x_inner = conv.inputs[0]
    body.remove_node(conv)
    external = list(group.inputs)
    if not x_inner.uses and x_inner not in body.outputs:  # the input was read by the conv only
        del body.inputs[slot], external[slot]
    body.inputs.insert(0, inner)
    external.insert(0, prods)
    kind = "WinogradOutput" + group.attrs["kind"].split("Conv", 1)[1]
    new = graph.add_node("fused", external, {"body": body, "kind": kind}, domain="edlc",
                         name=group.name, before=group, output_types=[v.type for v in group.outputs])
    for old, v in zip(group.outputs, new.outputs):
        graph.replace_all_uses(old, v)
    graph.remove_node(group)


@register_pass("winograd", "3x3 stride-1 float32 convs as Winograd F(4x4|2x2, 3x3) on CPUs",
               min_opt_level=3, devices=("cpu",))
def winograd(graph: Graph, tile: int | None = None) -> PassResult:
    """Rewrite each eligible conv (alone or the anchor of a fused group) as Winograd; `tile`
    forces m for every conv (tests, measurements), else `choose_tile` picks it per conv."""
    report, changed = [], False
    for node in list(graph.nodes):
        conv = conv_anchor(node)
        if conv is None:
            continue
        reason = why_not(conv, tile)
        if reason is None and node is not conv and (
                conv is not node.attrs["body"].nodes[0]
                or conv.inputs[0] not in node.attrs["body"].inputs):
            reason = "the conv reads its input through a prologue of its group"
        if reason is not None:
            report.append(f"winograd: conv '{node.name}' not rewritten: {reason}")
            continue
        _, oh, ow, _ = conv.outputs[0].type.shape
        m = tile or choose_tile(oh, ow)
        (_rewrite_conv if node is conv else _rewrite_group)(graph, node, m)
        changed = True
    return PassResult(graph, changed, report)


def macs_saved(oh: int, ow: int, m: int) -> float:
    """Multiply-adds of the product relative to the direct conv's, padding tiles included."""
    return (m + 2) ** 2 * tiles_of(oh, m) * tiles_of(ow, m) / (9 * oh * ow)


__all__ = ["choose_tile", "macs_saved", "matrices", "transform_weight", "why_not", "winograd"]
