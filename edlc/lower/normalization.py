"""LayerNormalization and RMSNormalization, written out in Relax ops.

TVM's converter for LayerNormalization returns Mean/InvStdDev with the wrong rank and has no
RMSNormalization; both are a few reductions, so edlc lowers them itself, computing in the
`stash_type` precision as ONNX specifies.
"""

from __future__ import annotations

from edlc.lower import LowerContext, register_lowering

_STASH = {1: "float32", 10: "float16", 11: "float64", 16: "bfloat16"}


def _axes(node, rank: int) -> list[int]:
    axis = node.attrs.get("axis", -1)
    axis = axis + rank if axis < 0 else axis
    return list(range(axis, rank))


def _stash(ctx: LowerContext, node, x):
    from tvm import relax

    dtype = _STASH.get(node.attrs.get("stash_type", 1), "float32")
    return dtype, (ctx.emit(relax.op.astype(x, dtype)) if x.ty.dtype != dtype else x)


@register_lowering("LayerNormalization")
def layer_norm(ctx: LowerContext, node, inputs):
    from tvm import relax

    x, scale, bias = (inputs + [None, None])[:3]
    out_dtype = x.ty.dtype
    axes = _axes(node, x.ty.ndim)
    eps = node.attrs.get("epsilon", 1e-5)
    dtype, xs = _stash(ctx, node, x)
    mean = ctx.emit(relax.op.mean(xs, axes, keepdims=True))
    centered = ctx.emit(relax.op.subtract(xs, mean))
    var = ctx.emit(relax.op.mean(relax.op.multiply(centered, centered), axes, keepdims=True))
    inv_std = ctx.emit(relax.op.rsqrt(relax.op.add(var, relax.const(eps, dtype))))
    y = ctx.emit(relax.op.astype(relax.op.multiply(centered, inv_std), out_dtype))
    y = ctx.emit(relax.op.multiply(y, scale))
    if bias is not None:
        y = ctx.emit(relax.op.add(y, bias))
    return [y, mean, inv_std][: len(node.outputs)]


@register_lowering("RMSNormalization")
def rms_norm(ctx: LowerContext, node, inputs):
    from tvm import relax

    x, scale = inputs[:2]
    out_dtype = x.ty.dtype
    axes = _axes(node, x.ty.ndim)
    eps = node.attrs.get("epsilon", 1e-5)
    dtype, xs = _stash(ctx, node, x)
    ms = ctx.emit(relax.op.mean(relax.op.multiply(xs, xs), axes, keepdims=True))
    inv = ctx.emit(relax.op.rsqrt(relax.op.add(ms, relax.const(eps, dtype))))
    y = ctx.emit(relax.op.astype(relax.op.multiply(xs, inv), out_dtype))
    return ctx.emit(relax.op.multiply(y, scale))
