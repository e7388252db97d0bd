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
from edlc.lower import LowerContext, _lower_node, register_lowering
from edlc.lower.fused import retarget_call_tir


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


def _const_array(a) -> object:
    import tvm
    from tvm import relax

    return relax.const(tvm.runtime.tensor(np.ascontiguousarray(a)))


def _plain_acc(sub, node: Node, x, w, kind: str, x_zp: np.ndarray | None, w_zp: np.ndarray | None):
    """int32 accumulator by TVM's own conv2d / matmul on int16 operands (any group, any
    weight zero point)."""
    from tvm import relax

    from edlc.passes.quantize.ops import conv_geometry

    xi = sub.emit(relax.op.astype(x, "int16"))
    if x_zp is not None and np.any(x_zp):
        xi = sub.emit(relax.op.subtract(xi, _const_array(x_zp.astype(np.int16))))
    wi = sub.emit(relax.op.astype(w, "int16"))
    if w_zp is not None and np.any(w_zp):
        rank, axis = (4, 0) if kind == "conv" else (2, 1)
        wi = sub.emit(relax.op.subtract(wi, _const_array(_channel(w_zp.astype(np.int16), rank, axis))))
    if kind == "conv":
        from edlc.passes.quantize.ops import NCHW_TO_NHWC, NHWC_TO_NCHW, layouts

        in_layout, out_layout = layouts(node)
        if in_layout == "NHWC":
            xi = sub.emit(relax.op.permute_dims(xi, list(NHWC_TO_NCHW)))
        strides, pads, dil = conv_geometry(node, 4)
        acc = sub.emit(relax.op.nn.conv2d(xi, wi, strides, pads, dil, int(node.attrs.get("group", 1)),
                                          out_dtype="int32"))
        return sub.emit(relax.op.permute_dims(acc, list(NCHW_TO_NHWC))) if out_layout == "NHWC" else acc
    return sub.emit(relax.op.matmul(xi, wi, out_dtype="int32"))


