"""Fold the float elementwise ops after an int8 op into the op itself (its `epilogue`), with the
QuantizeLinear that ends them, so that they run in the int8 kernel's epilogue rather than as
kernels of their own reading and writing float tensors.

    before: %c = edlc.qconv2d(%x, .., no y_scale: float output)
            %a = Add(%c, DequantizeLinear(%skip, s, z)); %r = Relu(%a); %q = QuantizeLinear(%r, ys, yz)
    after:  %q = edlc.qconv2d[epilogue](%x, .., ys, yz, %bias, %skip)
                 epilogue(%real, %skip) { %a = Add(%real, DequantizeLinear(%skip, s, z)); %r = Relu(%a) }

A residual that the block also quantizes for the next int8 layer is read through that quantized
copy (`quantized_residuals`), as onnxruntime's QDQ graphs do: the block's output then has one
reader, its QuantizeLinear, and the whole block ends in uint8 in one kernel.
"""

from __future__ import annotations

import numpy as np

from edlc.ir.graph import Graph, Node, Value
from edlc.passes.quantize.ops import EXTRA, QUANT_OPS, Y_SCALE, Y_ZP, int32_output, quantized_output

UNARY = ("Relu", "Sigmoid", "Tanh", "LeakyRelu", "HardSigmoid", "HardSwish", "Elu", "Softplus", "Erf")
BINARY = ("Add", "Sub", "Mul", "Div")
FLOAT = "float32"


def _is(node: Node | None, op: str) -> bool:
    return node is not None and not node.domain and node.op == op


def _int8_op(node: Node | None) -> bool:
    """An int8 op with a real-valued output (not the int32 accumulator of an integer op)."""
    return node is not None and node.domain == "edlc" and node.op in QUANT_OPS and not int32_output(node)


def _per_tensor_const(node: Node) -> bool:
    """A Quantize/DequantizeLinear with a constant scalar scale and zero point."""
    s = node.inputs[1]
    z = node.inputs[2] if len(node.inputs) > 2 else None
    return s.is_constant and s.const.size == 1 and (z is None or (z.is_constant and z.const.size == 1))


def _elementwise(node: Node, v: Value) -> bool:
    """Whether `node` (a reader of the float value `v`) is an elementwise op that keeps v's
    shape and type, with constant parameters where it has them."""
    out = node.outputs[0] if len(node.outputs) == 1 else None
    if out is None or out.type != v.type or v.type.dtype != FLOAT or not v.type.is_static:
        return False
    if node.domain == "edlc":
        return node.op == "Gelu"
    if node.domain:
        return False
    if node.op in UNARY or node.op == "Gelu":
        return len([x for x in node.inputs if x is not None]) == 1
    if node.op == "Clip":
        return all(x is None or x.is_constant for x in node.inputs[1:])
    if node.op in BINARY:
        other = [x for x in node.inputs if x is not v]
        return len(node.inputs) == 2 and len(other) == 1 and other[0] is not None and \
            other[0].type is not None and other[0].type.dtype == FLOAT
    return False


def _only_reader(graph: Graph, v: Value) -> Node | None:
    users = v.users
    if v in graph.outputs or len(users) != 1 or len(v.uses) != 1:
        return None
    return users[0]


def _chain(graph: Graph, node: Node) -> tuple[list[Node], Node | None]:
    """The elementwise ops that read the int8 op's float output one after the other, and the
    per-tensor QuantizeLinear that ends them, if any."""
    chain: list[Node] = []
    v = node.outputs[0]
    while True:
        u = _only_reader(graph, v)
        if u is None:
            return chain, None
        if _is(u, "QuantizeLinear") and _per_tensor_const(u):
            return chain, u
        if not _elementwise(u, v):
            return chain, None
        chain.append(u)
        v = u.outputs[0]


def _chain_source(v: Value, depth: int = 0) -> bool:
    """Whether `v` is the float output of an int8 op, or follows from one through elementwise
    ops (so that it can be computed in that op's epilogue)."""
    p = v.producer
    if p is None or depth > 32:
        return False
    if _int8_op(p):
        return not quantized_output(p)
    ins = [x for x in p.inputs if x is not None and not x.is_constant and _elementwise(p, x)]
    return any(_chain_source(x, depth + 1) for x in ins)


