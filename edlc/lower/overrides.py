"""ONNX ops where TVM's converter computes a wrong answer: edlc's own rule, or a refusal of the
attribute values TVM ignores. A clear error beats a silently wrong result. Also Clip, whose
converter's form of constant bounds MetaSchedule cannot tile.

Found by the conformance suite (tests/conformance): Tile is miscompiled on AVX-512 targets,
IsInf ignores detect_positive/negative, SpaceToDepth ignores its mode, and BatchNormalization
and Dropout in training mode and antialiased Resize are computed as something else.
"""

from __future__ import annotations

from edlc.lower import LowerContext, register_lowering
from edlc.lower.tvm_onnx import tvm_converter_rule


def _static_shape(v) -> list[int]:
    if v is None or v.type is None or not v.type.is_static:
        raise ValueError(f"needs a static shape for '{getattr(v, 'name', '?')}'; bind input shapes")
    return list(v.type.shape)


def _const_ints(v, what: str) -> list[int]:
    if v is None or not v.is_constant:
        raise ValueError(f"'{what}' must be a constant")
    return [int(x) for x in v.const.reshape(-1)]


@register_lowering("Tile")
def tile(ctx: LowerContext, node, inputs):
    """out = x repeated: reshape to (1, d0, 1, d1, ...), broadcast to (r0, d0, r1, d1, ...),
    merge pairs. Pure data movement, no index arithmetic for LLVM to vectorize wrongly."""
    from tvm import relax

    shape = _static_shape(node.inputs[0])
    repeats = _const_ints(node.inputs[1], "repeats")
    interleaved = [d for s in shape for d in (1, s)]
    target = [d for r, s in zip(repeats, shape) for d in (r, s)]
    x = ctx.emit(relax.op.reshape(inputs[0], interleaved))
    x = ctx.emit(relax.op.broadcast_to(x, target))
    return ctx.emit(relax.op.reshape(x, [r * s for r, s in zip(repeats, shape)]))


@register_lowering("IsInf")
def is_inf(ctx: LowerContext, node, inputs):
    from tvm import relax

    x = inputs[0]
    pos, neg = node.attrs.get("detect_positive", 1), node.attrs.get("detect_negative", 1)
    inf = relax.op.isinf(x)
    zero = relax.const(0, x.ty.dtype)
    if pos and neg:
        return ctx.emit(inf)
    if not pos and not neg:
        return ctx.emit(relax.op.zeros_like(inf))
    side = relax.op.greater(x, zero) if pos else relax.op.less(x, zero)
    return ctx.emit(relax.op.logical_and(inf, side))


