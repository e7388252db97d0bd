"""Constant folding and static shape propagation.

Evaluates every node whose inputs are all constant (numpy references from the op registry,
ONNX's reference evaluator otherwise), folds `Shape`/`Size` of statically shaped values, and
re-infers the types downstream, so exporters' `Shape -> Gather -> Concat -> Reshape` chains
become static once input shapes are bound.

    before: %s = Shape(%x: float32[1, 8, 4]); %t = Gather(%s, %i=[0]); %y = Reshape(%x, %t...)
    after:  %y = Reshape(%x, %t=[1, 32])
"""

from __future__ import annotations

import numpy as np

from edlc.errors import ShapeError
from edlc.ir.graph import Graph, Node, Value
from edlc.ir.ops import evaluate, infer_types
from edlc.ir.types import TensorType
from edlc.pass_manager import PassResult, register_pass

# A fold may not grow the model by more than this factor over its constant inputs (a large
# Expand or ConstantOfShape stays a node) unless the result is small.
GROWTH_FACTOR = 4
SMALL_BYTES = 64 * 1024
NON_DETERMINISTIC = {"RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike",
                     "Multinomial", "Bernoulli"}


def _static_shape_of(node: Node) -> list[np.ndarray] | None:
    """Shape/Size of a value whose shape is known, without its data."""
    t = node.inputs[0].type if node.inputs and node.inputs[0] is not None else None
    if t is None or not t.is_static:
        return None
    if node.op == "Size":
        return [np.array(t.numel, dtype=np.int64)]
    shape = np.array(t.shape, dtype=np.int64)
    start, end = node.attrs.get("start", 0), node.attrs.get("end")
    return [shape[start:end]]


def _try_fold(graph: Graph, node: Node) -> list[np.ndarray] | None:
    if node.domain not in ("",) or node.op in NON_DETERMINISTIC or node.subgraphs:
        return None
    if node.op in ("Shape", "Size"):
        return _static_shape_of(node)
    inputs = [v for v in node.inputs if v is not None]
    if not all(v.is_constant for v in inputs):
        return None
    if any(v.type is None or v.type.dtype == "string" for v in node.outputs):
        return None
    in_bytes = sum(v.const.nbytes for v in inputs)
    out_bytes = sum((v.type.nbytes or 0) for v in node.outputs if v.type is not None)
    if out_bytes > SMALL_BYTES and out_bytes > GROWTH_FACTOR * in_bytes:
        return None
    try:
        return evaluate(node, [v.const if v is not None else None for v in node.inputs], graph.opset)
    except Exception:  # no reference for this op or these types: leave it to the kernel
        return None


def _replace_with_constants(graph: Graph, node: Node, arrays: list[np.ndarray]) -> None:
    for v, arr in zip(node.outputs, arrays):
        want = v.type.dtype if v.type is not None else None
        arr = np.asarray(arr)
        if want and want != "string" and str(arr.dtype) != want:
            from edlc.ir.types import numpy_dtype

            arr = arr.astype(numpy_dtype(want))
        const = Value(v.name, TensorType.of(arr), const=arr)
        graph.replace_all_uses(v, const)
    graph.remove_node(node)


def refine_types(graph: Graph, node: Node) -> bool:
    """Re-infer a node's output types if any is not fully static; True if one changed."""
    if all(v.type is not None and v.type.is_static for v in node.outputs):
        return False
    try:
        types = infer_types(node, graph.opset)
    except ShapeError:
        return False
    changed = False
    for v, t in zip(node.outputs, types):
        if t is not None and t != v.type:
            v.type, changed = t, True
    return changed


@register_pass("fold-constants", "evaluate nodes whose inputs are constant; make shapes static",
               min_opt_level=0)
def fold_constants(graph: Graph) -> PassResult:
    modified = False
    for node in list(graph.nodes):
        arrays = _try_fold(graph, node)
        if arrays is not None and len(arrays) == len(node.outputs):
            _replace_with_constants(graph, node, arrays)
            modified = True
        else:
            modified |= refine_types(graph, node)
    return PassResult(graph, modified)
