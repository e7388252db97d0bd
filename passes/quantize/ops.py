"""The int8 ops: `edlc.qconv2d` and `edlc.qmatmul`.

Both take QLinearConv's inputs, so QOperator models import onto them one to one, with a bias
for qmatmul too and an optional float output:

    qconv2d(x, x_scale, x_zp, w, w_scale, w_zp, y_scale?, y_zp?, bias_int32?)   [Conv attrs]
    qmatmul(a, a_scale, a_zp, b, b_scale, b_zp, y_scale?, y_zp?, bias_int32?)

    acc  = sum((x - x_zp) * (w - w_zp)) + bias          exact, int32
    real = clip(float32(acc) * (x_scale * w_scale))     per output channel; clip_min/clip_max
    y    = QuantizeLinear(real, y_scale, y_zp)          or `real` itself when y_scale is omitted

Without x_scale and w_scale the output is `acc` itself, int32 (ConvInteger and MatMulInteger:
edlc.passes.quantize.integer); there is then no y_scale, clip or epilogue.

qconv2d's `in_layout` and `out_layout` ("NCHW", the default, or "NHWC") give its input's and
output's layouts (edlc.passes.quantize.layout chooses NHWC between int8 convs); the weight stays
OIHW. A fused ReLU or Clip is `clip_min`/`clip_max`. Weight scales are per output channel (Conv
axis 0, MatMul's [K, N] axis 1). The decomposition is the QDQ form (DequantizeLinear -> Conv ->
QuantizeLinear) that onnxruntime runs with its int8 kernels.

An `epilogue` attribute (a Graph: inputs [real, extra...], one float output) holds float
elementwise ops applied to `real` before the output quantization, in the same kernel: a
residual Add (of a float tensor, or of an int8 one through DequantizeLinear), the ReLU after
it, a GELU. Its extra inputs are the node's inputs from position EXTRA on
(edlc.passes.quantize.epilogue builds them).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from edlc.errors import ShapeError
from edlc.ir.graph import Graph, Node, Value
from edlc.ir.ops import register_op
from edlc.ir.types import TensorType
from edlc.passes.quantize.params import QRANGE, bias_scale, dequantize

# input positions (QLinearConv order; bias last; then the epilogue's extra inputs)
X, X_SCALE, X_ZP, W, W_SCALE, W_ZP, Y_SCALE, Y_ZP, BIAS, EXTRA = range(10)


def _in(node: Node, i: int) -> Value | None:
    return node.inputs[i] if i < len(node.inputs) else None


def quantized_output(node: Node) -> bool:
    return _in(node, Y_SCALE) is not None


def int32_output(node: Node) -> bool:
    """Whether the op outputs its int32 accumulator (no scales: ConvInteger, MatMulInteger)."""
    return _in(node, X_SCALE) is None


def _out_dtype(node: Node) -> str:
    if int32_output(node):
        return "int32"
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


NCHW_TO_NHWC, NHWC_TO_NCHW = (0, 2, 3, 1), (0, 3, 1, 2)


def layouts(node: Node) -> tuple[str, str]:
    """(input layout, output layout) of a qconv2d or qmaxpool."""
    return node.attrs.get("in_layout", "NCHW"), node.attrs.get("out_layout", "NCHW")


def _qconv_type(node: Node) -> list[TensorType]:
    x, w = node.inputs[X].type, node.inputs[W].type
    dtype = _out_dtype(node)
    if x.shape is None or w.shape is None:
        return [TensorType(None, dtype)]
    in_layout, out_layout = layouts(node)
    shape = [x.shape[i] for i in NHWC_TO_NCHW] if in_layout == "NHWC" else list(x.shape)
    strides, pads, dil = conv_geometry(node, len(shape))
    out: list[int | str] = [shape[0], w.shape[0]]
    for i, d in enumerate(shape[2:]):
        if isinstance(d, str):
            out.append(f"{node.name}_d{i}")
            continue
        k = w.shape[2 + i]
        out.append((d + pads[i] + pads[i + len(strides)] - dil[i] * (k - 1) - 1) // strides[i] + 1)
    if out_layout == "NHWC":
        out = [out[i] for i in NCHW_TO_NHWC]
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
    if inputs[X_SCALE] is None:
        return acc.astype(np.int32)
    mult = bias_scale(inputs[X_SCALE], inputs[W_SCALE])
    mult = mult.reshape(_channel_shape(mult.size, acc.ndim, channel_axis)) if mult.ndim else mult
    real = acc.astype(np.float32) * mult
    lo, hi = node.attrs.get("clip_min"), node.attrs.get("clip_max")
    if lo is not None or hi is not None:
        real = np.clip(real, -np.inf if lo is None else np.float32(lo), np.inf if hi is None else np.float32(hi))
    real = real.astype(np.float32)
    body = node.attrs.get("epilogue")
    if body is not None:
        real = run_epilogue(body, [real, *inputs[EXTRA:]])
    if not quantized_output(node):
        return real.astype(np.asarray(inputs[X_SCALE]).dtype)
    zp = inputs[Y_ZP] if len(inputs) > Y_ZP and inputs[Y_ZP] is not None else np.array(0, np.uint8)
    qlo, qhi = QRANGE[str(np.asarray(zp).dtype)]
    q = np.rint(real / np.float32(inputs[Y_SCALE])) + float(zp)
    return np.clip(q, qlo, qhi).astype(np.asarray(zp).dtype)


def run_epilogue(body: Graph, args: Sequence[np.ndarray]) -> np.ndarray:
    """The epilogue's output (float32) for its inputs: DequantizeLinear by the quantization
    arithmetic (params.dequantize), every other op by its reference."""
    from edlc.ir.ops import evaluate

    env: dict[int, np.ndarray] = {id(v): np.asarray(a) for v, a in zip(body.inputs, args)}

    def read(v: Value | None) -> np.ndarray | None:
        return None if v is None else v.const if v.is_constant else env[id(v)]

    for n in body.nodes:
        ins = [read(v) for v in n.inputs]
        if not n.domain and n.op == "DequantizeLinear":
            zp = ins[2] if len(ins) > 2 and ins[2] is not None else np.array(0, ins[0].dtype)
            outs = [dequantize(ins[0], ins[1], zp)]
        else:
            outs = evaluate(n, ins, body.opset)
        env.update({id(v): np.asarray(o) for v, o in zip(n.outputs, outs)})
    return np.asarray(env[id(body.outputs[0])], np.float32)


def _channel_shape(size: int, ndim: int, axis: int) -> tuple[int, ...]:
    shape = [1] * ndim
    shape[axis % ndim] = size
    return tuple(shape)


def _qconv_reference(node: Node, inputs: Sequence[np.ndarray | None]) -> list[np.ndarray]:
    in_layout, out_layout = layouts(node)
    x = _centered(inputs[X], inputs[X_ZP])
    if in_layout == "NHWC":
        x = x.transpose(NHWC_TO_NCHW)
    w = _centered(inputs[W], inputs[W_ZP], axis=0)
    strides, pads, dil = conv_geometry(node, x.ndim)
    acc = conv2d_exact(x, w, strides, pads, dil, int(node.attrs.get("group", 1)))
    if out_layout == "NHWC":
        return [requantize(node, acc.transpose(NCHW_TO_NHWC), inputs, -1)]
    return [requantize(node, acc, inputs, 1)]


def _qmatmul_reference(node: Node, inputs: Sequence[np.ndarray | None]) -> list[np.ndarray]:
    a = _centered(inputs[X], inputs[X_ZP])
    b = _centered(inputs[W], inputs[W_ZP], axis=1)
    return [requantize(node, np.matmul(a, b), inputs, -1)]


# ---- decomposition: the QDQ form ---------------------------------------------------------------
def _decompose(graph: Graph, node: Node, float_op: str, attrs: dict, w_axis: int) -> list[Value]:
    ins = list(node.inputs) + [None] * (EXTRA - len(node.inputs))

    def add(op: str, args: list, **kw) -> Value:
        return graph.add_node(op, args, kw, name=f"{node.name}.{op}", before=node).outputs[0]

    if int32_output(node):  # the integer op itself, and the int32 bias
        args = [ins[X], ins[W], ins[X_ZP], ins[W_ZP]]
        while args[-1] is None:
            args.pop()
        y = add(f"{float_op}Integer", args, **attrs)
        if ins[BIAS] is not None:
            shape = [-1, 1, 1] if float_op == "Conv" else [-1]
            y = add("Add", [y, graph.constant(ins[BIAS].const.reshape(shape), f"{node.name}.bias")])
        return [y]

    def per_channel(v: Value) -> dict:
        return {"axis": w_axis} if v.type is not None and v.type.shape not in (None, ()) else {}

    in_layout, out_layout = layouts(node) if float_op == "Conv" else ("NCHW", "NCHW")
    x = add("DequantizeLinear", [ins[X], ins[X_SCALE], ins[X_ZP]])
    if in_layout == "NHWC":
        x = add("Transpose", [x], perm=list(NHWC_TO_NCHW))
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
    if out_layout == "NHWC":
        y = add("Transpose", [y], perm=list(NCHW_TO_NHWC))
    body = node.attrs.get("epilogue")
    if body is not None:
        y = _inline_epilogue(graph, node, body, [y, *ins[EXTRA:]])
    if ins[Y_SCALE] is not None:
        y = add("QuantizeLinear", [y, ins[Y_SCALE], ins[Y_ZP]])
    return [y]


def _inline_epilogue(graph: Graph, node: Node, body: Graph, args: list[Value]) -> Value:
    """Copy the epilogue's ops into `graph` before `node`, reading `args` for its inputs."""
    env: dict[int, Value] = {id(b): v for b, v in zip(body.inputs, args)}
    for n in body.nodes:
        ins = [None if v is None else env.get(id(v), v) for v in n.inputs]
        new = graph.add_node(n.op, ins, dict(n.attrs), num_outputs=len(n.outputs),
                             output_types=[v.type for v in n.outputs], name=f"{node.name}.{n.name}",
                             domain=n.domain, before=node)
        env.update({id(o): c for o, c in zip(n.outputs, new.outputs)})
    out = body.outputs[0]
    return env.get(id(out), out)


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