@register_lowering("SpaceToDepth")
def space_to_depth(ctx: LowerContext, node, inputs):
    from tvm import relax

    n, c, h, w = _static_shape(node.inputs[0])
    b = int(node.attrs["blocksize"])
    mode = node.attrs.get("mode", "DCR")
    x = ctx.emit(relax.op.reshape(inputs[0], [n, c, h // b, b, w // b, b]))
    perm = [0, 3, 5, 1, 2, 4] if mode == "DCR" else [0, 1, 3, 5, 2, 4]
    x = ctx.emit(relax.op.permute_dims(x, perm))
    return ctx.emit(relax.op.reshape(x, [n, c * b * b, h // b, w // b]))


def _guarded(op: str, check):
    """TVM's converter, after `check(node)` has refused what it would get wrong."""
    convert = tvm_converter_rule(op)

    def rule(ctx: LowerContext, node, inputs):
        check(node)
        return convert(ctx, node, inputs)

    register_lowering(op)(rule)


def _no_training_batchnorm(node) -> None:
    if node.attrs.get("training_mode", 0):
        raise ValueError("training_mode=1 (batch statistics) is not supported; export the model for inference")


def _no_training_dropout(node) -> None:
    mode = node.inputs[2] if len(node.inputs) > 2 else None
    if mode is not None and (not mode.is_constant or bool(mode.const.reshape(-1)[0])):
        raise ValueError("training_mode (random dropout) is not supported; export the model for inference")


def _no_antialias(node) -> None:
    if node.attrs.get("antialias", 0):
        raise ValueError("antialias=1 is not supported")


_guarded("BatchNormalization", _no_training_batchnorm)
_guarded("Dropout", _no_training_dropout)
_guarded("Resize", _no_antialias)


def _axes_as_vector(op: str) -> None:
    """TVM's converter iterates `axes`; ONNX also allows it as a 0-d constant."""
    convert = tvm_converter_rule(op)

    def rule(ctx: LowerContext, node, inputs):
        import tvm
        from tvm import relax

        axes = node.inputs[1] if len(node.inputs) > 1 else None
        if axes is not None and axes.is_constant and axes.const.ndim == 0:
            inputs = [inputs[0], relax.const(tvm.runtime.tensor(axes.const.reshape(1)))] + inputs[2:]
        return convert(ctx, node, inputs)

    register_lowering(op)(rule)


_axes_as_vector("Unsqueeze")
_axes_as_vector("Squeeze")


def _no_empty_reduction(node) -> None:
    shape = node.inputs[0].type.shape if node.inputs[0].type is not None else None
    if shape is not None and 0 in shape:
        raise ValueError(f"reducing an empty tensor {list(shape)} is not supported (TVM gives a wrong identity)")


def _no_max_roialign(node) -> None:
    if node.attrs.get("mode", "avg") == "max":
        raise ValueError("mode='max' is not supported (TVM's max pooling differs from ONNX's)")


def _infinite_reduction(op: str, identity: float) -> None:
    """TVM's max (min) reduction starts from the lowest (highest) finite float, so a slice that
    is all -inf (+inf) comes out finite. Reduce a mask of the other values too, and put the
    infinity back where the slice had none."""
    convert = tvm_converter_rule(op)

    def rule(ctx: LowerContext, node, inputs):
        from tvm import relax

        _no_empty_reduction(node)
        y = convert(ctx, node, inputs)
        x = inputs[0]
        if x.ty.dtype not in ("float16", "bfloat16", "float32", "float64"):
            return y
        inf = relax.const(identity, x.ty.dtype)
        others = ctx.emit(relax.op.astype(relax.op.not_equal(x, inf), x.ty.dtype))
        if identity > 0:  # min of the mask would ask "all", not "any": negate it
            others = ctx.emit(relax.op.negative(others))
        seen = ctx.emit(convert(ctx, node, [others, *inputs[1:]]))
        return ctx.emit(relax.op.where(relax.op.equal(seen, relax.const(0, x.ty.dtype)), inf, ctx.emit(y)))

    register_lowering(op)(rule)


_infinite_reduction("ReduceMax", float("-inf"))
_infinite_reduction("ReduceMin", float("inf"))
_guarded("RoiAlign", _no_max_roialign)


@register_lowering("Conv")
def conv_with_shaped_bias(ctx: LowerContext, node, inputs):
    """A constant bias is shaped [1, C, 1, ..] at compile time: TVM's converter reshapes it in
    the graph, and inside a fused kernel that reshape is a block neither schedules nor
    MetaSchedule can place (reverse_compute_at fails on it)."""
    import numpy as np
    from tvm import relax

    from edlc.ir.graph import Value
    from edlc.ir.types import TensorType

    convert = tvm_converter_rule("Conv")
    bias = node.inputs[2] if len(node.inputs) > 2 else None
    if bias is None or not bias.is_constant or bias.const.ndim != 1:
        return convert(ctx, node, inputs)
    y = convert(ctx, node, inputs[:2])
    rank = y.ty.ndim if y.ty.ndim > 0 else 4
    shaped = np.ascontiguousarray(bias.const.reshape((1, -1) + (1,) * (rank - 2)))
    return ctx.emit(relax.op.add(y, ctx.expr(Value(f"{bias.name}_shaped", TensorType.of(shaped), shaped))))


_tvm_clip = tvm_converter_rule("Clip")


@register_lowering("Clip")
def clip(ctx: LowerContext, node, inputs):
    """Constant bounds (a ReLU6's 0 and 6) become numbers in the kernel. TVM's converter keeps
    them as tensors and checks them for NaN at run time: 0-d blocks between a conv and its
    epilogue, on which MetaSchedule's multi-level tiling fails (reverse-compute-at) for every
    fused conv+Clip kernel. A NaN bound means no bound, as in onnxruntime."""
    from tvm import topi

    bounds = [node.inputs[k] if len(node.inputs) > k else None for k in (1, 2)]
    if ctx.opset < 11 or not all(b is None or b.is_constant for b in bounds):
        return _tvm_clip(ctx, node, inputs)
    integral = not str(node.inputs[0].type.dtype).startswith(("float", "bfloat"))
    out = inputs[0]
    for bound, combine in zip(bounds, (topi.maximum, topi.minimum)):
        if bound is None:
            continue
        value = bound.const.reshape(-1)[0].item()
        if value != value:  # NaN
            continue
        out = ctx.bb.emit_te(combine, out, int(value) if integral else float(value))
    return out
