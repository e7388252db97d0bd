"""Weight sparsity for MatMul / Gemm layers: prune to blocks or to N:M, pack, and swap the
layer for `edlc.bsr_matmul` / `edlc.nm_matmul`; or find weights that are already sparse.

    g2, report = prune_weights(graph, parse_spec("block:4x4:0.9"))
    g2, report = prune_weights(graph, parse_spec("2:4"))
    g2, report = detect_sparsity(graph)            # no pruning: sparse weights get sparse kernels

Block pruning is *balanced*: every row block (R outputs) keeps the same number of R x C
blocks, those of the largest L2 norm. The kernel's loops then have one static bound and no
padding; weights found already sparse may be unbalanced and are padded to the longest row
block. Blocks are taken on the output-major weight W^T [N, K], so 1x4 is one output and four
consecutive inputs, 16x1 sixteen outputs and one input.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from edlc.ir.graph import Graph, Node, Value
from edlc.ir.ops import op_def
from edlc.passes.sparsity.ops import bsr_group, bsr_index_dtype, index_bits, nm_index_dtype
from edlc.passes.sparsity.report import LayerSparsity, SparsityReport
from edlc.passes.sparsity.spec import SparsitySpec

DETECT_BLOCKS = ((4, 4), (1, 4), (16, 1))
DETECT_MIN = 0.7  # fraction of zero blocks from which a weight counts as block sparse
MIN_WEIGHTS = 1024  # smaller layers are not worth a sparse kernel


@dataclass
class _Linear:
    """A MatMul / Gemm by a constant matrix: y = x @ W + bias, W as [K, N]."""

    node: Node
    w: np.ndarray  # [K, N]
    bias: np.ndarray | None


def linear_of(node: Node) -> _Linear | str:
    """The layer as x @ W + bias, or why it cannot take a sparse kernel."""
    if node.domain not in ("", "ai.onnx") or node.op not in ("MatMul", "Gemm"):
        return "not a MatMul or Gemm"
    w = node.inputs[1]
    if w is None or not w.is_constant or w.const.ndim != 2:
        return "the weight is not a constant matrix"
    if not str(w.const.dtype).startswith("float"):
        return f"{w.const.dtype} weights"
    x = node.inputs[0].type
    if x is None or x.rank is None or x.rank < 2:
        return "the input is not a matrix"
    if node.op == "MatMul":
        return _Linear(node, w.const, None)
    if node.attrs.get("transA", 0):
        return "Gemm with transA"
    alpha, beta = float(node.attrs.get("alpha", 1.0)), float(node.attrs.get("beta", 1.0))
    mat = (w.const.T if node.attrs.get("transB", 0) else w.const) * alpha
    c = node.inputs[2] if len(node.inputs) > 2 else None
    if c is None:
        return _Linear(node, mat.astype(w.const.dtype), None)
    if not c.is_constant or c.const.size not in (1, mat.shape[1]) or (c.const.ndim == 2 and c.const.shape[0] != 1):
        return "the Gemm bias is not a constant vector"
    bias = np.broadcast_to(c.const.reshape(-1) * beta, (mat.shape[1],)).astype(w.const.dtype)
    return _Linear(node, mat.astype(w.const.dtype), bias)


# ---- pruning and packing --------------------------------------------------------------------


def block_prune(wt: np.ndarray, block: tuple[int, int], ratio: float) -> np.ndarray:
    """W^T [N, K] with all but the strongest ceil((1 - ratio) * K/C) blocks of every row
    block zeroed."""
    r, c = block
    n, k = wt.shape
    tiles = wt.reshape(n // r, r, k // c, c)
    norms = np.sqrt((tiles.astype(np.float64) ** 2).sum(axis=(1, 3)))  # [NB, KB]
    keep = max(1, math.ceil(norms.shape[1] * (1.0 - ratio)))
    order = np.argsort(-norms, axis=1, kind="stable")[:, :keep]
    mask = np.zeros_like(norms, dtype=bool)
    np.put_along_axis(mask, order, True, axis=1)
    return (tiles * mask[:, None, :, None]).reshape(n, k)


def pack_bsr(wt: np.ndarray, block: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """The `edlc.bsr_matmul` operands (values [NB/G, J, G, R, C], indices [NB/G, J, G]) of the
    nonzero blocks of W^T [N, K], row blocks padded with zero blocks to the longest and
    interleaved G at a time."""
    r, c = block
    n, k = wt.shape
    tiles = wt.reshape(n // r, r, k // c, c).transpose(0, 2, 1, 3)  # [NB, KB, R, C]
    nonzero = np.any(tiles != 0, axis=(2, 3))
    j = max(1, int(nonzero.sum(axis=1).max()))
    order = np.argsort(~nonzero, axis=1, kind="stable")[:, :j]  # nonzero blocks first, in order
    picked = np.take_along_axis(nonzero, order, axis=1)
    indices = np.where(picked, order, 0)
    values = np.take_along_axis(tiles, order[:, :, None, None], axis=1) * picked[:, :, None, None]
    nb, g = n // r, bsr_group(n // r, r)
    values = values.astype(wt.dtype).reshape(nb // g, g, j, r, c).transpose(0, 2, 1, 3, 4)
    indices = indices.reshape(nb // g, g, j).transpose(0, 2, 1).astype(bsr_index_dtype(k // c))
    return np.ascontiguousarray(values), np.ascontiguousarray(indices)


def nm_prune(wt: np.ndarray, n: int, m: int) -> tuple[np.ndarray, np.ndarray]:
    """(values [N, K*n/m], in-group positions [N, K*n/m] int8): the n largest of every m
    consecutive weights along K, in order."""
    rows, k = wt.shape
    groups = wt.reshape(rows, k // m, m)
    pos = np.sort(np.argsort(-np.abs(groups), axis=2, kind="stable")[:, :, :n], axis=2)
    values = np.take_along_axis(groups, pos, axis=2)
    return values.reshape(rows, -1).copy(), pos.reshape(rows, -1).astype(np.int8)


NM_LANES = (32, 16, 8, 4, 2, 1)  # column block widths, widest first


def nm_lanes(out_features: int) -> int:
    """L, the column block of the N:M format: the widest of NM_LANES dividing N (32 = four
    AVX2 vectors, two AVX-512 ones, eight NEON ones)."""
    return next(w for w in NM_LANES if out_features % w == 0)


def pack_nm(values: np.ndarray, pos: np.ndarray, n: int, m: int) -> tuple[np.ndarray, np.ndarray]:
    """The `edlc.nm_matmul` operands (values [N/L, K*n/m, L], packed positions [N/L, K/m, L])
    from nm_prune's per-output rows."""
    rows, kept = values.shape
    lanes, dtype = nm_lanes(rows), nm_index_dtype(n, m)
    if dtype is None:
        raise ValueError(f"{n}:{m}: the positions of a group do not fit in 32 bits")
    b = index_bits(m)
    fields = pos.reshape(rows, kept // n, n).astype(np.uint64) << (b * np.arange(n, dtype=np.uint64))
    words = np.bitwise_or.reduce(fields, axis=2).astype(dtype)  # [N, K/m]
    blocked = values.reshape(rows // lanes, lanes, kept).transpose(0, 2, 1)
    packed = words.reshape(rows // lanes, lanes, kept // n).transpose(0, 2, 1)
    return np.ascontiguousarray(blocked), np.ascontiguousarray(packed)


def is_nm(wt: np.ndarray, n: int, m: int) -> bool:
    rows, k = wt.shape
    return k % m == 0 and bool(np.all((wt.reshape(rows, k // m, m) != 0).sum(axis=2) <= n))


def zero_block_fraction(wt: np.ndarray, block: tuple[int, int]) -> float:
    r, c = block
    n, k = wt.shape
    if n % r or k % c:
        return 0.0
    return float(np.mean(~np.any(wt.reshape(n // r, r, k // c, c) != 0, axis=(1, 3))))


# ---- the graph edit --------------------------------------------------------------------------


def _swap(graph: Graph, lin: _Linear, op: str, values: np.ndarray, indices: np.ndarray,
          attrs: dict) -> Node:
    """Put a sparse node where the layer was; it keeps the layer's name and output name."""
    node = lin.node
    name = node.name
    inputs: list[Value | None] = [node.inputs[0], graph.constant(values, f"{name}.values"),
                                  graph.constant(indices, f"{name}.indices")]
    if lin.bias is not None:
        inputs.append(graph.constant(lin.bias, f"{name}.bias"))
    node.name = f"{name}/dense"
    new = graph.add_node(op, inputs, {"k": int(lin.w.shape[0]), **attrs}, name=name, domain="edlc",
                         before=node)
    _take_over(graph, node, new)
    return new


def _take_over(graph: Graph, old: Node, new: Node) -> None:
    out, got = old.outputs[0], new.outputs[0]
    new.meta.update(old.meta)
    graph.replace_all_uses(out, got)
    graph.remove_node(old)
    name = out.name
    out.name = graph.unique_name(f"{name}_dense")
    got.name = name


def densify(graph: Graph) -> Graph:
    """Replace every sparse matmul by the dense MatMul (+ Add) of the same weights, in place:
    the baseline sparse kernels are checked and timed against."""
    for node in [n for n in graph.nodes if n.domain == "edlc" and n.op in ("bsr_matmul", "nm_matmul")]:
        (y,) = op_def(node.op, "edlc").decompose(graph, node)
        _take_over(graph, node, y.producer)
    return graph


def _sparsify_layer(graph: Graph, lin: _Linear, spec: SparsitySpec) -> tuple[Node, float] | str:
    wt = np.ascontiguousarray(lin.w.T)  # [N, K]
    n, k = wt.shape
    if spec.kind == "nm":
        if k % spec.m:
            return f"K={k} is not a multiple of {spec.m}"
        if nm_index_dtype(spec.n, spec.m) is None:
            return f"the {spec.n} positions of a group of {spec.m} do not fit in 32 bits"
        values, indices = pack_nm(*nm_prune(wt, spec.n, spec.m), spec.n, spec.m)
        node = _swap(graph, lin, "nm_matmul", values, indices, {"n": spec.n, "m": spec.m})
        return node, 1.0 - spec.n / spec.m
    r, c = spec.block
    if n % r or k % c:
        return f"[N, K] = [{n}, {k}] is not a multiple of the {r}x{c} block"
    pruned = block_prune(wt, spec.block, spec.ratio) if spec.kind == "block" else wt
    values, indices = pack_bsr(pruned, spec.block)
    node = _swap(graph, lin, "bsr_matmul", values, indices, {})
    return node, zero_block_fraction(pruned, spec.block)


def prune_weights(graph: Graph, spec: SparsitySpec, *, layers: dict[str, SparsitySpec] | None = None,
                  exclude: tuple[str, ...] = (), min_weights: int = MIN_WEIGHTS,
                  calibration: Any = None) -> tuple[Graph, SparsityReport]:
    """Block- or N:M-prune every MatMul/Gemm by a constant matrix (per-layer specs in
    `layers`, by node name) and give it the matching sparse kernel. Returns a copy. With
    `calibration` (input dicts or an .npz path) the kept weights are refit by least squares to
    the dense layers' outputs on them (`reconstruct.refit_sparse`): no labels, no training."""
    g = graph.copy()
    report = SparsityReport(str(spec))
    for node in list(g.nodes):
        lin = linear_of(node)
        if isinstance(lin, str):
            continue
        name, size = node.name, int(lin.w.size)
        s = (layers or {}).get(name, spec)
        why = ("excluded" if name in exclude else
               f"only {size} weights" if size < min_weights else None)
        done = why or _sparsify_layer(g, lin, s)
        if isinstance(done, str):
            report.layers.append(LayerSparsity(name, node.op, "dense", 0.0, size, size, done))
            continue
        new, sparsity = done
        kept = int(new.inputs[1].const.size)
        report.layers.append(LayerSparsity(name, new.qualified_op, s.kind, sparsity, size, kept, str(s)))
    if calibration is not None and any(r.kind != "dense" for r in report.layers):
        from edlc.passes.quantize.calibrate import load_calibration
        from edlc.passes.sparsity.reconstruct import refit_sparse

        refit = refit_sparse(graph, g, load_calibration(calibration, graph))
        for r in report.layers:
            if r.name in refit:
                r.detail += "; refit on calibration data: output error {:.1%} -> {:.1%}".format(*refit[r.name])
    _sizes(graph, g, report)
    return g, report


def detect_sparsity(graph: Graph, min_fraction: float = DETECT_MIN,
                    min_weights: int = MIN_WEIGHTS) -> tuple[Graph, SparsityReport]:
    """Give MatMul/Gemm layers whose weights are already 2:4 or block sparse (at least
    `min_fraction` zero blocks of 4x4, 1x4 or 16x1) the sparse kernel, unchanged."""
    g = graph.copy()
    report = SparsityReport("detect")
    for node in list(g.nodes):
        lin = linear_of(node)
        if isinstance(lin, str) or lin.w.size < min_weights:
            continue
        wt = lin.w.T
        name, size = node.name, int(lin.w.size)
        fractions = {b: zero_block_fraction(wt, b) for b in DETECT_BLOCKS}
        best = max(fractions, key=lambda b: (fractions[b], b[0] * b[1]))
        if fractions[best] >= min_fraction:
            spec = SparsitySpec("existing", block=best)
        elif is_nm(wt, 2, 4) and np.mean(wt == 0) >= 0.5:
            spec = SparsitySpec("nm", n=2, m=4)
        else:
            continue
        done = _sparsify_layer(g, lin, spec)
        if isinstance(done, str):
            continue
        new, sparsity = done
        kind = "nm" if spec.kind == "nm" else "block"
        detail = "2:4 found" if kind == "nm" else f"{best[0]}x{best[1]} blocks found"
        report.layers.append(LayerSparsity(name, new.qualified_op, kind, sparsity, size,
                                           int(new.inputs[1].const.size), detail))
    _sizes(graph, g, report)
    return g, report


def _sizes(before: Graph, after: Graph, report: SparsityReport) -> None:
    """Weight bytes and FLOPs before and after: a sparse layer does the work of its kept
    weights (index arithmetic aside)."""
    from edlc.ir.stats import graph_stats, node_flops

    report.size_before = graph_stats(before).parameter_bytes
    report.size_after = graph_stats(after).parameter_bytes
    report.flops_before = graph_stats(before).flops
    if report.flops_before is None:
        return
    saved = 0.0
    by_name = {n.name: n for n in before.nodes}
    for r in report.layers:
        f = node_flops(by_name[r.name]) if r.name in by_name else None
        if f is None:
            return
        saved += f * (1.0 - r.params_after / max(r.params_before, 1))
    report.flops_after = int(report.flops_before - saved)


__all__ = ["block_prune", "densify", "detect_sparsity", "is_nm", "linear_of", "nm_lanes", "nm_prune",
           "pack_bsr", "pack_nm", "prune_weights", "zero_block_fraction"]
