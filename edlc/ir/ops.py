"""The op registry: per op, its shape/type rule, an optional numpy reference and its lowering
rule. Adding an op touches one place.

ONNX ops need no entry for shape rules or references: ONNX's own shape inference and reference
evaluator serve as defaults, run on a one-node model. An entry overrides them (edlc.* ops must
have one). Lowering rules are attached by `edlc.lower` with `register_lowering`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from edlc.errors import ShapeError
from edlc.ir.types import TensorType

if TYPE_CHECKING:
    from edlc.ir.graph import Graph, Node, Value

InferFn = Callable[["Node"], list[TensorType]]
ReferenceFn = Callable[["Node", Sequence[np.ndarray]], list[np.ndarray]]
# Writes standard ONNX nodes computing `node` before it in `graph`; returns its new outputs.
DecomposeFn = Callable[["Graph", "Node"], list["Value"]]


@dataclass
class OpDef:
    name: str
    domain: str = ""
    infer: InferFn | None = None
    reference: ReferenceFn | None = None
    lower: Callable | None = None
    decompose: DecomposeFn | None = None  # how ONNX export writes an edlc op in standard ops
    doc: str = ""


_OPS: dict[tuple[str, str], OpDef] = {}


def _key(domain: str, name: str) -> tuple[str, str]:
    return ("" if domain == "ai.onnx" else domain, name)


def op_def(name: str, domain: str = "", create: bool = False) -> OpDef | None:
    key = _key(domain, name)
    if key not in _OPS and create:
        _OPS[key] = OpDef(name, key[0])
    return _OPS.get(key)


def register_op(
    name: str,
    domain: str = "",
    *,
    infer: InferFn | None = None,
    reference: ReferenceFn | None = None,
    decompose: DecomposeFn | None = None,
    doc: str = "",
) -> OpDef:
    """Declare (or extend) an op's entry; keeps fields already set by others."""
    d = op_def(name, domain, create=True)
    d.infer = infer or d.infer
    d.reference = reference or d.reference
    d.decompose = decompose or d.decompose
    d.doc = doc or d.doc
    return d


def registered_ops() -> list[OpDef]:
    return sorted(_OPS.values(), key=lambda d: (d.domain, d.name))


def infer_types(node: Node, opset: dict[str, int]) -> list[TensorType]:
    """Output types of `node` from its inputs' types (and constant values, where shapes depend
    on them, as for Reshape)."""
    d = op_def(node.op, node.domain)
    if d is not None and d.infer is not None:
        return d.infer(node)
    if node.domain not in ("", "ai.onnx"):
        raise ShapeError(f"node '{node.name}': no shape rule for op '{node.qualified_op}'")
    from edlc.frontend.onnx import infer_node_types

    return infer_node_types(node, opset)


def evaluate(node: Node, inputs: Sequence[np.ndarray | None], opset: dict[str, int]) -> list[np.ndarray]:
    """Compute a node's outputs from numpy inputs (constant folding and reference checks)."""
    d = op_def(node.op, node.domain)
    if d is not None and d.reference is not None:
        return d.reference(node, inputs)
    if node.domain not in ("", "ai.onnx"):
        raise NotImplementedError(f"op '{node.qualified_op}' has no numpy reference")
    from edlc.frontend.onnx import evaluate_node

    return evaluate_node(node, inputs, opset)