# ---- edlc.qmaxpool: MaxPool on int8 data -----------------------------------------------------
POOL_ATTRS = ("kernel_shape", "strides", "pads", "ceil_mode", "dilations", "auto_pad", "storage_order")


def maxpool_window(node: Node, x_shape: Sequence[int]) -> tuple[list[int], list[int], list[int], list[int]]:
    """(kernel, strides, pads [top, left, bottom, right], output [H, W]) of a 2-D max pool."""
    k = [int(v) for v in node.attrs["kernel_shape"]]
    s = [int(v) for v in node.attrs.get("strides", [1, 1])]
    p = [int(v) for v in node.attrs.get("pads", [0, 0, 0, 0])]
    rnd = math.ceil if node.attrs.get("ceil_mode", 0) else math.floor
    out = []
    for i in range(2):
        n = rnd((x_shape[2 + i] + p[i] + p[i + 2] - k[i]) / s[i]) + 1
        if node.attrs.get("ceil_mode", 0) and (n - 1) * s[i] >= x_shape[2 + i] + p[i]:
            n -= 1  # ONNX: the last window must start inside the input or its leading pad
        out.append(n)
    return k, s, p, out


def qmaxpool_supported(node: Node) -> bool:
    """Whether a MaxPool can be an edlc.qmaxpool: 2-D on NCHW, no dilation, explicit pads
    smaller than the window, one output."""
    x = node.inputs[0].type if node.inputs and node.inputs[0] is not None else None
    if x is None or not x.is_static or x.rank != 4 or len(node.outputs) != 1 or "kernel_shape" not in node.attrs:
        return False
    if any(int(d) != 1 for d in node.attrs.get("dilations", [1, 1])) or \
            node.attrs.get("auto_pad", "NOTSET") not in ("NOTSET", "VALID"):
        return False
    k = node.attrs["kernel_shape"]
    p = node.attrs.get("pads", [0, 0, 0, 0])
    return len(k) == 2 and all(p[i] < k[i % 2] for i in range(4))