def quantized_residuals(graph: Graph) -> bool:
    """A float value that an int8 epilogue chain produces, that is quantized for the next int8
    layer and also added to another int8 op's output (a residual), is added through its
    quantized copy: Add(c, v) -> Add(c, DequantizeLinear(QuantizeLinear(v)))."""
    changed = False
    for q in list(graph.nodes):
        if not _is(q, "QuantizeLinear") or not _per_tensor_const(q):
            continue
        v = q.inputs[0]
        if v.type is None or v.type.dtype != FLOAT or not _chain_source(v):
            continue
        adds = [u for u in v.users if _is(u, "Add") and u is not q]
        adds = [u for u in adds if _residual_of(u, v)]
        if not adds or len(adds) + 1 != len(v.users):
            continue
        dq = graph.add_node("DequantizeLinear", [q.outputs[0], *q.inputs[1:]], name=f"{q.name}.residual",
                            output_types=[v.type], before=_first(graph, adds))
        for u in adds:
            u.set_inputs([dq.outputs[0] if x is v else x for x in u.inputs])
        changed = True
    return changed


def _residual_of(add: Node, v: Value) -> bool:
    """Whether `add` adds `v` to the float output of an int8 op (through elementwise ops)."""
    other = [x for x in add.inputs if x is not v]
    return len(other) == 1 and other[0] is not None and other[0].type == v.type and \
        _chain_source(other[0])


def _first(graph: Graph, nodes: list[Node]) -> Node:
    order = {id(n): i for i, n in enumerate(graph.nodes)}
    return min(nodes, key=lambda n: order[id(n)])


def fold_epilogues(graph: Graph) -> bool:
    """Each int8 op with a float output takes the elementwise ops after it (and the
    QuantizeLinear after them) into its epilogue."""
    changed = False
    for node in list(graph.nodes):
        if not _int8_op(node) or node.attrs.get("epilogue") is not None or quantized_output(node):
            continue
        if len(node.inputs) > EXTRA:
            continue
        chain, quant = _chain(graph, node)
        if not chain:
            continue
        _fold(graph, node, chain, quant)
        changed = True
    return changed


def _fold(graph: Graph, node: Node, chain: list[Node], quant: Node | None) -> None:
    out = node.outputs[0]
    body = Graph(f"{node.name}.epilogue", graph.opset, parent=graph)
    real = body.add_input(f"{node.name}.real", out.type)
    env: dict[int, Value] = {id(out): real}
    extras: list[Value] = []
    absorbed: list[Node] = []

    def read(x: Value | None) -> Value | None:
        if x is None:
            return None
        if id(x) in env:
            return env[id(x)]
        if x.is_constant:
            env[id(x)] = body.constant(x.const, x.name)
            return env[id(x)]
        dq = x.producer
        if _is(dq, "DequantizeLinear") and _per_tensor_const(dq):
            # an int8 residual: the kernel reads the int8 tensor and dequantizes it itself
            data = body.add_input(dq.inputs[0].name, dq.inputs[0].type)
            extras.append(dq.inputs[0])
            params = [body.constant(p.const, p.name) for p in dq.inputs[1:] if p is not None]
            copy = body.add_node("DequantizeLinear", [data, *params], dict(dq.attrs), name=dq.name,
                                 output_types=[x.type])
            env[id(x)] = copy.outputs[0]
            absorbed.append(dq)
            return env[id(x)]
        env[id(x)] = body.add_input(x.name, x.type)
        extras.append(x)
        return env[id(x)]

    for n in chain:
        ins = [read(x) for x in n.inputs]
        copy = body.add_node(n.op, ins, dict(n.attrs), name=n.name, domain=n.domain,
                             output_types=[v.type for v in n.outputs])
        env[id(n.outputs[0])] = copy.outputs[0]
    body.outputs = [env[id(chain[-1].outputs[0])]]

    ins = list(node.inputs) + [None] * (EXTRA - len(node.inputs))
    last = quant if quant is not None else chain[-1]
    result = last.outputs[0]
    if quant is not None:
        ins[Y_SCALE] = quant.inputs[1]
        ins[Y_ZP] = quant.inputs[2] if len(quant.inputs) > 2 and quant.inputs[2] is not None else \
            graph.constant(np.array(0, np.uint8), f"{quant.name}.zero_point")
    attrs = dict(node.attrs)
    attrs["epilogue"] = body
    new = graph.add_node(node.op, ins + extras, attrs, domain="edlc", name=node.name, before=last,
                         output_types=[result.type])
    result.name, new.outputs[0].name = new.outputs[0].name, result.name
    graph.replace_all_uses(result, new.outputs[0])
    for n in [*([quant] if quant is not None else []), *reversed(chain), node]:
        graph.remove_node(n)
    new.name = node.name
    for dq in absorbed:  # dequantizations now read in the kernel only
        if dq in graph.nodes and not dq.outputs[0].uses and dq.outputs[0] not in graph.outputs:
            graph.remove_node(dq)


__all__ = ["fold_epilogues", "quantized_residuals"]
