"""A readable SSA text form, one node a line (jaxpr-like):

    graph resnet(%input: float32[1, 3, 224, 224]) -> (%logits) {
      %conv1 = Conv(%input, %conv1.weight: const float32[64, 3, 7, 7]) {kernel_shape=[7, 7], ...}
          : float32[1, 64, 112, 112]
      ...
    }
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from edlc.ir.graph import Graph, Node, Value


def _attr(a: Any) -> str:
    from edlc.ir.graph import Graph

    if isinstance(a, Graph):
        return f"<graph {a.name}>"
    if isinstance(a, np.ndarray):
        return f"tensor<{a.dtype}{list(a.shape)}>" if a.size > 8 else f"tensor<{a.dtype}>{a.tolist()}"
    if isinstance(a, float):
        return f"{a:g}"
    if isinstance(a, (list, tuple)) and len(a) > 12:
        return f"[{', '.join(map(_attr, a[:12]))}, ...]"
    if isinstance(a, (list, tuple)):
        return f"[{', '.join(map(_attr, a))}]"
    if isinstance(a, str):
        return repr(a)
    return str(a)


def _operand(v: Value | None) -> str:
    if v is None:
        return "_"
    if v.is_constant and v.const.size <= 4 and v.const.dtype != object:
        return f"%{v.name}={v.const.tolist()}"
    if v.is_constant:
        return f"%{v.name}: const {v.type}"
    return f"%{v.name}"


def format_node(n: Node, indent: str = "  ") -> str:
    outs = ", ".join(f"%{v.name}" for v in n.outputs)
    args = ", ".join(_operand(v) for v in n.inputs)
    attrs = ", ".join(f"{k}={_attr(a)}" for k, a in sorted(n.attrs.items()))
    types = ", ".join(str(v.type) for v in n.outputs)
    line = f"{indent}{outs} = {n.qualified_op}({args})"
    if attrs:
        line += f" {{{attrs}}}"
    line += f" : {types}"
    if n.name:
        line += f"  # {n.name}"
    for sub in n.subgraphs:
        line += "\n" + format_graph(sub, indent + "    ")
    return line


def format_graph(g: Graph, indent: str = "") -> str:
    ins = ", ".join(f"%{v.name}: {v.type}" for v in g.inputs)
    outs = ", ".join(f"%{v.name}" for v in g.outputs)
    lines = [f"{indent}graph {g.name}({ins}) -> ({outs}) {{"]
    lines += [format_node(n, indent + "  ") for n in g.nodes]
    lines.append(f"{indent}}}")
    return "\n".join(lines)
