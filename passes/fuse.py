"""Operator fusion: an anchor op (Conv, Gemm, MatMul) and its elementwise epilogues (bias,
activation, residual add) become one `edlc.fused` node, which lowers to one TVM kernel.

    before: %c = Conv(%x, %w, %b); %a = Add(%c, %skip); %y = Relu(%a)
    after:  %y = edlc.fused[kind="Conv+Add+Relu"](%x, %skip)   body: Conv, Add, Relu

The group grows one epilogue at a time with rewrite rules (an epilogue after an anchor, or
after a group); every rejected candidate says why, which is the "why not fused" report.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from edlc.ir.copy import copy_graph
from edlc.ir.graph import Graph, Node, Value
from edlc.ir.interpreter import run_graph
from edlc.ir.ops import infer_types, register_op
from edlc.ir.types import TensorType
from edlc.pass_manager import PassResult, register_pass
from edlc.rewrite import Builder, Match, Rule, apply_rules, op, var

ANCHORS = ("Conv", "ConvTranspose", "Gemm", "MatMul", "edlc.Conv", "edlc.fused")
ACTIVATIONS = ("Relu", "Clip", "Sigmoid", "HardSigmoid", "HardSwish", "LeakyRelu", "Tanh", "Elu",
               "Selu", "Softplus", "Gelu", "edlc.Gelu")
BINARY = ("Add", "Sub", "Mul", "Div")
FLOAT_TYPES = ("float32", "float16", "bfloat16", "float64")


# ---- the edlc.fused op ---------------------------------------------------------------------
def _infer(node: Node) -> list[TensorType]:
    """Re-infer the body from the node's input types (after a shape binding)."""
    body: Graph = node.attrs["body"]
    for bv, v in zip(body.inputs, node.inputs):
        bv.type = v.type
    for n in body.nodes:
        for v, t in zip(n.outputs, infer_types(n, body.opset)):
            v.type = t
    return [v.type for v in body.outputs]


