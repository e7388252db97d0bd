"""Structured sparsity (imported as edlc.passes.sparsity).

    from edlc.passes.sparsity import sparsify, prune_channels
    g2, report = sparsify(graph, "channel:0.5")     # or "block:4x4:0.9", "2:4", "detect"
    print(report.format())

Modules: spec (the `sparsity=` text), channels (channel spaces, residual groups, the edits
pruning implies), prune (channel pruning), weights (block and N:M pruning of MatMul/Gemm
weights, detection of weights already sparse), ops (edlc.bsr_matmul, edlc.nm_matmul; lowered
by edlc/lower/sparse.py), report.
"""

from __future__ import annotations

from edlc.ir.graph import Graph
from edlc.passes.sparsity import ops  # noqa: F401  registers edlc.bsr_matmul and edlc.nm_matmul
from edlc.passes.sparsity.prune import CRITERIA, prune_channels
from edlc.passes.sparsity.report import LayerSparsity, SparsityReport
from edlc.passes.sparsity.spec import SparsitySpec, parse_spec
from edlc.passes.sparsity.weights import densify, detect_sparsity, prune_weights


def sparsify(graph: Graph, spec: str | SparsitySpec, **options) -> tuple[Graph, SparsityReport]:
    """Apply a sparsity spec to a graph; `options` go to the method (e.g. `layers=`,
    `criterion=` for channel pruning). Returns the new graph and its report."""
    s = parse_spec(spec)
    if s.kind == "channel":
        return prune_channels(graph, s.ratio, **options)
    if s.kind == "detect":
        return detect_sparsity(graph, **options)
    return prune_weights(graph, s, **options)


__all__ = ["CRITERIA", "LayerSparsity", "SparsityReport", "SparsitySpec", "densify",
           "detect_sparsity", "parse_spec", "prune_channels", "prune_weights", "sparsify"]