def _packed_acc(sub, node: Node, x, kind: str, x_zp: np.ndarray | None, w_zp: np.ndarray | None,
                target, bias: np.ndarray | None = None):
    """int32 accumulator in the packed form (edlc.lower.int8_packed) with `depth` reduction
    steps per lane, or None where it does not apply (grouped convs, weights with a zero point,
    non-constant weights, symbolic shapes, a per-channel activation zero point)."""
    from tvm import relax

    from edlc.lower import int8_packed as packed
    from edlc.passes.quantize.ops import W, conv_geometry, layouts

    wv, xt = node.inputs[W], node.inputs[0].type
    if not wv.is_constant or xt.shape is None or any(isinstance(d, str) for d in xt.shape):
        return None
    if x_zp is not None and x_zp.size != 1:
        return None
    w = np.asarray(wv.const)
    group = int(node.attrs.get("group", 1)) if kind == "conv" else 1
    if not packed.packable(w, w_zp, group):
        return None
    zp = int(x_zp.reshape(())) if x_zp is not None else 0
    if kind == "matmul" and len(xt.shape) < 2:
        return None
    strides, pads, dil = conv_geometry(node, 4) if kind == "conv" else (None, None, (1, 1))
    in_layout, out_layout = layouts(node) if kind == "conv" else ("NCHW", "NCHW")
    depth, operand, along = packed.form_for(target, w, dil, in_layout)
    # whole blocks of output channels: the kernel's last block is computed in full (its weights
    # are zeros past the end) and the epilogue reads the real channels only
    out = int(w.shape[0] if kind == "conv" else w.shape[1])
    blocks = -(-out // packed.LANES) * packed.LANES
    if kind == "conv" and along == "kw":
        acc = sub.emit_te(packed.conv_acc_kw, x, _const_array(packed.pack_conv_weight_kw(w)), zp,
                          int(w.shape[3]), strides, pads, dil, blocks, operand, out_layout,
                          primfunc_name_hint="qconv_acc")
    elif kind == "conv":
        acc = sub.emit_te(packed.conv_acc, x, _const_array(packed.pack_conv_weight(w, depth)), zp,
                          int(w.shape[1]), strides, pads, dil, blocks, depth, operand, in_layout, out_layout,
                          primfunc_name_hint="qconv_acc")
    elif depth == packed.QUAD and operand == xt.dtype == "uint8" and packed.twin_form(target, w):
        acc = sub.emit_te(packed.matmul_acc_twins, x, _const_array(packed.pack_matmul_twins(w)), blocks,
                          primfunc_name_hint="qmatmul_acc")
    else:
        acc = sub.emit_te(packed.matmul_acc, x, _const_array(packed.pack_matmul_weight(w, depth)), zp,
                          int(w.shape[0]), blocks, depth, operand, primfunc_name_hint="qmatmul_acc")
    axis = 1 if kind == "conv" and out_layout == "NCHW" else len(xt.shape) - 1  # output channels
    if blocks != out:
        acc = sub.emit(relax.op.strided_slice(acc, axes=[axis], begin=[0], end=[out]))
    corr = None
    if depth == packed.QUAD:
        zs = packed.quad_zero(xt.dtype, zp, operand)
        if zs != 0:
            corr = packed.quad_correction(w, kind, zs)
    if bias is not None:  # the constant bias less the correction: one add per output
        folded = (bias.astype(np.int64).reshape(-1) - (0 if corr is None else corr.astype(np.int64)))
        return sub.emit(relax.op.add(acc, _const_array(_channel(folded.astype(np.int32), len(xt.shape), axis))))
    if corr is not None:
        acc = sub.emit(relax.op.subtract(acc, _const_array(_channel(corr, len(xt.shape), axis))))
    return acc


def _emit_int8(ctx: LowerContext, node: Node, inputs: list, kind: str):
    import tvm
    from tvm import relax

    from edlc.passes.quantize.ops import BIAS, EXTRA, W_SCALE, W_ZP, X_SCALE, X_ZP, Y_SCALE, Y_ZP
    from edlc.passes.quantize.params import QRANGE, bias_scale

    def const(a) -> relax.Constant:
        return relax.const(tvm.runtime.tensor(np.ascontiguousarray(a)))

    x_scale, w_scale = _const(node, X_SCALE, "x_scale"), _const(node, W_SCALE, "w_scale")
    x_zp, w_zp = _const(node, X_ZP, "x_zero_point"), _const(node, W_ZP, "w_zero_point")
    y_scale, y_zp = _const(node, Y_SCALE, "y_scale"), _const(node, Y_ZP, "y_zero_point")
    has_bias = len(node.inputs) > BIAS and node.inputs[BIAS] is not None
    x, w = inputs[0], inputs[3]
    rank = node.outputs[0].type.rank
    nchw_out = kind == "conv" and node.attrs.get("out_layout", "NCHW") == "NCHW"
    axis = 1 if nchw_out else -1  # the output channel axis

    params = [relax.Var("x", x.ty), relax.Var("w", w.ty)]
    if has_bias:
        params.append(relax.Var("bias", inputs[BIAS].ty))
    # the epilogue's ops are lowered by their own rules, in this function: one kernel
    body = node.attrs.get("epilogue")
    lc = LowerContext(body if body is not None else ctx.graph, parent=ctx)
    extras = [lc.new_input(v) for v in body.inputs[1:]] if body is not None else []
    sub = lc.bb
    with sub.function("f", attrs={"Primitive": True}, private=True):
        with sub.dataflow():
            bias_const = _const(node, BIAS, "bias") if has_bias and node.inputs[BIAS].is_constant else None
            acc = _packed_acc(sub, node, params[0], kind, x_zp, w_zp, ctx.target, bias_const)
            if acc is None:
                acc = _plain_acc(sub, node, params[0], params[1], kind, x_zp, w_zp)
                bias_const = None
            if has_bias and bias_const is None:
                b = params[2]
                if nchw_out:
                    b = sub.emit(relax.op.reshape(b, [1, -1, 1, 1]))
                acc = sub.emit(relax.op.add(acc, b))
            y = acc  # without scales, the int32 accumulator is the output (ConvInteger, MatMulInteger)
            if x_scale is not None:
                mult = bias_scale(x_scale, w_scale)
                y = sub.emit(relax.op.multiply(relax.op.astype(acc, "float32"), const(_channel(mult, rank, axis))))
            lo, hi = node.attrs.get("clip_min"), node.attrs.get("clip_max")
            if lo is not None:
                y = sub.emit(relax.op.maximum(y, const(np.float32(lo))))
            if hi is not None:
                y = sub.emit(relax.op.minimum(y, const(np.float32(hi))))
            gelu_q = y_scale is not None and _lone_gelu(body)
            if gelu_q:  # GELU and the quantization as one expression, one division
                zp = y_zp if y_zp is not None else np.array(0, np.uint8)
                y = sub.emit_te(gelu_quantize, y, const(np.float32(2 * np.float32(y_scale))),
                                const(np.float32(zp)), str(zp.dtype), primfunc_name_hint="gelu_quantize")
            elif body is not None:
                lc.bind(body.inputs[0], y)
                for n in body.nodes:
                    _lower_node(lc, n)
                y = lc.expr(body.outputs[0])
            if y_scale is not None and not gelu_q:
                zp = y_zp if y_zp is not None else np.array(0, np.uint8)
                qlo, qhi = QRANGE[str(zp.dtype)]
                y = sub.emit(relax.op.round(relax.op.divide(y, const(np.float32(y_scale)))))
                y = sub.emit(relax.op.add(y, const(np.float32(zp))))
                y = sub.emit(relax.op.minimum(relax.op.maximum(y, const(np.float32(qlo))), const(np.float32(qhi))))
                y = sub.emit(relax.op.astype(y, str(zp.dtype)))
            out = sub.emit_output(y)
        sub.emit_func_output(out, params=params + extras + [var for var, _ in lc.captured])
    built = sub.get()
    moved = {gv.name_hint: ctx.bb.add_func(f, ctx.fresh(gv.name_hint))
             for gv, f in built.functions.items() if gv.name_hint != "f"}
    func = retarget_call_tir(built["f"], moved) if moved else built["f"]
    gv = ctx.bb.add_func(func, ctx.fresh(f"{node.op}_{node.name}"))
    args = [x, w] + ([inputs[BIAS]] if has_bias else []) + list(inputs[EXTRA:]) + \
        [outer for _, outer in lc.captured]
    return ctx.emit(relax.Call(gv, args))


def _lone_gelu(body) -> bool:
    """Whether an epilogue is exactly GELU (erf form) of the int8 op's real value."""
    if body is None or len(body.nodes) != 1 or len(body.inputs) != 1:
        return False
    n = body.nodes[0]
    return n.op == "Gelu" and n.domain in ("", "edlc") and n.attrs.get("approximate", "none") == "none" and \
        n.inputs[0] is body.inputs[0] and body.outputs[0] is n.outputs[0] and body.inputs[0].type.dtype == "float32"


def gelu_quantize(y, two_scale, zp, dtype: str):
    """TE: QuantizeLinear(GELU(y)) elementwise, with erf as edlc's fast form computes it
    (edlc.schedules.fastmath: erf(z) = z p(z^2) / q(z^2), z = y / sqrt 2 clipped to [-4, 4]),
    written so that one division serves both: GELU(y) / y_scale = y (q + z p) / (q * 2 y_scale).
    Equal to GELU then the division by the scale but for float32 rounding; a division less per
    element in the int8 epilogue that costs the most (BERT's FFN). `two_scale` (2 y_scale) and
    `zp` are float32 tensors of one element (kernel parameters: layers that differ in them alone
    share one kernel)."""
    from tvm import te, tirx

    from edlc.passes.quantize.params import QRANGE
    from edlc.schedules.fastmath import erf_fraction

    f32 = "float32"

    def c(v: float):
        return tirx.const(v, f32)

    qlo, qhi = QRANGE[dtype]

    def f(*idx):
        x = y[idx]
        z = tirx.max(tirx.min(x * c(0.7071067811865476), c(4.0)), c(-4.0))
        num, q = erf_fraction(z)  # erf(z) = num / q
        v = tirx.round(x * (q + num) / (q * two_scale[0])) + zp[0]
        return tirx.max(tirx.min(v, c(float(qhi))), c(float(qlo))).astype(dtype)

    return te.compute(y.shape, f, name="gelu_quantize")


@register_lowering("qconv2d", "edlc")
def qconv2d(ctx: LowerContext, node: Node, inputs: list):
    return _emit_int8(ctx, node, inputs, "conv")


@register_lowering("qmatmul", "edlc")
def qmatmul(ctx: LowerContext, node: Node, inputs: list):
    return _emit_int8(ctx, node, inputs, "matmul")


def maxpool_te(x, kernel, strides, pads, out_hw):
    """TE: a 2-D max pool (NCHW) as two reductions with the windows clamped to the input (exact
    when pads are smaller than the window and there is no dilation: a clamped position repeats a
    value of the same window). First over window rows, for every input column (contiguous:
    vectorized), then over window columns; no padding test anywhere."""
    from tvm import te, tirx

    n, c, h, w = (int(d) for d in x.shape)
    (kh, kw), (sh, sw), (pt, pl) = kernel, strides, pads[:2]
    oh, ow = out_hw

    def clamp(i, hi):
        return tirx.max(tirx.min(i, hi - 1), 0)

    ry = te.reduce_axis((0, kh), "ry")
    rows = te.compute((n, c, oh, w), lambda b, ch, y, xx: te.max(x[b, ch, clamp(y * sh + ry - pt, h), xx], axis=ry),
                      name="pool_rows")
    rx = te.reduce_axis((0, kw), "rx")
    return te.compute((n, c, oh, ow), lambda b, ch, y, xx: te.max(rows[b, ch, y, clamp(xx * sw + rx - pl, w)], axis=rx),
                      name="pool_cols")


def maxpool_nhwc_te(x, kernel, strides, pads, out_hw):
    """TE: a 2-D max pool on NHWC, windows clamped to the input as in `maxpool_te`; channels are
    innermost, so the vector lanes read contiguous channels and no test varies across them."""
    from tvm import te, tirx

    n, h, w, c = (int(d) for d in x.shape)
    (kh, kw), (sh, sw), (pt, pl) = kernel, strides, pads[:2]
    oh, ow = out_hw
    ry = te.reduce_axis((0, kh), "ry")
    rx = te.reduce_axis((0, kw), "rx")
    return te.compute(
        (n, oh, ow, c),
        lambda b, y, xx, ch: te.max(x[b, tirx.max(tirx.min(y * sh + ry - pt, h - 1), 0),
                                      tirx.max(tirx.min(xx * sw + rx - pl, w - 1), 0), ch], axis=[ry, rx]),
        name="pool_nhwc")


@register_lowering("qmaxpool", "edlc")
def qmaxpool(ctx: LowerContext, node: Node, inputs: list):
    from edlc.passes.quantize.ops import NHWC_TO_NCHW, maxpool_window

    shape = node.inputs[0].type.shape
    if node.attrs.get("layout", "NCHW") == "NHWC":
        kernel, strides, pads, out = maxpool_window(node, [shape[i] for i in NHWC_TO_NCHW])
        return ctx.bb.emit_te(maxpool_nhwc_te, inputs[0], kernel, strides, pads, out, primfunc_name_hint="qmaxpool")
    kernel, strides, pads, out = maxpool_window(node, shape)
    return ctx.bb.emit_te(maxpool_te, inputs[0], kernel, strides, pads, out, primfunc_name_hint="qmaxpool")


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


@register_lowering("ConvInteger")
def conv_integer(ctx: LowerContext, node: Node, inputs: list):
    """A ConvInteger whose weight or weight zero point is computed at run time (the import-qdq
    pass turns the others into edlc.qconv2d: edlc.passes.quantize.integer): int16 operands less
    their zero points, int32 products and sums, zero padding; exact."""
    from tvm import relax

    from edlc.passes.layout import explicit_pads

    x, w = node.inputs[0].type, node.inputs[1].type
    if x is None or x.rank != 4 or w is None or w.rank != 4:
        raise LoweringError(f"node '{node.name}' (ConvInteger): inputs 'x' and 'w' have ranks "
                            f"{None if x is None else x.rank} and {None if w is None else w.rank}; only "
                            "2-D convolutions (rank 4) are supported")
    pads = explicit_pads(node, w.shape[2:])
    if pads is None or any(isinstance(d, str) for d in w.shape[2:]):
        raise LoweringError(f"node '{node.name}' (ConvInteger): auto_pad={node.attrs.get('auto_pad')} "
                            f"needs static shapes; input 'x' has shape {list(x.shape)}")

    def centered(v, zp, per_channel: bool):
        v = ctx.emit(relax.op.astype(v, "int16"))
        if zp is None:
            return v
        zp = ctx.emit(relax.op.astype(zp, "int16"))
        if per_channel:  # a scalar, [1] or [M]: along the output channels
            zp = ctx.emit(relax.op.reshape(zp, [-1, 1, 1, 1]))
        return ctx.emit(relax.op.subtract(v, zp))

    xi = centered(inputs[0], inputs[2] if len(inputs) > 2 else None, False)
    wi = centered(inputs[1], inputs[3] if len(inputs) > 3 else None, True)
    a = node.attrs
    return ctx.emit(relax.op.nn.conv2d(xi, wi, a.get("strides", [1, 1]), pads, a.get("dilations", [1, 1]),
                                       int(a.get("group", 1)), out_dtype="int32"))
