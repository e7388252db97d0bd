"""Channel pruning: remove whole output channels by saliency; the result is a smaller dense
graph that every existing kernel runs faster.

    g2, report = prune_channels(graph, 0.5)                      # L1 norm, residual groups tied
    g2, report = prune_channels(graph, 0.5, layers={"conv1": 0.25}, criterion="l2")
    g2, report = prune_channels(graph, 0.5, criterion=lambda node, w: my_scores)  # one per channel

The graph is prepared first (BatchNormalization folded into the convs, so the saliency sees
the scale BN gives each channel). `channels.analyze` finds the groups of producers that must
keep one channel set; each group keeps the channels with the highest summed (per-producer
normalized) saliency; then every weight, bias, per-channel constant, depthwise conv and
Reshape the analysis listed is sliced to the kept channels and the types are re-inferred.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from edlc.errors import InputError
from edlc.ir.graph import Graph, Node
from edlc.ir.ops import infer_types
from edlc.ir.stats import graph_stats
from edlc.pass_manager import PassManager, PassResult, register_pass
from edlc.passes.sparsity.channels import ChannelPlan, Layout, Producer, analyze
from edlc.passes.sparsity.report import LayerSparsity, SparsityReport

Criterion = str | Callable[[Node, np.ndarray], np.ndarray]
CRITERIA = ("l1", "l2")
PREPARE = ["fold-constants", "simplify", "fold-batchnorm", "fold-scale-bias", "eliminate-dead-code"]


def _out_axis(p: Producer) -> int:
    if p.kind == "conv":
        return 0
    if p.kind == "gemm":
        return 0 if p.node.attrs.get("transB", 0) else 1
    return 1


def saliency(p: Producer, criterion: Criterion) -> np.ndarray:
    """One score per output channel of a producer's weight (higher: more important)."""
    w = p.node.inputs[1].const
    if callable(criterion):
        scores = np.asarray(criterion(p.node, w), np.float64).reshape(-1)
        if scores.shape != (p.channels,):
            raise InputError(f"criterion gave {scores.shape[0]} scores for '{p.node.name}', "
                             f"which has {p.channels} output channels")
        return scores
    rows = np.moveaxis(w.astype(np.float64), _out_axis(p), 0).reshape(p.channels, -1)
    if criterion == "l1":
        return np.abs(rows).sum(axis=1)
    return np.sqrt((rows**2).sum(axis=1))


def _keep_count(channels: int, ratio: float, round_to: int) -> int:
    keep = math.ceil(channels * (1.0 - ratio))
    keep = round_to * math.ceil(keep / round_to) if round_to > 1 else keep
    return max(1, min(channels, keep))


def choose(plan: ChannelPlan, ratio: float, layers: Mapping[str, float], criterion: Criterion,
           round_to: int, residual: bool) -> tuple[dict[int, np.ndarray], dict[int, str]]:
    """Kept channel indices per group root (pruned groups only), and why the others stay."""
    kept: dict[int, np.ndarray] = {}
    why: dict[int, str] = {}
    for root, members in plan.groups().items():
        if root in plan.frozen:
            why[root] = plan.frozen[root]
            continue
        if len(members) > 1 and not residual:
            why[root] = "tied to other layers by a residual add (residual=False)"
            continue
        r = next((layers[p.node.name] for p in members if p.node.name in layers), ratio)
        channels = members[0].channels
        keep = _keep_count(channels, r, round_to)
        if keep == channels:
            why[root] = "ratio keeps every channel"
            continue
        score = sum(s / max(float(s.mean()), 1e-30) for s in (saliency(p, criterion) for p in members))
        kept[root] = np.sort(np.argsort(-score, kind="stable")[:keep])
    return kept, why


def layout_indices(plan: ChannelPlan, layout: Layout, kept: Mapping[int, np.ndarray]) -> np.ndarray:
    """Positions along the layout's axis that survive pruning."""
    parts, offset = [], 0
    for s in layout.segments:
        root = plan.find(s.group) if s.group is not None else None
        idx = kept.get(root, np.arange(s.count)) if root is not None else np.arange(s.count)
        parts.append(offset + idx)
        offset += s.count
    channels = np.concatenate(parts) if parts else np.zeros(0, np.int64)
    return (channels[:, None] * layout.inner + np.arange(layout.inner)[None, :]).reshape(-1)


def apply_plan(graph: Graph, plan: ChannelPlan, kept: Mapping[int, np.ndarray]) -> None:
    """Slice every constant the plan lists, fix group attributes and Reshape targets, then
    re-infer the types."""
    slices: dict[tuple[int, int], tuple[Node, list[tuple[int, np.ndarray]]]] = {}
    for e in plan.edits:
        idx = layout_indices(plan, e.layout, kept)
        if len(idx) == e.layout.size:
            continue
        if e.what == "group-attr":
            e.node.attrs["group"] = len(idx)
        elif e.what == "reshape":
            shape = e.node.inputs[1].const.copy()
            shape[e.axis] = len(idx)
            e.node.set_input(1, graph.constant(shape, e.node.inputs[1].name))
        else:
            slices.setdefault((id(e.node), e.index), (e.node, []))[1].append((e.axis, idx))
    for (_, index), (node, cuts) in slices.items():
        old = node.inputs[index]
        arr = old.const
        for axis, idx in cuts:
            arr = np.take(arr, idx, axis=axis)
        node.set_input(index, graph.constant(np.ascontiguousarray(arr), old.name))
    for node in graph.nodes:
        for v, t in zip(node.outputs, infer_types(node, graph.opset)):
            v.type = t


