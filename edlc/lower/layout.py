"""Lowering of the NHWC ops the `layout` pass creates (domain "edlc").

Each is its ONNX namesake on NHWC data: attributes as in ONNX, pads already explicit
([top, left, bottom, right], which is also TVM's order). `edlc::Conv` carries its weight in
`kernel_layout` (OHWI, or HWIO when depthwise); TOPI's generic conv handles both for any
group count.
"""

from __future__ import annotations

from edlc.errors import LoweringError
from edlc.lower import LowerContext, register_lowering


def _check_nhwc(node) -> None:
    if node.attrs.get("layout", "NHWC") != "NHWC":
        raise LoweringError(f"node '{node.name}' ({node.qualified_op}): layout "
                            f"'{node.attrs['layout']}' is not supported, only NHWC")


def _window(node) -> dict:
    """Strides, pads and dilations of a 2-D conv or pool, ONNX defaults filled in."""
    return {
        "strides": [int(s) for s in node.attrs.get("strides", [1, 1])],
        "padding": [int(p) for p in node.attrs.get("pads", [0, 0, 0, 0])],
        "dilation": [int(d) for d in node.attrs.get("dilations", [1, 1])],
    }


@register_lowering("Conv", "edlc")
def conv_nhwc(ctx: LowerContext, node, inputs):
    from tvm import relax

    _check_nhwc(node)
    x, w = inputs[0], inputs[1]
    bias = inputs[2] if len(inputs) > 2 else None
    y = ctx.emit(relax.op.nn.conv2d(
        x, w, groups=int(node.attrs.get("group", 1)), data_layout="NHWC",
        kernel_layout=node.attrs["kernel_layout"], out_layout="NHWC", **_window(node)))
    if bias is not None:  # [C] broadcasts over the last (channel) axis
        y = ctx.emit(relax.op.add(y, bias))
    return y


def _pool(op_name: str):
    def rule(ctx: LowerContext, node, inputs):
        from tvm import relax

        _check_nhwc(node)
        pool = getattr(relax.op.nn, op_name)
        return ctx.emit(pool(
            inputs[0], pool_size=[int(k) for k in node.attrs["kernel_shape"]],
            ceil_mode=bool(node.attrs.get("ceil_mode", 0)),
            count_include_pad=bool(node.attrs.get("count_include_pad", 0)),
            layout="NHWC", **_window(node)))

    return rule


register_lowering("MaxPool", "edlc")(_pool("max_pool2d"))
register_lowering("AveragePool", "edlc")(_pool("avg_pool2d"))


@register_lowering("GlobalAveragePool", "edlc")
def global_average_pool_nhwc(ctx: LowerContext, node, inputs):
    from tvm import relax

    _check_nhwc(node)
    return ctx.emit(relax.op.mean(inputs[0], axis=[1, 2], keepdims=True))


@register_lowering("GlobalMaxPool", "edlc")
def global_max_pool_nhwc(ctx: LowerContext, node, inputs):
    from tvm import relax

    _check_nhwc(node)
    return ctx.emit(relax.op.max(inputs[0], axis=[1, 2], keepdims=True))
