"""Lowering of the int8 ops (`edlc.qconv2d`, `edlc.qmatmul`): int32 accumulation of
zero-point-corrected int16 operands (exact; int8 x int8 products and their sums fit), then
the requantization epilogue, all in one Primitive function, so FuseTIR makes it one kernel.

The arithmetic is the numpy reference's (edlc.passes.quantize.params), op for op in float32:
scale by x_scale * w_scale per output channel, clip, divide by y_scale, round half to even,
add the zero point, saturate. Scales and zero points must be constants.
"""

from __future__ import annotations

import numpy as np

from edlc.errors import LoweringError
from edlc.ir.graph import Node
from edlc.lower import LowerContext, register_lowering


def _const(node: Node, i: int, what: str) -> np.ndarray | None:
    v = node.inputs[i] if i < len(node.inputs) else None
    if v is None:
        return None
    if not v.is_constant:
        raise LoweringError(f"node '{node.name}' ({node.op}): {what} must be a constant")
    return np.asarray(v.const)


def _channel(a: np.ndarray, rank: int, axis: int) -> np.ndarray:
    """A per-channel vector shaped to broadcast along `axis` (or a scalar as is)."""
    if a.ndim == 0:
        return a
    shape = [1] * rank
    shape[axis % rank] = a.size
    return a.reshape(shape)


def _emit_int8(ctx: LowerContext, node: Node, inputs: list, kind: str):
    import tvm
    from tvm import relax

    from edlc.passes.quantize.ops import (
        BIAS,
        W_SCALE,
        W_ZP,
        X_SCALE,
        X_ZP,
        Y_SCALE,
        Y_ZP,
        conv_geometry,
    )
    from edlc.passes.quantize.params import QRANGE, bias_scale

    def const(a) -> relax.Constant:
        return relax.const(tvm.runtime.tensor(np.ascontiguousarray(a)))

    x_scale, w_scale = _const(node, X_SCALE, "x_scale"), _const(node, W_SCALE, "w_scale")
    x_zp, w_zp = _const(node, X_ZP, "x_zero_point"), _const(node, W_ZP, "w_zero_point")
    y_scale, y_zp = _const(node, Y_SCALE, "y_scale"), _const(node, Y_ZP, "y_zero_point")
    has_bias = len(node.inputs) > BIAS and node.inputs[BIAS] is not None
    x, w = inputs[0], inputs[3]
    rank = node.outputs[0].type.rank
    axis = 1 if kind == "conv" else -1  # the output channel axis

    params = [relax.Var("x", x.ty), relax.Var("w", w.ty)]
    if has_bias:
        params.append(relax.Var("bias", inputs[BIAS].ty))
    sub = relax.BlockBuilder()
    with sub.function("f", params, attrs={"Primitive": True}, private=True):
        with sub.dataflow():
            xi = sub.emit(relax.op.astype(params[0], "int16"))
            if x_zp is not None and np.any(x_zp):
                xi = sub.emit(relax.op.subtract(xi, const(x_zp.astype(np.int16))))
            wi = sub.emit(relax.op.astype(params[1], "int16"))
            if w_zp is not None and np.any(w_zp):
                wi = sub.emit(relax.op.subtract(wi, const(_channel(w_zp.astype(np.int16), 4 if kind == "conv" else 2,
                                                                   0 if kind == "conv" else 1))))
            if kind == "conv":
                strides, pads, dil = conv_geometry(node, 4)
                acc = relax.op.nn.conv2d(xi, wi, strides, pads, dil, int(node.attrs.get("group", 1)),
                                         out_dtype="int32")
            else:
                acc = relax.op.matmul(xi, wi, out_dtype="int32")
            acc = sub.emit(acc)
            if has_bias:
                b = params[2]
                if kind == "conv":
                    b = sub.emit(relax.op.reshape(b, [1, -1, 1, 1]))
                acc = sub.emit(relax.op.add(acc, b))
            mult = bias_scale(x_scale, w_scale)
            y = sub.emit(relax.op.multiply(relax.op.astype(acc, "float32"), const(_channel(mult, rank, axis))))
            lo, hi = node.attrs.get("clip_min"), node.attrs.get("clip_max")
            if lo is not None:
                y = sub.emit(relax.op.maximum(y, const(np.float32(lo))))
            if hi is not None:
                y = sub.emit(relax.op.minimum(y, const(np.float32(hi))))
            if y_scale is not None:
                zp = y_zp if y_zp is not None else np.array(0, np.uint8)
                qlo, qhi = QRANGE[str(zp.dtype)]
                y = sub.emit(relax.op.round(relax.op.divide(y, const(np.float32(y_scale)))))
                y = sub.emit(relax.op.add(y, const(np.float32(zp))))
                y = sub.emit(relax.op.minimum(relax.op.maximum(y, const(np.float32(qlo))), const(np.float32(qhi))))
                y = sub.emit(relax.op.astype(y, str(zp.dtype)))
            out = sub.emit_output(y)
        sub.emit_func_output(out)
    gv = ctx.bb.add_func(sub.get()["f"], ctx.fresh(f"{node.op}_{node.name}"))
    args = [x, w] + ([inputs[BIAS]] if has_bias else [])
    return ctx.emit(relax.Call(gv, args))


@register_lowering("qconv2d", "edlc")
def qconv2d(ctx: LowerContext, node: Node, inputs: list):
    return _emit_int8(ctx, node, inputs, "conv")


@register_lowering("qmatmul", "edlc")
def qmatmul(ctx: LowerContext, node: Node, inputs: list):
    return _emit_int8(ctx, node, inputs, "matmul")


# QOperator models: QLinearConv and QLinearMatMul take the same inputs, in the same order.
@register_lowering("QLinearConv")
def qlinear_conv(ctx: LowerContext, node: Node, inputs: list):
    return _emit_int8(ctx, node, inputs, "conv")


@register_lowering("QLinearMatMul")
def qlinear_matmul(ctx: LowerContext, node: Node, inputs: list):
    b = node.inputs[3]
    if b.type is None or b.type.rank != 2:
        raise LoweringError(f"node '{node.name}' (QLinearMatMul): only a 2-D B is supported")
    return _emit_int8(ctx, node, inputs, "matmul")