def _weight_params(p: Producer) -> int:
    return int(p.node.inputs[1].const.size)


def _random_inputs(graph: Graph, seed: int = 0) -> dict[str, np.ndarray] | None:
    rng = np.random.default_rng(seed)
    out = {}
    for v in graph.inputs:
        if v.type is None or not v.type.is_static or not v.type.dtype.startswith("float"):
            return None
        out[v.name] = rng.standard_normal(v.type.shape).astype(v.type.dtype)
    return out


def output_error(dense: Graph, sparse: Graph) -> dict[str, float]:
    """Relative L2 error of each output of `sparse` against `dense` on one random input."""
    from edlc.passes.quantize.runner import Runner

    sample = _random_inputs(dense)
    if sample is None:
        return {}
    names = [v.name for v in dense.outputs]
    ref, got = Runner(dense, names)(sample), Runner(sparse, names)(sample)
    return {n: float(np.linalg.norm(ref[n] - got[n]) / max(np.linalg.norm(ref[n]), 1e-30)) for n in names}


def prune_channels(graph: Graph, ratio: float = 0.5, *, layers: Mapping[str, float] | None = None,
                   criterion: Criterion = "l1", round_to: int = 1, exclude: Sequence[str] = (),
                   residual: bool = True, measure: bool = True,
                   calibration: Any = None) -> tuple[Graph, SparsityReport]:
    """Remove `ratio` of the output channels of every prunable Conv/Gemm/MatMul (per-layer
    ratios in `layers`, by node name) and propagate the removal downstream. Returns the
    pruned graph (a copy) and a report. `round_to` keeps channel counts multiples of it
    (vector-friendly); `measure` runs dense and pruned graphs once to report the error.
    With `calibration` (input dicts or an .npz path, as for quantization), the MatMul/Gemm
    layers that lost input channels are refit to reproduce the dense model's outputs there
    (`reconstruct`: least squares, no labels, no training)."""
    if not 0.0 <= ratio < 1.0 or any(not 0.0 <= r < 1.0 for r in (layers or {}).values()):
        raise InputError("channel pruning ratios must be in [0, 1)")
    if not callable(criterion) and criterion not in CRITERIA:
        raise InputError(f"unknown saliency criterion '{criterion}'; use {', '.join(CRITERIA)} or a callable")
    dense = PassManager(PREPARE).run(graph.copy())
    pruned = dense.copy()
    plan = analyze(pruned, set(exclude))
    names = {p.node.name for p in plan.producers}
    unknown = sorted(set(layers or {}) - names) + sorted(set(exclude) - names)
    if unknown:
        raise InputError(f"no prunable layers named {unknown}; layers: {sorted(names)[:20]}")
    kept, why = choose(plan, ratio, dict(layers or {}), criterion, max(1, round_to), residual)
    before = {p.node.name: _weight_params(p) for p in plan.producers}
    apply_plan(pruned, plan, kept)
    refit: dict[str, tuple[float, float]] = {}
    if calibration is not None and kept:
        from edlc.passes.quantize.calibrate import load_calibration
        from edlc.passes.sparsity.reconstruct import reconstruct

        refit = reconstruct(dense, pruned, load_calibration(calibration, dense))
    groups = plan.groups()
    report = SparsityReport(f"channel:{ratio:g}")
    for root, members in groups.items():
        for p in members:
            after = int(p.node.inputs[1].const.size)
            n_kept = len(kept[root]) if root in kept else p.channels
            detail = f"{p.channels} -> {n_kept} out channels"
            if len(members) > 1:
                detail += f" (group of {len(members)} with '{members[0].node.name}')"
            if root not in kept:
                detail += f"; kept all: {why.get(root, '')}"
            if p.node.name in refit:
                detail += "; refit on calibration data: output error {:.1%} -> {:.1%}".format(*refit[p.node.name])
            b = before[p.node.name]
            kind = "channel" if root in kept else ("inputs" if after < b else "dense")
            report.layers.append(LayerSparsity(p.node.name, p.node.op, kind, 1 - after / b, b, after, detail))
    report.layers.sort(key=lambda r: [p.node.name for p in plan.producers].index(r.name))
    sd, sp = graph_stats(dense), graph_stats(pruned)
    report.size_before, report.size_after = sd.parameter_bytes, sp.parameter_bytes
    report.flops_before, report.flops_after = sd.flops, sp.flops
    if measure:
        report.output_error = output_error(dense, pruned)
    return pruned, report


@register_pass("prune-channels", "remove half of the output channels of every prunable conv/linear "
               "layer (L1 norm); options: edlc.passes.sparsity.prune_channels")
def prune_channels_pass(graph: Graph) -> PassResult:
    pruned, report = prune_channels(graph, 0.5, measure=False)
    changed = any(r.kind != "dense" for r in report.layers)
    return PassResult(pruned, changed, [f"{r.name}: {r.detail}" for r in report.layers])


__all__ = ["CRITERIA", "PREPARE", "apply_plan", "choose", "output_error", "prune_channels", "saliency"]
