"""Run a Graph node by node in numpy: the reference for edlc ops made of other ops (a fused
group's body) and a debugging aid. Each node runs through the op registry's `evaluate`
(numpy reference, else ONNX's reference evaluator); a failure names the node."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from edlc.errors import EdlcError, first_line
from edlc.ir.graph import Graph
from edlc.ir.ops import evaluate


def run_graph(graph: Graph, inputs: Mapping[str, np.ndarray] | Sequence[np.ndarray],
              outer: Mapping[int, np.ndarray] | None = None) -> list[np.ndarray]:
    """Outputs of `graph` (in order) for inputs given by name or in the graph's input order."""
    if isinstance(inputs, Mapping):
        missing = [v.name for v in graph.inputs if v.name not in inputs]
        if missing:
            raise EdlcError(f"run_graph: missing inputs {missing}")
        arrays = [np.asarray(inputs[v.name]) for v in graph.inputs]
    else:
        arrays = [np.asarray(a) for a in inputs]
        if len(arrays) != len(graph.inputs):
            raise EdlcError(f"run_graph: {len(arrays)} inputs given, the graph takes {len(graph.inputs)}")
    env: dict[int, np.ndarray] = dict(outer or {})
    env.update({id(v): a for v, a in zip(graph.inputs, arrays)})

    def read(v):
        if v is None:
            return None
        if v.is_constant:
            return v.const
        return env[id(v)]

    for node in graph.nodes:
        try:
            outs = evaluate(node, [read(v) for v in node.inputs], graph.opset)
        except Exception as e:
            raise EdlcError(f"node '{node.name}' ({node.qualified_op}) failed in the reference "
                            f"interpreter: {first_line(e)}") from e
        for v, a in zip(node.outputs, outs):
            env[id(v)] = np.asarray(a)
    return [read(v) for v in graph.outputs]
