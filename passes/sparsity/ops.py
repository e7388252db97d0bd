"""The sparse matmul ops: `edlc.bsr_matmul` (block sparse) and `edlc.nm_matmul` (N:M).

Both compute `x @ W (+ bias)` for a constant W [K, N] stored compressed, output-major:

    bsr_matmul(x[..., K], values[NB, J, R, C], indices[NB, J] int32, bias?[N])   attrs: k
        row block i (outputs i*R .. i*R+R-1) keeps J blocks of R x C weights; block j covers
        inputs indices[i, j]*C .. +C. Row blocks with fewer blocks are padded with zero
        blocks (index 0), so every loop bound is static.
    nm_matmul(x[..., K], values[N, K*n/m], indices[N, K*n/m] int8, bias?[N])   attrs: n, m, k
        output o keeps n of every m consecutive inputs: values[o, g*n + t] multiplies
        x[g*m + indices[o, g*n + t]] (one byte of index per kept value).

The pattern lives in constants, so the lowering (edlc/lower/sparse.py) generates a kernel
specialized to it. The ONNX export writes the dense MatMul (+ Add), which any runtime runs.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from edlc.errors import ShapeError
from edlc.ir.graph import Graph, Node, Value
from edlc.ir.ops import register_op
from edlc.ir.types import TensorType

SPARSE_OPS = ("bsr_matmul", "nm_matmul")


def bsr_to_dense(values: np.ndarray, indices: np.ndarray, k: int) -> np.ndarray:
    """The [K, N] matrix a BSR weight stands for."""
    nb, j, r, c = values.shape
    wt = np.zeros((nb, r, k // c, c), values.dtype)
    rows = np.repeat(np.arange(nb), j)
    np.add.at(wt, (rows, slice(None), indices.reshape(-1)), values.reshape(nb * j, r, c))
    return wt.reshape(nb * r, k).T.copy()


def nm_to_dense(values: np.ndarray, indices: np.ndarray, n: int, m: int, k: int) -> np.ndarray:
    """The [K, N] matrix an N:M weight stands for."""
    out_n, kept = values.shape
    cols = (np.arange(kept) // n * m)[None, :] + indices.astype(np.int64)
    wt = np.zeros((out_n, k), values.dtype)
    np.put_along_axis(wt, cols, values, axis=1)
    return wt.T.copy()


def dense_weight(node: Node) -> np.ndarray:
    """The dense [K, N] weight of a sparse matmul node (its inputs must be constants)."""
    values, indices = node.inputs[1].const, node.inputs[2].const
    k = int(node.attrs["k"])
    if node.op == "bsr_matmul":
        return bsr_to_dense(values, indices, k)
    return nm_to_dense(values, indices, int(node.attrs["n"]), int(node.attrs["m"]), k)


def out_features(node: Node) -> int:
    v = node.inputs[1].type.shape
    return int(v[0] * v[2]) if node.op == "bsr_matmul" else int(v[0])


def _infer(node: Node) -> list[TensorType]:
    x = node.inputs[0].type
    if x is None or x.shape is None:
        return [TensorType(None, x.dtype if x is not None else "float32")]
    if x.shape[-1] != node.attrs["k"]:
        raise ShapeError(f"node '{node.name}' ({node.qualified_op}): input has {x.shape[-1]} "
                         f"features, the weight {node.attrs['k']}")
    return [TensorType(tuple(x.shape[:-1]) + (out_features(node),), x.dtype)]


def _bias(node: Node) -> Value | None:
    return node.inputs[3] if len(node.inputs) > 3 else None


def _reference(node: Node, inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
    x = np.asarray(inputs[0])
    w = (bsr_to_dense(inputs[1], inputs[2], int(node.attrs["k"])) if node.op == "bsr_matmul"
         else nm_to_dense(inputs[1], inputs[2], int(node.attrs["n"]), int(node.attrs["m"]), int(node.attrs["k"])))
    y = np.matmul(x, w.astype(x.dtype))
    if len(inputs) > 3 and inputs[3] is not None:
        y = y + inputs[3]
    return [y.astype(x.dtype)]


def _decompose(graph: Graph, node: Node) -> list[Value]:
    w = graph.constant(dense_weight(node), f"{node.name}.weight")
    y = graph.add_node("MatMul", [node.inputs[0], w], name=f"{node.name}.MatMul", before=node).outputs[0]
    bias = _bias(node)
    if bias is not None:
        y = graph.add_node("Add", [y, bias], name=f"{node.name}.bias", before=node).outputs[0]
    return [y]


register_op("bsr_matmul", "edlc", infer=_infer, reference=_reference, decompose=_decompose,
            doc="x @ W (+ bias) with W block sparse (BSR, static pattern, zero-padded row blocks)")
register_op("nm_matmul", "edlc", infer=_infer, reference=_reference, decompose=_decompose,
            doc="x @ W (+ bias) with W N:M sparse along K (values + in-group positions)")

__all__ = ["SPARSE_OPS", "bsr_to_dense", "dense_weight", "nm_to_dense", "out_features"]
