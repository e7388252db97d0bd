"""Reconstruction after channel pruning: refit the linear layers that lost input channels so
they reproduce what the dense model computed there, from calibration inputs alone.

Removing channels removes features the next layer was fit to; magnitude saliency alone can lose
a lot (a digits CNN with untrained conv filters fell from 98% to 19% at 50%). Refitting the
consumer's weight by least squares against the dense layer's output on a few inputs (He et al.
2017, "Channel Pruning for Accelerating Very Deep Neural Networks", without its LASSO step) needs
no labels and no training loop, and brings most of it back. Layers are refit in graph order, each
against the inputs the already-refit pruned graph gives it, so errors do not pile up.

Refit here: MatMul and Gemm whose weight is a 2-D constant (classifier heads, transformer
projections). Convolutions that lost input channels keep their sliced weights.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import numpy as np

from edlc.ir.graph import Graph, Node, Value
from edlc.ir.interpreter import run_graph


def _linear(node: Node) -> bool:
    w = node.inputs[1].const if len(node.inputs) > 1 and node.inputs[1] is not None else None
    return node.op in ("MatMul", "Gemm") and w is not None and np.ndim(w) == 2


def _weight(node: Node) -> np.ndarray:
    """The weight as [in, out]."""
    w = np.asarray(node.inputs[1].const, np.float64)
    return w.T if node.op == "Gemm" and node.attrs.get("transB", 0) else w


def _values(graph: Graph, wanted: list[Value], samples: list[Mapping[str, np.ndarray]]) -> list[np.ndarray]:
    """The arrays of `wanted` (values of `graph`) over all samples, each flattened to [rows, last]."""
    saved = list(graph.outputs)
    graph.outputs[:] = wanted  # the interpreter computes what the outputs need, nothing more
    try:
        runs = [run_graph(graph, s) for s in samples]
    finally:
        graph.outputs[:] = saved
    return [np.concatenate([np.asarray(r[k], np.float64).reshape(-1, np.shape(r[k])[-1]) for r in runs])
            for k in range(len(wanted))]


def reconstruct(dense: Graph, pruned: Graph, samples: Iterable[Mapping[str, np.ndarray]],
                ridge: float = 1e-4) -> dict[str, tuple[float, float]]:
    """Refit, in place in `pruned`, every MatMul/Gemm whose constant weight lost input rows;
    returns per layer (relative error of its output before, after the refit)."""
    samples = list(samples)
    by_name = {n.name: n for n in dense.nodes}
    result: dict[str, tuple[float, float]] = {}
    for node in list(pruned.nodes):
        ref = by_name.get(node.name)
        if ref is None or not _linear(node) or not _linear(ref) or node.op != ref.op:
            continue
        w_old, w_ref = _weight(node), _weight(ref)
        if w_old.shape[0] == w_ref.shape[0] or w_old.shape[1] != w_ref.shape[1]:
            continue
        (x_dense,) = _values(dense, [ref.inputs[0]], samples)
        (x,) = _values(pruned, [node.inputs[0]], samples)
        target = x_dense @ w_ref
        gram = x.T @ x
        gram[np.diag_indices_from(gram)] += ridge * max(float(np.trace(gram)) / len(gram), 1e-12)
        w_new = np.linalg.solve(gram, x.T @ target)
        norm = max(float(np.linalg.norm(target)), 1e-30)
        result[node.name] = (float(np.linalg.norm(x @ w_old - target)) / norm,
                             float(np.linalg.norm(x @ w_new - target)) / norm)
        stored = w_new.T if node.op == "Gemm" and node.attrs.get("transB", 0) else w_new
        old = node.inputs[1]
        node.set_input(1, pruned.constant(np.ascontiguousarray(stored.astype(old.const.dtype)), old.name))
    return result