def _qmaxpool_type(node: Node) -> list[TensorType]:
    x = node.inputs[0].type
    if x is None or x.shape is None or not x.is_static:
        return [TensorType(None, x.dtype if x is not None else "uint8")]
    if node.attrs.get("layout", "NCHW") == "NHWC":
        *_, out = maxpool_window(node, [x.shape[i] for i in NHWC_TO_NCHW])
        return [TensorType((x.shape[0], *out, x.shape[3]), x.dtype)]
    *_, out = maxpool_window(node, x.shape)
    return [TensorType((x.shape[0], x.shape[1], *out), x.dtype)]


def _qmaxpool_reference(node: Node, inputs: Sequence[np.ndarray | None]) -> list[np.ndarray]:
    """Windows clamped to the input (edge padding): for a max pool without dilation whose pads
    are smaller than the window, each window then holds the same values."""
    x = np.asarray(inputs[0])
    if node.attrs.get("layout", "NCHW") == "NHWC":
        y = _qmaxpool_reference_nchw(node, x.transpose(NHWC_TO_NCHW))
        return [y.transpose(NCHW_TO_NHWC)]
    return [_qmaxpool_reference_nchw(node, x)]


def _qmaxpool_reference_nchw(node: Node, x: np.ndarray) -> np.ndarray:
    from numpy.lib.stride_tricks import sliding_window_view

    (kh, kw), (sh, sw), (pt, pl, _, _), (oh, ow) = maxpool_window(node, x.shape)
    pb = (oh - 1) * sh + kh - x.shape[2] - pt
    pr = (ow - 1) * sw + kw - x.shape[3] - pl
    xp = np.pad(x, ((0, 0), (0, 0), (pt, max(pb, 0)), (pl, max(pr, 0))), mode="edge")
    win = sliding_window_view(xp, (kh, kw), axis=(2, 3))[:, :, ::sh, ::sw][:, :, :oh, :ow]
    return win.max(axis=(4, 5))


