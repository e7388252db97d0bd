"""Lowering through TVM's maintained ONNX op converters, one node at a time.

TVM's Relax ONNX frontend holds a converter per ONNX op (`_impl_vN(bb, inputs, attrs, params)`).
edlc calls them directly from its own IR: attributes are re-encoded the way the converters read
them (bytes, TensorProto, tuples) and weights are offered through `params` so a converter that
needs a constant (a Reshape shape, Pad pads) can read it.
"""

from __future__ import annotations

from functools import cache
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from edlc.ir.graph import Node
    from edlc.lower import LowerContext


@cache
def _convert_map() -> dict[str, Any]:
    from tvm.relax.frontend.onnx import onnx_frontend

    return onnx_frontend._get_convert_map()


def _tvm_attr(a: Any) -> Any:
    from onnx import numpy_helper

    from edlc.ir.graph import Graph

    if isinstance(a, str):
        return a.encode("utf-8", errors="surrogateescape")
    if isinstance(a, np.ndarray):
        return numpy_helper.from_array(a)
    if isinstance(a, Graph):
        from edlc.frontend.onnx import graph_to_proto

        return graph_to_proto(a)
    if isinstance(a, list):
        return tuple(_tvm_attr(x) for x in a)
    return a


def tvm_converter_rule(op: str):
    """The lowering rule that calls TVM's converter for `op`, or None if TVM has none."""
    converter_class = _convert_map().get(op)
    if converter_class is None:
        return None

    def rule(ctx: LowerContext, node: Node, inputs: list):
        from tvm.relax.frontend.onnx.onnx_frontend import onnx_input

        attrs = {k: _tvm_attr(a) for k, a in node.attrs.items()}
        attrs["tvm_custom"] = {"name": node.name, "num_outputs": len(node.outputs)}
        convert = converter_class.get_converter(ctx.opset)
        nodes: dict[str, Any] = {}
        out = convert(ctx.bb, onnx_input(inputs), attrs, [nodes, ctx.tvm_params])
        return ctx.bb.normalize(out)

    rule.__name__ = f"tvm_onnx_{op}"
    return rule
