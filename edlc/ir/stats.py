"""Model statistics for `edlc inspect`: parameters, FLOPs, activation memory."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from edlc.ir.graph import Graph, Node


def _numel(shape) -> int | None:
    if shape is None or not all(isinstance(d, int) for d in shape):
        return None
    return int(np.prod(shape, dtype=np.int64))


def node_flops(node: Node) -> int | None:
    """Multiply-adds counted as 2 FLOPs for the compute-heavy ops; one per output element
    for the rest. None when shapes are not static."""
    outs = [_numel(v.type.shape) if v.type is not None else None for v in node.outputs]
    if any(o is None for o in outs):
        return None
    out = sum(outs)
    ins = [v.type.shape if v is not None and v.type is not None else None for v in node.inputs]
    if node.domain == "edlc" and node.op == "fused":  # an anchor and its epilogues
        body = [node_flops(n) for n in node.attrs["body"].nodes]
        return None if any(f is None for f in body) else sum(body)
    if node.domain == "edlc" and node.op == "Attention" and ins[0] is not None and ins[2] is not None:
        scores = out // ins[2][-1] * ins[1][-1] if isinstance(ins[1][-1], int) else None
        return None if scores is None else 2 * scores * ins[0][-1] + 3 * scores + 2 * out * ins[1][-1]
    if node.domain == "edlc" and node.op == "Conv" and ins[1] is not None:  # NHWC (layout pass)
        w = _numel(ins[1])
        cout = node.outputs[0].type.shape[-1]
        return None if w is None else 2 * out * (w // cout)
    if node.op in ("Conv", "ConvTranspose", "ConvInteger", "QLinearConv") and ins[1] is not None:
        w = ins[1]
        per_out = _numel(w[1:]) if node.op != "ConvTranspose" else _numel(w[2:]) * w[0] // max(node.attrs.get("group", 1), 1)
        return None if per_out is None else 2 * out * per_out
    if node.op in ("MatMul", "Gemm", "MatMulInteger", "QLinearMatMul") and ins[0] is not None:
        a = ins[0]
        k = a[-1] if node.op != "Gemm" or not node.attrs.get("transA", 0) else a[0]
        return 2 * out * k if isinstance(k, int) else None
    return out


@dataclass
class GraphStats:
    nodes: int
    parameters: int
    parameter_bytes: int
    flops: int | None
    activation_bytes: int | None  # sum of all intermediate tensors (an upper bound of the peak)
    peak_activation_bytes: int | None  # max over the node order of the live tensors


def graph_stats(graph: Graph) -> GraphStats:
    """Counts over the top-level nodes; weights and FLOPs inside fused groups count too."""
    consts = list({id(v): v for g in _graphs(graph) for v in g.constants()}.values())
    params = sum(v.const.size for v in consts)
    pbytes = sum(v.const.nbytes for v in consts)
    flops: int | None = 0
    for n in graph.nodes:
        f = node_flops(n)
        flops = None if f is None or flops is None else flops + f
    sizes = [v.type.nbytes for n in graph.nodes for v in n.outputs if v.type is not None]
    total = None if any(s is None for s in sizes) else sum(sizes)
    return GraphStats(len(graph.nodes), params, pbytes, flops, total, _peak_live_bytes(graph))


def _graphs(graph: Graph):
    yield graph
    for n in graph.nodes:
        for sub in n.subgraphs:
            yield from _graphs(sub)


def _peak_live_bytes(graph: Graph) -> int | None:
    """Peak bytes of live values (inputs and node outputs) in the current node order."""
    last_use: dict[int, int] = {}
    for i, n in enumerate(graph.nodes):
        for v in n.inputs:
            if v is not None and not v.is_constant:
                last_use[id(v)] = i
    keep = {id(v) for v in graph.outputs}
    live: dict[int, int] = {}
    for v in graph.inputs:
        if v.type is None or v.type.nbytes is None:
            return None
        live[id(v)] = v.type.nbytes
    peak = sum(live.values())
    for i, n in enumerate(graph.nodes):
        for v in n.outputs:
            if v.type is None or v.type.nbytes is None:
                return None
            live[id(v)] = v.type.nbytes
        peak = max(peak, sum(live.values()))
        for k in [k for k in live if last_use.get(k, -1) <= i and k not in keep]:
            del live[k]
    return peak
