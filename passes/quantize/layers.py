"""Which nodes of a float graph become int8 layers, and why the others do not.

A layer is an anchor (2-D Conv, Gemm, or MatMul by a constant [K, N] matrix) with the bias
Add and the ReLU/Clip that follow it, when nothing else reads the values in between. Its
weight is returned in the layout the int8 op takes (OIHW for conv, [K, N] for matmul).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from edlc.ir.graph import Graph, Node, Value

FLOAT = ("float32",)
# Ops that commute with a per-tensor affine quantization (they move or pick values): an int8
# value passes through them unchanged in scale and zero point.
PASSTHROUGH = ("MaxPool", "Flatten", "Reshape", "Squeeze", "Unsqueeze", "Transpose", "Identity")


@dataclass
class Layer:
    name: str  # the anchor node's name: stable across graph copies
    kind: str  # "conv" or "matmul"
    anchor: Node
    nodes: list[Node]  # anchor first, then the fused bias Add and activation
    input: Value
    output: Value  # the float value the int8 op replaces
    weight: np.ndarray  # OIHW, or [K, N]
    bias: np.ndarray | None
    clip: tuple[float | None, float | None]
    attrs: dict


def _single_user(v: Value, graph: Graph) -> Node | None:
    users = v.users
    if len(users) == 1 and v not in graph.outputs and len(v.uses) == 1:
        return users[0]
    return None


def _scalar(v: Value | None) -> float | None:
    if v is None:
        return None
    if not v.is_constant or v.const.size != 1:
        raise ValueError("not a constant scalar")
    return float(v.const.reshape(()))


def _activation(node: Node) -> tuple[float | None, float | None] | None:
    if node.op == "Relu" and not node.domain:
        return (0.0, None)
    if node.op == "Clip" and not node.domain:
        try:
            lo = _scalar(node.inputs[1] if len(node.inputs) > 1 else None)
            hi = _scalar(node.inputs[2] if len(node.inputs) > 2 else None)
        except ValueError:
            return None
        if lo is None and "min" in node.attrs:  # opset < 11
            lo, hi = node.attrs.get("min"), node.attrs.get("max")
        return (lo, hi)
    return None


def _conv(node: Node) -> tuple[np.ndarray, np.ndarray | None, dict] | str:
    w = node.inputs[1]
    b = node.inputs[2] if len(node.inputs) > 2 else None
    if not w.is_constant or w.const.ndim != 4:
        return "not a 2-D convolution by a constant weight"
    if b is not None and not b.is_constant:
        return "the bias is not a constant"
    auto = node.attrs.get("auto_pad", "NOTSET")
    if auto not in ("NOTSET", "VALID"):
        return f"auto_pad={auto} (write explicit pads)"
    attrs = {k: node.attrs[k] for k in ("strides", "pads", "dilations", "group", "kernel_shape")
             if k in node.attrs}
    return w.const, None if b is None else b.const.reshape(-1), attrs


def _gemm(node: Node) -> tuple[np.ndarray, np.ndarray | None, dict] | str:
    b = node.inputs[1]
    c = node.inputs[2] if len(node.inputs) > 2 else None
    if node.attrs.get("transA", 0) or node.attrs.get("alpha", 1.0) != 1.0:
        return "transA or alpha is set"
    if not b.is_constant or b.const.ndim != 2:
        return "B is not a constant matrix"
    w = b.const.T if node.attrs.get("transB", 0) else b.const
    bias = None
    if c is not None:
        if not c.is_constant:
            return "C is not a constant"
        try:
            bias = np.broadcast_to(c.const * node.attrs.get("beta", 1.0), (1, w.shape[1])).reshape(-1)
        except ValueError:
            return f"C of shape {list(c.const.shape)} varies along the rows"
    return np.ascontiguousarray(w), bias, {}


def _matmul(node: Node) -> tuple[np.ndarray, np.ndarray | None, dict] | str:
    b = node.inputs[1]
    if not b.is_constant or b.const.ndim != 2:
        return "not a product by a constant [K, N] matrix"
    return b.const, None, {}


def find_layers(graph: Graph) -> tuple[list[Layer], list[str]]:
    """The quantizable layers of `graph`, in order, and one line per anchor left float."""
    layers: list[Layer] = []
    rejected: list[str] = []
    for node in graph.nodes:
        if node.domain or node.op not in ("Conv", "Gemm", "MatMul"):
            continue
        x = node.inputs[0]
        if x is None or x.type is None or x.type.dtype not in FLOAT or x.type.shape is None:
            rejected.append(f"{node.op} '{node.name}': input is not a float32 tensor of known rank")
            continue
        found = {"Conv": _conv, "Gemm": _gemm, "MatMul": _matmul}[node.op](node)
        if isinstance(found, str):
            rejected.append(f"{node.op} '{node.name}': {found}")
            continue
        if node.op == "Conv" and x.type.rank != 4:
            rejected.append(f"Conv '{node.name}': not 2-D")
            continue
        weight, bias, attrs = found
        nodes, out = [node], node.outputs[0]
        nxt = _single_user(out, graph)
        if node.op == "MatMul" and bias is None and nxt is not None and nxt.op == "Add" and not nxt.domain:
            other = nxt.inputs[1] if nxt.inputs[0] is out else nxt.inputs[0]
            n = weight.shape[1]
            if other.is_constant and other.const.size == n and other.const.shape[-1:] == (n,) \
                    and other.const.ndim <= (out.type.rank or 0):
                bias, out = other.const.reshape(-1), nxt.outputs[0]
                nodes.append(nxt)
                nxt = _single_user(out, graph)
        clip: tuple[float | None, float | None] = (None, None)
        act = _activation(nxt) if nxt is not None else None
        if act is not None:
            clip, out = act, nxt.outputs[0]
            nodes.append(nxt)
        kind = "conv" if node.op == "Conv" else "matmul"
        layers.append(Layer(node.name, kind, node, nodes, x, out, weight, bias, clip, attrs))
    return layers, rejected


__all__ = ["FLOAT", "PASSTHROUGH", "Layer", "find_layers"]