def _qmaxpool_decompose(graph: Graph, node: Node) -> list[Value]:
    attrs = {k: v for k, v in node.attrs.items() if k in POOL_ATTRS}
    x = node.inputs[0]
    if node.attrs.get("layout", "NCHW") != "NHWC":
        return [graph.add_node("MaxPool", [x], attrs, name=node.name, before=node,
                               output_types=[node.outputs[0].type]).outputs[0]]
    x = graph.add_node("Transpose", [x], {"perm": list(NHWC_TO_NCHW)}, name=f"{node.name}.nchw", before=node).outputs[0]
    y = graph.add_node("MaxPool", [x], attrs, name=node.name, before=node).outputs[0]
    return [graph.add_node("Transpose", [y], {"perm": list(NCHW_TO_NHWC)}, name=f"{node.name}.nhwc", before=node,
                           output_types=[node.outputs[0].type]).outputs[0]]


register_op("qmaxpool", "edlc", infer=_qmaxpool_type, reference=_qmaxpool_reference,
            decompose=_qmaxpool_decompose,
            doc="MaxPool on int8 data (ONNX attributes), lowered with windows clamped to the input: "
                "no padding tests in the vectorized loop")

__all__ = ["BIAS", "CONV_ATTRS", "EXTRA", "NCHW_TO_NHWC", "NHWC_TO_NCHW", "layouts", "maxpool_window", "qmaxpool_supported", "QUANT_OPS", "W", "W_SCALE", "W_ZP", "X", "X_SCALE", "X_ZP",
           "Y_SCALE", "Y_ZP", "conv2d_exact", "conv_geometry", "int32_output", "quantized_output", "requantize"]
