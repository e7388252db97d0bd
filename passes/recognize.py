"""Recognizers: decomposed LayerNorm, GELU and scaled-dot-product attention, as exporters
write them, become one op each, so each lowers to one kernel instead of eight.

    LayerNorm: Sub(x, ReduceMean(x)) -> Pow 2 -> ReduceMean -> Add eps -> Sqrt -> Div
               -> Mul gamma -> Add beta                      => LayerNormalization (opset 17+)
    GELU:      x * 0.5 * (1 + erf(x / sqrt 2)), and the tanh form
                                                             => Gelu (opset 20+) or edlc.Gelu
    Attention: Softmax(MatMul(q, kT) * scale + mask) @ v     => edlc.Attention
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from edlc.ir.graph import Graph, Node, Value
from edlc.ir.ops import register_op
from edlc.ir.types import TensorType, numpy_dtype
from edlc.pass_manager import PassResult, register_pass
from edlc.rewrite import Builder, Match, Rule, apply_rules, const, op, var

FLOAT_TYPES = ("float16", "bfloat16", "float32", "float64")


def _scalar(v: Value) -> float | None:
    """The value of a one-element constant, else None."""
    if not v.is_constant or v.const.size != 1 or v.const.dtype.kind not in "fiu":
        return None
    return float(v.const.reshape(()))


def _near(v: Value, want: float, rtol: float = 1e-3) -> bool:
    got = _scalar(v)
    return got is not None and math.isclose(got, want, rel_tol=rtol)


def _float_input(m: Match) -> str | None:
    t = m["x"].type
    if t is None or t.dtype not in FLOAT_TYPES or t.shape is None:
        return f"input '{m['x'].name}' is not a float tensor of known rank"
    return None


# ---- LayerNorm -------------------------------------------------------------------------------
def _reduce_axes(node: Node, rank: int) -> list[int] | None:
    if len(node.inputs) > 1 and node.inputs[1] is not None:
        if not node.inputs[1].is_constant:
            return None
        axes = node.inputs[1].const.tolist()
    else:
        axes = node.attrs.get("axes")
    if axes is None or node.attrs.get("keepdims", 1) != 1:
        return None
    return sorted(a % rank for a in axes)


def _layer_norm_patterns() -> list[tuple[str, object]]:
    out = []
    for square in ("Pow", "Mul"):
        x = var("x")
        d = op("Sub", x, op("ReduceMean", x, ..., name="mean"), name="centered")
        sq = op("Pow", d, const("two")) if square == "Pow" else op("Mul", d, d)
        var_ = op("ReduceMean", sq, ..., name="variance")
        norm = op("Div", d, op("Sqrt", op("Add", var_, const("eps"))), name="norm")
        scaled = op("Mul", norm, const("gamma"))
        out += [(f"layernorm-{square.lower()}", op("Add", scaled, const("beta"))),
                (f"layernorm-{square.lower()}-nobias", scaled)]
    return out


def _check_layer_norm(m: Match, graph: Graph) -> str | None:
    why = _float_input(m)
    if why:
        return why
    if m.get("beta") is None:
        users = m.root.outputs[0].users
        if len(users) == 1 and users[0].op == "Add" and any(v is not None and v.is_constant for v in users[0].inputs):
            return "a bias Add follows: the pattern with the bias applies there"
    if graph.opset.get("", 1) < 17:
        return f"opset {graph.opset.get('', 1)} has no LayerNormalization (needs 17)"
    rank = len(m["x"].type.shape)
    axes = _reduce_axes(m.node("mean"), rank)
    if axes is None or axes != _reduce_axes(m.node("variance"), rank):
        return "the two ReduceMeans do not reduce the same constant axes with keepdims"
    if axes != list(range(axes[0], rank)):
        return f"axes {axes} are not the trailing axes of a rank-{rank} input"
    if m.get("two") is not None and not _near(m["two"], 2.0, 1e-6):
        return "the variance exponent is not 2"
    if _scalar(m["eps"]) is None:
        return "epsilon is not a scalar constant"
    norm_shape = m["x"].type.shape[axes[0]:]
    for name in ("gamma", "beta"):
        v = m.get(name)
        if v is None:
            continue
        lead = v.const.shape[: max(0, v.const.ndim - len(norm_shape))]
        if any(d != 1 for d in lead):
            return f"{name} '{v.name}' varies along axes that are not normalized"
        try:
            np.broadcast_to(v.const.reshape(v.const.shape[len(lead):]), norm_shape)
        except ValueError:
            return f"{name} shape {v.const.shape} does not fit the normalized shape {norm_shape}"
    return None


def _rewrite_layer_norm(b: Builder, m: Match) -> Value:
    x = m["x"]
    rank = len(x.type.shape)
    axis = _reduce_axes(m.node("mean"), rank)[0]
    norm_shape = x.type.shape[axis:]
    dtype = numpy_dtype(x.type.dtype)

    def param(name: str, fill: float) -> Value:
        v = m.get(name)
        arr = np.full(norm_shape, fill, dtype) if v is None else np.broadcast_to(
            v.const.reshape(v.const.shape[max(0, v.const.ndim - len(norm_shape)):]), norm_shape)
        return b.constant(np.ascontiguousarray(arr, dtype=dtype), f"{m.root.name}.{name}")

    return b.op("LayerNormalization", [x, param("gamma", 1.0), param("beta", 0.0)],
                {"axis": axis, "epsilon": _scalar(m["eps"])}, name=f"{m.root.name}.layernorm")


# ---- GELU ------------------------------------------------------------------------------------
def _gelu_patterns() -> list[tuple[str, object]]:
    out = []
    for form in ("erf", "tanh"):
        for outer in range(3):
            x = var("x")
            if form == "erf":
                inner = op("Erf", op(("Div", "Mul"), x, const("c_scale"), name="scale"))
            else:
                cube = op("Pow", x, const("c_three"))
                poly = op("Add", x, op("Mul", cube, const("c_a")))
                inner = op("Tanh", op("Mul", poly, const("c_k")))
            plus1 = op("Add", inner, const("c_one"))
            root = [op("Mul", op("Mul", x, const("c_half")), plus1),
                    op("Mul", x, op("Mul", plus1, const("c_half"))),
                    op("Mul", op("Mul", x, plus1), const("c_half"))][outer]
            out.append((f"gelu-{form}-{outer}", root))
    return out


def _check_gelu(m: Match, graph: Graph) -> str | None:
    why = _float_input(m)
    if why:
        return why
    if not (_near(m["c_one"], 1.0) and _near(m["c_half"], 0.5)):
        return "constants are not 1 and 0.5"
    if m.get("c_scale") is not None:
        want = math.sqrt(2.0) if m.node("scale").op == "Div" else 1 / math.sqrt(2.0)
        if not _near(m["c_scale"], want):
            return f"erf argument is scaled by {_scalar(m['c_scale'])}, not 1/sqrt(2)"
    else:
        if not (_near(m["c_three"], 3.0) and _near(m["c_a"], 0.044715)
                and _near(m["c_k"], math.sqrt(2 / math.pi))):
            return "tanh-form constants are not 3, 0.044715 and sqrt(2/pi)"
    return None


def _rewrite_gelu(b: Builder, m: Match) -> Value:
    approximate = "none" if m.get("c_scale") is not None else "tanh"
    if b.graph.opset.get("", 1) >= 20:
        return b.op("Gelu", [m["x"]], {"approximate": approximate}, name=f"{m.root.name}.gelu")
    return b.op("edlc.Gelu", [m["x"]], {"approximate": approximate}, name=f"{m.root.name}.gelu")


def _gelu_reference(node: Node, inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
    x = np.asarray(inputs[0])
    xf = x.astype(np.float64)
    if node.attrs.get("approximate", "none") == "tanh":
        y = 0.5 * xf * (1 + np.tanh(math.sqrt(2 / math.pi) * (xf + 0.044715 * xf**3)))
    else:
        y = 0.5 * xf * (1 + np.vectorize(math.erf, otypes=[np.float64])(xf / math.sqrt(2)))
    return [y.astype(x.dtype)]


def _gelu_decompose(graph: Graph, node: Node) -> list[Value]:
    x = node.inputs[0]
    dt = numpy_dtype(x.type.dtype)

    def c(v: float) -> Value:
        return graph.constant(np.array(v, dt), "gelu_const")

    def add(opname: str, *ins: Value) -> Value:
        return graph.add_node(opname, list(ins), name=f"{node.name}.{opname.lower()}", before=node).outputs[0]

    if node.attrs.get("approximate", "none") == "tanh":
        poly = add("Add", x, add("Mul", add("Pow", x, c(3.0)), c(0.044715)))
        inner = add("Tanh", add("Mul", poly, c(math.sqrt(2 / math.pi))))
    else:
        inner = add("Erf", add("Div", x, c(math.sqrt(2.0))))
    return [add("Mul", add("Mul", x, c(0.5)), add("Add", inner, c(1.0)))]


def _same_type(node: Node) -> list[TensorType]:
    return [node.inputs[0].type]


register_op("Gelu", "edlc", infer=_same_type, reference=_gelu_reference, decompose=_gelu_decompose,
            doc="ONNX Gelu (opset 20) for graphs of older opsets")


# ---- scaled-dot-product attention ------------------------------------------------------------
def _attention_patterns() -> list[tuple[str, object]]:
    out = []
    for masked in (True, False):
        for scaled in ("after", "none"):
            q, k, v = var("q"), var("k"), var("v")
            s = op("MatMul", q, k, name="scores")
            if scaled == "after":
                s = op(("Div", "Mul"), s, const("scale"), name="scaling")
            if masked:
                s = op("Add", s, var("mask"), name="masking")
            p = op("Softmax", s, name="softmax")
            out.append((f"attention-{'mask' if masked else 'nomask'}-{scaled}",
                        op("MatMul", p, v)))
    return out


def _check_attention(m: Match, graph: Graph) -> str | None:
    scores = m.node("scores").outputs[0].type
    if scores is None or scores.shape is None or scores.dtype not in FLOAT_TYPES:
        return "scores are not a float tensor of known rank"
    rank = len(scores.shape)
    if rank < 2 or m.node("softmax").attrs.get("axis", -1 if graph.opset.get("", 1) >= 13 else 1) % rank != rank - 1:
        return "Softmax is not over the last axis"
    if m.get("scale") is not None and _scalar(m["scale"]) in (None, 0.0):
        return "the scale is not a non-zero scalar constant"
    if m.has_node("masking") and m.node("masking").outputs[0].type != scores:
        return "the mask broadcasts the scores to another shape or type"
    return None


def _rewrite_attention(b: Builder, m: Match) -> Value:
    scale = 1.0
    if m.get("scale") is not None:
        s = _scalar(m["scale"])
        scale = 1.0 / s if m.node("scaling").op == "Div" else s
    inputs = [m["q"], m["k"], m["v"]] + ([m["mask"]] if m.get("mask") is not None else [])
    return b.op("edlc.Attention", inputs, {"scale": float(scale)}, name=f"{m.root.name}.attention",
                output_types=[m.root.outputs[0].type])


def _attention_decompose(graph: Graph, node: Node) -> list[Value]:
    q, k, v = node.inputs[:3]
    mask = node.inputs[3] if len(node.inputs) > 3 else None
    dt = numpy_dtype(q.type.dtype)

    def add(opname: str, ins: list[Value], **attrs) -> Value:
        return graph.add_node(opname, ins, attrs, name=f"{node.name}.{opname.lower()}", before=node).outputs[0]

    s = add("Mul", [add("MatMul", [q, k]), graph.constant(np.array(node.attrs["scale"], dt), "attention_scale")])
    if mask is not None:
        s = add("Add", [s, mask])
    return [add("MatMul", [add("Softmax", [s], axis=-1), v])]


def _attention_reference(node: Node, inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
    q, k, v = (np.asarray(a) for a in inputs[:3])
    s = np.matmul(q, k) * np.asarray(node.attrs["scale"], q.dtype)
    if len(inputs) > 3 and inputs[3] is not None:
        s = s + inputs[3]
    s = np.exp(s - s.max(axis=-1, keepdims=True))
    return [np.matmul(s / s.sum(axis=-1, keepdims=True), v).astype(q.dtype)]


def _attention_type(node: Node) -> list[TensorType]:
    q, v = node.inputs[0].type, node.inputs[2].type
    if q.shape is None or v.shape is None:
        return [TensorType(None, q.dtype)]
    batch = np.broadcast_shapes(*(tuple(1 if isinstance(d, str) else d for d in t.shape[:-2]) for t in (q, v)))
    lead = q.shape[:-2] if len(q.shape) >= len(v.shape) else v.shape[:-2]
    lead = tuple(d if isinstance(d, str) else int(b) for d, b in zip(lead, batch))
    return [TensorType(lead + (q.shape[-2], v.shape[-1]), q.dtype)]


register_op("Attention", "edlc", infer=_attention_type, reference=_attention_reference,
            decompose=_attention_decompose,
            doc="softmax(q @ kT * scale + mask) @ v, with kT already transposed as exporters write it")


# ---- the pass --------------------------------------------------------------------------------
def recognizer_rules(graph: Graph) -> list[Rule]:
    def bind(check):
        return lambda m: check(m, graph)

    rules = [Rule(n, p, _rewrite_layer_norm, bind(_check_layer_norm)) for n, p in _layer_norm_patterns()]
    rules += [Rule(n, p, _rewrite_gelu, bind(_check_gelu)) for n, p in _gelu_patterns()]
    rules += [Rule(n, p, _rewrite_attention, bind(_check_attention)) for n, p in _attention_patterns()]
    return rules


@register_pass("recognize", "recognize decomposed LayerNorm, GELU and attention as single ops",
               min_opt_level=2)
def recognize(graph: Graph) -> PassResult:
    stats = apply_rules(graph, recognizer_rules(graph))
    return PassResult(graph, stats.modified, stats.report())


__all__ = ["recognize", "recognizer_rules"]