def _reference(node: Node, inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
    return run_graph(node.attrs["body"], list(inputs))


def inline_body(graph: Graph, node: Node) -> list[Value]:
    """Copy a fused node's body into `graph` before it; returns the copies of its outputs."""
    body: Graph = node.attrs["body"]
    env: dict[int, Value] = {id(b): v for b, v in zip(body.inputs, node.inputs)}
    for n in body.nodes:
        ins = [None if v is None else env.get(id(v), v) for v in n.inputs]
        new = graph.add_node(n.op, ins, dict(n.attrs), num_outputs=len(n.outputs),
                             output_types=[v.type for v in n.outputs], name=n.name,
                             domain=n.domain, before=node)
        env.update({id(o): c for o, c in zip(n.outputs, new.outputs)})
    return [env.get(id(v), v) for v in body.outputs]


register_op("fused", "edlc", infer=_infer, reference=_reference, decompose=inline_body,
            doc="an anchor op and its epilogues, lowered as one kernel")


# ---- building groups -----------------------------------------------------------------------
def _is_fused(n: Node) -> bool:
    return n.domain == "edlc" and n.op == "fused"


def conv_anchor(node: Node) -> Node | None:
    """The edlc::Conv a node computes: itself, or the one in a fused group's body (the passes
    that rewrite conv groups after fusion start from it)."""
    if node.domain == "edlc" and node.op == "Conv":
        return node
    if _is_fused(node):
        return next((n for n in node.attrs["body"].nodes if n.op == "Conv" and n.domain == "edlc"),
                    None)
    return None


def _start_body(graph: Graph, anchor: Node) -> tuple[Graph, list[Value]]:
    """A body holding a copy of `anchor`; returns it and the external values it reads."""
    if _is_fused(anchor):
        return copy_graph(anchor.attrs["body"], parent=graph), list(anchor.inputs)
    body = Graph(f"{anchor.name}.body", graph.opset, parent=graph)
    external: list[Value] = []
    _copy_into(body, anchor, {}, external)
    body.outputs = [body.nodes[-1].outputs[0]]
    return body, external


def _copy_into(body: Graph, node: Node, env: dict[int, Value], external: list[Value]) -> Node:
    """Copy `node` into `body`, reading outer values through body inputs (constants are copied
    as constants: the lowering passes large ones to the kernel as parameters)."""
    ins: list[Value | None] = []
    for v in node.inputs:
        if v is None:
            ins.append(None)
        elif id(v) in env:
            ins.append(env[id(v)])
        elif v.is_constant:
            env[id(v)] = body.constant(v.const, v.name)
            ins.append(env[id(v)])
        else:
            env[id(v)] = body.add_input(v.name, v.type)
            external.append(v)
            ins.append(env[id(v)])
    return body.add_node(node.op, ins, dict(node.attrs), num_outputs=len(node.outputs),
                         output_types=[v.type for v in node.outputs], name=node.name,
                         domain=node.domain)


def _kind(n: Node) -> str:
    return n.attrs["kind"] if _is_fused(n) else n.op


def _grow(b: Builder, anchor: Node, epilogue: Node) -> Value:
    body, external = _start_body(b.graph, anchor)
    env = {id(anchor.outputs[0]): body.outputs[0]}
    env.update({id(v): bv for v, bv in zip(external, body.inputs)})
    copy = _copy_into(body, epilogue, env, external)
    body.outputs = [copy.outputs[0]]
    kind = f"{_kind(anchor)}+{epilogue.op}"
    return b.op("edlc.fused", external, {"body": body, "kind": kind},
                output_types=[epilogue.outputs[0].type], name=anchor.name)


# ---- checks: why an epilogue is not fused --------------------------------------------------
def _check_epilogue(m: Match) -> str | None:
    anchor, epi = m.node("anchor"), m.node("epilogue")
    out, res = anchor.outputs[0].type, epi.outputs[0].type
    if out is None or res is None or not out.is_static or not res.is_static:
        return "shapes are not static"
    if out.dtype not in FLOAT_TYPES:
        return f"{out.dtype} output (only float groups are fused)"
    if res.shape != out.shape or res.dtype != out.dtype:
        return f"{epi.op} '{epi.name}' changes {out} into {res}"
    if len(anchor.outputs) != 1 or len(epi.outputs) != 1:
        return "multi-output node"
    if epi.op == "Clip" and not all(v is None or v.is_constant for v in epi.inputs[1:]):
        return "Clip bounds are not constant"
    if m.get("other") is not None:
        other = m["other"]
        if other is anchor.outputs[0]:
            return f"{epi.op} reads the {_kind(anchor)} output twice"
        if other.type is None or other.type.dtype != out.dtype:
            return f"the other operand '{other.name}' has type {other.type}"
    return None


def _fuse(b: Builder, m: Match) -> Value:
    return _grow(b, m.node("anchor"), m.node("epilogue"))


def _anchor() -> object:
    return op(ANCHORS, ..., name="anchor")


def fusion_rules() -> list[Rule]:
    """Epilogue rules: activation, binary op with a constant or a tensor (bias, residual,
    scale), and SiLU written as x * sigmoid(x)."""
    a = _anchor()
    silu_in = _anchor()
    return [
        Rule("fuse-activation", op(ACTIVATIONS, a, ..., name="epilogue"),
             check=_check_epilogue, rewrite=_fuse),
        Rule("fuse-binary", op(BINARY, _anchor(), var("other"), name="epilogue"),
             check=_check_epilogue, rewrite=_fuse),
        Rule("fuse-silu", op("Mul", silu_in, op("Sigmoid", silu_in), name="epilogue"),
             check=_check_epilogue, rewrite=_fuse_silu),
    ]


def _fuse_silu(b: Builder, m: Match) -> Value:
    """Sigmoid then Mul, both into the group: grow by the Sigmoid's copy inside the body."""
    anchor, mul = m.node("anchor"), m.node("epilogue")
    sig = next(n for n in m.nodes if n.op == "Sigmoid")
    body, external = _start_body(b.graph, anchor)
    env = {id(anchor.outputs[0]): body.outputs[0]}
    env.update({id(v): bv for v, bv in zip(external, body.inputs)})
    s = _copy_into(body, sig, env, external)
    env[id(sig.outputs[0])] = s.outputs[0]
    y = _copy_into(body, mul, env, external)
    body.outputs = [y.outputs[0]]
    return b.op("edlc.fused", external, {"body": body, "kind": f"{_kind(anchor)}+SiLU"},
                output_types=[mul.outputs[0].type], name=anchor.name)


BIASED = ("Conv", "ConvTranspose", "Gemm", "edlc.Conv")  # ops whose third input is a bias


def _check_biased(m: Match) -> str | None:
    anchor = m.node("anchor")
    out = anchor.outputs[0].type
    if len(anchor.outputs) != 1 or out is None or not out.is_static:
        return "shapes are not static"
    return None if out.dtype in FLOAT_TYPES else f"{out.dtype} output (only float groups are fused)"


def _wrap(b: Builder, m: Match) -> Value:
    anchor = m.node("anchor")
    body, external = _start_body(b.graph, anchor)
    return b.op("edlc.fused", external, {"body": body, "kind": anchor.op},
                output_types=[anchor.outputs[0].type], name=anchor.name)


def bias_rule() -> Rule:
    """An anchor that adds a bias but has no epilogue becomes a group of its own: lowered, its
    bias is an add of its own, which would otherwise be a second kernel (and a second pass over
    the output) behind it. MobileNetV2's projection convs without a residual are such."""
    return Rule("fuse-bias", op(BIASED, var("x"), var("w"), var("bias"), name="anchor"),
                check=_check_biased, rewrite=_wrap)


def _check_prologue(m: Match) -> str | None:
    anchor, prologue = m.node("anchor"), m.node("prologue")
    if _kind(anchor).split("+")[0] != "Conv":
        return "only a conv reads its input through a padding copy the transpose joins"
    moved = prologue.outputs[0]
    if len(moved.users) != 1 or list(anchor.inputs).count(moved) != 1:
        return f"the transposed '{moved.name}' has other readers"
    out = moved.type
    if out is None or not out.is_static or out.dtype not in FLOAT_TYPES:
        return f"the transposed '{moved.name}' has type {out}"
    return None


def _prepend(b: Builder, m: Match) -> Value:
    """The Transpose joins the group at its front: the conv's padding copy reads the input in
    its own layout, instead of a kernel of its own writing it transposed first."""
    anchor, prologue = m.node("anchor"), m.node("prologue")
    body, external = _start_body(b.graph, anchor)
    slot = next(k for k, v in enumerate(external) if v is prologue.outputs[0])
    source = prologue.inputs[0]
    inner = body.add_input(source.name, source.type)
    moved = body.add_node("Transpose", [inner], dict(prologue.attrs), name=prologue.name,
                          output_types=[prologue.outputs[0].type], before=body.nodes[0])
    body.replace_all_uses(body.inputs[slot], moved.outputs[0])
    body.inputs = [inner] + [v for k, v in enumerate(body.inputs[:-1]) if k != slot]
    external = [source] + [v for k, v in enumerate(external) if k != slot]
    return b.op("edlc.fused", external, {"body": body, "kind": f"Transpose+{_kind(anchor)}"},
                output_types=[anchor.outputs[0].type], name=anchor.name)


def prologue_rule() -> Rule:
    """A conv group whose input is a Transpose (NCHW -> NHWC at -O3, as of the model's input)
    reads it untransposed: one kernel and one pass over the input fewer."""
    return Rule("fuse-transpose", op(("edlc.fused", "edlc.Conv"), op("Transpose", var("x"),
                                                                     name="prologue"), ...,
                                     name="anchor"),
                check=_check_prologue, rewrite=_prepend)


@register_pass("fuse", "fuse conv/gemm/matmul with bias, activation and residual epilogues",
               min_opt_level=2)
def fuse(graph: Graph) -> PassResult:
    stats = apply_rules(graph, fusion_rules())
    report = [str(r) for r in stats.rejected if r.node]
    wrapped = apply_rules(graph, [bias_rule()])  # after every epilogue has joined its anchor
    moved = apply_rules(graph, [prologue_rule()])
    return PassResult(graph, stats.modified or wrapped.modified or moved.modified, report)


__all__ = ["ANCHORS", "conv_anchor", "fuse", "fusion_rules", "inline_body"]
