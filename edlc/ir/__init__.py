"""edlc's graph IR: Graph, Node, Value, TensorType and the op registry."""

from edlc.ir.graph import Graph, Node, Value
from edlc.ir.ops import OpDef, evaluate, infer_types, op_def, register_op, registered_ops
from edlc.ir.types import TensorType

__all__ = [
    "Graph", "Node", "OpDef", "TensorType", "Value",
    "evaluate", "infer_types", "op_def", "register_op", "registered_ops",
]
