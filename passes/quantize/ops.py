"""The int8 ops: `edlc.qconv2d` and `edlc.qmatmul`.

Both take QLinearConv's inputs, so QOperator models import onto them one to one, with a bias
for qmatmul too and an optional float output:

    qconv2d(x, x_scale, x_zp, w, w_scale, w_zp, y_scale?, y_zp?, bias_int32?)   [Conv attrs]
    qmatmul(a, a_scale, a_zp, b, b_scale, b_zp, y_scale?, y_zp?, bias_int32?)

    acc  = sum((x - x_zp) * (w - w_zp)) + bias          exact, int32
    real = clip(float32(acc) * (x_scale * w_scale))     per output channel; clip_min/clip_max
    y    = QuantizeLinear(real, y_scale, y_zp)          or `real` itself when y_scale is omitted

A fused ReLU or Clip is `clip_min`/`clip_max`. Weight scales are per output channel (Conv
axis 0, MatMul's [K, N] axis 1). The decomposition is the QDQ form (DequantizeLinear -> Conv ->
QuantizeLinear) that onnxruntime runs with its int8 kernels.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from edlc.errors import ShapeError
from edlc.ir.graph import Graph, Node, Value
from edlc.ir.ops import register_op
from edlc.ir.types import TensorType
from edlc.passes.quantize.params import QRANGE, bias_scale

# input positions (QLinearConv order; bias last)
X, X_SCALE, X_ZP, W, W_SCALE, W_ZP, Y_SCALE, Y_ZP, BIAS = range(9)


def _in(node: Node, i: int) -> Value | None:
    return node.inputs[i] if i < len(node.inputs) else None


def quantized_output(node: Node) -> bool:
    return _in(node, Y_SCALE) is not None


def _out_dtype(node: Node) -> str:
    if not quantized_output(node):
        return node.inputs[X_SCALE].type.dtype
    zp = _in(node, Y_ZP)
    return zp.type.dtype if zp is not None else "uint8"


def conv_geometry(node: Node, rank: int) -> tuple[list[int], list[int], list[int]]:
    """(strides, pads [begin..., end...], dilations) of a 2-D conv node."""
    n = rank - 2
    strides = list(node.attrs.get("strides", [1] * n))
    dilations = list(node.attrs.get("dilations", [1] * n))
    pads = list(node.attrs.get("pads", [0] * 2 * n))
    if node.attrs.get("auto_pad", "NOTSET") not in ("NOTSET", "VALID"):
        raise ShapeError(f"node '{node.name}': auto_pad={node.attrs['auto_pad']} is not supported; "
                         "write explicit pads")
    return strides, pads, dilations


def _qconv_type(node: Node) -> list[TensorType]:
    x, w = node.inputs[X].type, node.inputs[W].type
    dtype = _out_dtype(node)
    if x.shape is None or w.shape is None:
        return [TensorType(None, dtype)]
    strides, pads, dil = conv_geometry(node, len(x.shape))
    out: list[int | str] = [x.shape[0], w.shape[0]]
    for i, d in enumerate(x.shape[2:]):
        if isinstance(d, str):
            out.append(f"{node.name}_d{i}")
            continue
        k = w.shape[2 + i]
        out.append((d + pads[i] + pads[i + len(strides)] - dil[i] * (k - 1) - 1) // strides[i] + 1)
    return [TensorType(tuple(out), dtype)]


def _qmatmul_type(node: Node) -> list[TensorType]:
    a, b = node.inputs[X].type, node.inputs[W].type
    dtype = _out_dtype(node)
    if a.shape is None or b.shape is None:
        return [TensorType(None, dtype)]
    return [TensorType(tuple(a.shape[:-1]) + (b.shape[-1],), dtype)]


# ---- numpy references ------------------------------------------------------------------------
def _centered(q: np.ndarray, zp: np.ndarray | None, axis: int | None = None) -> np.ndarray:
    """q - zero_point in float64 (exact for int8 data and int32 sums)."""
    q = np.asarray(q).astype(np.float64)
    if zp is None:
        return q
    zp = np.asarray(zp).astype(np.float64)
    if zp.ndim and axis is not None:
        shape = [1] * q.ndim
        shape[axis] = zp.size
        zp = zp.reshape(shape)
    return q - zp


def conv2d_exact(x: np.ndarray, w: np.ndarray, strides: Sequence[int], pads: Sequence[int],
                 dilations: Sequence[int], group: int) -> np.ndarray:
    """A float64 NCHW convolution (exact on integer-valued data)."""
    from numpy.lib.stride_tricks import sliding_window_view

    (sh, sw), (dh, dw) = strides, dilations
    x = np.pad(x, ((0, 0), (0, 0), (pads[0], pads[2]), (pads[1], pads[3])))
    n, c = x.shape[:2]
    o, cg, kh, kw = w.shape
    win = sliding_window_view(x, (dh * (kh - 1) + 1, dw * (kw - 1) + 1), axis=(2, 3))
    win = win[:, :, ::sh, ::sw, ::dh, ::dw]  # [n, c, oh, ow, kh, kw]
    oh, ow = win.shape[2:4]
    win = win.reshape(n, group, cg, oh, ow, kh, kw)
    wg = w.reshape(group, o // group, cg, kh, kw)
    out = np.einsum("ngcyxij,gocij->ngoyx", win, wg, optimize=True)
    return out.reshape(n, o, oh, ow)


def requantize(node: Node, acc: np.ndarray, inputs: Sequence[np.ndarray | None], channel_axis: int) -> np.ndarray:
    """acc (exact, float64 holding int32 values) -> the node's output: scale, clip, quantize."""
    bias = inputs[BIAS] if len(inputs) > BIAS else None
    if bias is not None:
        acc = acc + _centered(bias, None).reshape(_channel_shape(bias.size, acc.ndim, channel_axis))
    mult = bias_scale(inputs[X_SCALE], inputs[W_SCALE])
    mult = mult.reshape(_channel_shape(mult.size, acc.ndim, channel_axis)) if mult.ndim else mult
    real = acc.astype(np.float32) * mult
    lo, hi = node.attrs.get("clip_min"), node.attrs.get("clip_max")
    if lo is not None or hi is not None:
        real = np.clip(real, -np.inf if lo is None else np.float32(lo), np.inf if hi is None else np.float32(hi))
    real = real.astype(np.float32)
    if not quantized_output(node):
        return real.astype(np.asarray(inputs[X_SCALE]).dtype)
    zp = inputs[Y_ZP] if len(inputs) > Y_ZP and inputs[Y_ZP] is not None else np.array(0, np.uint8)
    qlo, qhi = QRANGE[str(np.asarray(zp).dtype)]
    q = np.rint(real / np.float32(inputs[Y_SCALE])) + float(zp)
    return np.clip(q, qlo, qhi).astype(np.asarray(zp).dtype)


