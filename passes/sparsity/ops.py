"""The sparse matmul ops: `edlc.bsr_matmul` (block sparse) and `edlc.nm_matmul` (N:M).

Both compute `x @ W (+ bias)` for a constant W [K, N] stored compressed:

    bsr_matmul(x[..., K], values[NB/G, J, G, R, C], indices[NB/G, J, G] uint, bias?[N])
                                                                            attrs: k
        row block i = a*G + b (outputs i*R .. i*R+R-1) keeps J blocks of R x C weights,
        values[a, j, b] covering inputs indices[a, j, b]*C .. +C. Row blocks with fewer blocks
        are padded with zero blocks (index 0), so every loop bound is static. G row blocks
        (bsr_group: G*R <= 8) are interleaved block by block: the order a kernel that keeps G
        row blocks' accumulators reads them in, one sequential stream. The indices are the
        narrowest unsigned type holding K/C - 1.
    nm_matmul(x[..., K], values[N/L, K*n/m, L], indices[N/L, K/m, L] uint, bias?[N])
                                                                            attrs: n, m, k
        output o = c*L + l keeps n of every m consecutive inputs: values[c, g*n + t, l]
        multiplies x[g*m + p_t], where p_t is field t (bits t*b .. t*b+b-1, b = index_bits(m))
        of indices[c, g, l]: the n in-group positions of a group packed in one small word,
        as the GPU formats keep 2:4 metadata (4 bits per 4 weights). Outputs go in column
        blocks of L (the largest of 32, 16, 8, 4, 2, 1 dividing N) so a kernel reads one
        contiguous stream per block and vectorizes over its L columns.

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


def bsr_group(row_blocks: int, r: int) -> int:
    """G, the row blocks the BSR layout interleaves: the most of 8, 4, 2 dividing NB with at
    most 8 rows in all (the accumulators a kernel keeps), else 1."""
    return next((g for g in (8, 4, 2) if row_blocks % g == 0 and g * r <= 8), 1)


def bsr_index_dtype(k_blocks: int) -> str:
    """The narrowest type holding a block column index below `k_blocks`."""
    return "uint8" if k_blocks <= 1 << 8 else "uint16" if k_blocks <= 1 << 16 else "int32"


def bsr_to_dense(values: np.ndarray, indices: np.ndarray, k: int) -> np.ndarray:
    """The [K, N] matrix a BSR weight stands for."""
    groups, j, g, r, c = values.shape
    nb = groups * g
    v = values.transpose(0, 2, 1, 3, 4).reshape(nb * j, r, c)
    ix = indices.transpose(0, 2, 1).reshape(-1).astype(np.int64)
    wt = np.zeros((nb, r, k // c, c), values.dtype)
    np.add.at(wt, (np.repeat(np.arange(nb), j), slice(None), ix), v)
    return wt.reshape(nb * r, k).T.copy()


def index_bits(m: int) -> int:
    """Bits of one in-group position of an N:M pattern."""
    return max(1, (m - 1).bit_length())


def nm_index_dtype(n: int, m: int) -> str | None:
    """The unsigned type that holds the n packed positions of a group, or None if none does."""
    bits = n * index_bits(m)
    return next((f"uint{w}" for w in (8, 16, 32) if bits <= w), None)


def nm_positions(indices: np.ndarray, n: int, m: int) -> np.ndarray:
    """[N/L, K/m, n, L] in-group positions from the packed indices."""
    b = index_bits(m)
    shifts = (b * np.arange(n, dtype=np.int64))[None, None, :, None]
    return (indices[:, :, None, :].astype(np.int64) >> shifts) & ((1 << b) - 1)


def nm_to_dense(values: np.ndarray, indices: np.ndarray, n: int, m: int, k: int) -> np.ndarray:
    """The [K, N] matrix an N:M weight stands for."""
    blocks, _, lanes = values.shape
    w = np.zeros((blocks, k // m, m, lanes), values.dtype)
    np.put_along_axis(w, nm_positions(indices, n, m), values.reshape(blocks, k // m, n, lanes), axis=2)
    return w.transpose(1, 2, 0, 3).reshape(k, blocks * lanes)


def dense_weight(node: Node) -> np.ndarray:
    """The dense [K, N] weight of a sparse matmul node (its inputs must be constants)."""
    values, indices = node.inputs[1].const, node.inputs[2].const
    k = int(node.attrs["k"])
    if node.op == "bsr_matmul":
        return bsr_to_dense(values, indices, k)
    return nm_to_dense(values, indices, int(node.attrs["n"]), int(node.attrs["m"]), k)


def out_features(node: Node) -> int:
    v = node.inputs[1].type.shape
    return int(v[0] * v[2] * v[3]) if node.op == "bsr_matmul" else int(v[0] * v[2])


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
            doc="x @ W (+ bias) with W block sparse (BSR, static pattern, zero-padded, interleaved row blocks)")
register_op("nm_matmul", "edlc", infer=_infer, reference=_reference, decompose=_decompose,
            doc="x @ W (+ bias) with W N:M sparse along K (values + packed in-group positions)")

__all__ = ["SPARSE_OPS", "bsr_group", "bsr_index_dtype", "bsr_to_dense", "dense_weight", "index_bits", "nm_index_dtype", "nm_positions",
           "nm_to_dense", "out_features"]