def _channel_shape(size: int, ndim: int, axis: int) -> tuple[int, ...]:
    shape = [1] * ndim
    shape[axis % ndim] = size
    return tuple(shape)


def _qconv_reference(node: Node, inputs: Sequence[np.ndarray | None]) -> list[np.ndarray]:
    x = _centered(inputs[X], inputs[X_ZP])
    w = _centered(inputs[W], inputs[W_ZP], axis=0)
    strides, pads, dil = conv_geometry(node, x.ndim)
    acc = conv2d_exact(x, w, strides, pads, dil, int(node.attrs.get("group", 1)))
    return [requantize(node, acc, inputs, 1)]


def _qmatmul_reference(node: Node, inputs: Sequence[np.ndarray | None]) -> list[np.ndarray]:
    a = _centered(inputs[X], inputs[X_ZP])
    b = _centered(inputs[W], inputs[W_ZP], axis=1)
    return [requantize(node, np.matmul(a, b), inputs, -1)]


# ---- decomposition: the QDQ form ---------------------------------------------------------------
def _decompose(graph: Graph, node: Node, float_op: str, attrs: dict, w_axis: int) -> list[Value]:
    ins = list(node.inputs) + [None] * (9 - len(node.inputs))

    def add(op: str, args: list, **kw) -> Value:
        return graph.add_node(op, args, kw, name=f"{node.name}.{op}", before=node).outputs[0]

    def per_channel(v: Value) -> dict:
        return {"axis": w_axis} if v.type is not None and v.type.shape not in (None, ()) else {}

    x = add("DequantizeLinear", [ins[X], ins[X_SCALE], ins[X_ZP]])
    w = add("DequantizeLinear", [ins[W], ins[W_SCALE], ins[W_ZP]], **per_channel(ins[W_SCALE]))
    args = [x, w]
    if ins[BIAS] is not None:
        if ins[X_SCALE].is_constant and ins[W_SCALE].is_constant:
            s = graph.constant(bias_scale(ins[X_SCALE].const, ins[W_SCALE].const), f"{node.name}.bias_scale")
        else:
            s = add("Mul", [ins[X_SCALE], ins[W_SCALE]])
        axis = {"axis": 0} if s.type.shape not in (None, ()) else {}
        args.append(add("DequantizeLinear", [ins[BIAS], s], **axis))
    if float_op == "Conv":
        y = add("Conv", args, **attrs)
    else:
        y = add("MatMul", args[:2])
        if len(args) > 2:
            y = add("Add", [y, args[2]])
    lo, hi = node.attrs.get("clip_min"), node.attrs.get("clip_max")
    if lo == 0.0 and hi is None:
        y = add("Relu", [y])
    elif lo is not None or hi is not None:
        dt = np.float32
        y = add("Clip", [y, None if lo is None else graph.constant(np.array(lo, dt), "clip_min"),
                         None if hi is None else graph.constant(np.array(hi, dt), "clip_max")])
    if ins[Y_SCALE] is not None:
        y = add("QuantizeLinear", [y, ins[Y_SCALE], ins[Y_ZP]])
    return [y]


CONV_ATTRS = ("strides", "pads", "dilations", "group", "kernel_shape", "auto_pad")


def _qconv_decompose(graph: Graph, node: Node) -> list[Value]:
    attrs = {k: v for k, v in node.attrs.items() if k in CONV_ATTRS}
    return _decompose(graph, node, "Conv", attrs, 0)


def _qmatmul_decompose(graph: Graph, node: Node) -> list[Value]:
    return _decompose(graph, node, "MatMul", {}, 1)


register_op("qconv2d", "edlc", infer=_qconv_type, reference=_qconv_reference,
            decompose=_qconv_decompose,
            doc="int8 2-D convolution: int32 accumulation, per-channel requantization epilogue")
register_op("qmatmul", "edlc", infer=_qmatmul_type, reference=_qmatmul_reference,
            decompose=_qmatmul_decompose,
            doc="int8 matmul by a [K, N] matrix: int32 accumulation, per-column requantization")

QUANT_OPS = ("qconv2d", "qmatmul")

__all__ = ["BIAS", "CONV_ATTRS", "QUANT_OPS", "W", "W_SCALE", "W_ZP", "X", "X_SCALE", "X_ZP",
           "Y_SCALE", "Y_ZP", "conv2d_exact", "conv_geometry", "quantized_output", "requantize"]
