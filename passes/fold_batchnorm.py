"""Fold per-channel affine ops into the weights and bias of the Conv/Gemm/MatMul before them.

Inference-form BatchNormalization, and Mul/Add/Sub/Div by per-channel or scalar constants, are
`y * scale + shift` with one scale and one shift per output channel. When `y` is a Conv, a Gemm
or a MatMul by a constant matrix, that affine map can be baked into the weights (scaled per
output channel) and the bias (scaled, then shifted), which removes a whole pass over the
activations at run time. The arithmetic is done in float64 and cast back to the weight dtype.

    before: %c = Conv(%x, %w, %b); %y = BatchNormalization(%c, %gamma, %beta, %mean, %var)
    after:  %y = Conv(%x, %w', %b')      w' = w * s[:, None, None, None], b' = (b - mean) * s + beta
                                          with s = gamma / sqrt(var + epsilon)

    before: %m = MatMul(%x: [B, S, K], %w: [K, N]); %y = Mul(%m, %s: [N])
    after:  %y = MatMul(%x, %w * s)

`fold-scale-bias` also merges chains of constant factors and offsets (`x * a * b` becomes
`x * (a * b)`, `x + a + b` becomes `x + (a + b)`). A constant that varies along another axis
than the channel axis (a spatial mask, say) would not fold into the weights: those are left
alone and the pass report says why.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from edlc.ir.graph import Graph, Node, Value
from edlc.ir.types import Dim
from edlc.pass_manager import PassResult, register_pass
from edlc.rewrite import Builder, Match, Pattern, Rule, apply_rules, const, op, var

FLOAT_DTYPES = frozenset({"float16", "bfloat16", "float32", "float64"})
STEP_OPS = ("Mul", "Add", "Sub", "Div")


# ---- the foldable producers ---------------------------------------------------------------


@dataclass
class _Linear:
    """A Conv, Gemm or MatMul (optionally with its bias Add) whose output channels lie on
    `axis` of an output of rank `rank`."""

    node: Node
    channels: int
    axis: int
    rank: int
    bias: Value | None = None  # Conv's B, Gemm's C, or the constant of a MatMul's bias Add
    bias_add: Node | None = None  # the Add of a `MatMul + Add(bias)` pair

    @property
    def what(self) -> str:
        return f"{self.node.op} '{self.node.name}'"


def _producer_patterns() -> dict[str, Pattern]:
    """Producer patterns by kind; the producer node is captured as "lin", its weight as "w"."""
    x, w = var("x"), const("w")
    return {
        "conv": op("Conv", x, w, ..., name="lin"),
        "gemm": op("Gemm", x, w, ..., name="lin"),
        "matmul": op("MatMul", x, w, name="lin"),
        "matmul-add": op("Add", op("MatMul", x, w, name="lin"), const("bias"), name="bias_add"),
    }


def _describe(m: Match) -> _Linear | str:
    """The matched producer, or why its weights cannot absorb a per-channel affine map."""
    node = m.node("lin")
    w = m["w"].const
    if str(w.dtype) not in FLOAT_DTYPES:
        return f"{node.op} '{node.name}' has {w.dtype} weights; only float weights are folded"
    bias = node.inputs[2] if node.op != "MatMul" and len(node.inputs) > 2 else None
    if node.op == "Conv":
        lin = _Linear(node, int(w.shape[0]), 1, w.ndim, bias)
    elif node.op == "Gemm":
        if w.ndim != 2:
            return f"Gemm '{node.name}' weight has shape {w.shape}, not a matrix"
        channels = int(w.shape[0] if node.attrs.get("transB", 0) else w.shape[1])
        lin = _Linear(node, channels, 1, 2, bias)
    else:
        out = node.outputs[0].type
        if w.ndim != 2:
            return f"MatMul '{node.name}' weight has shape {w.shape}, not a 2-D matrix"
        if out is None or out.rank is None:
            return f"the rank of MatMul '{node.name}' output is unknown"
        bias_add = m.node("bias_add") if m.has_node("bias_add") else None
        bias = m["bias"] if bias_add is not None else None
        lin = _Linear(node, int(w.shape[1]), out.rank - 1, out.rank, bias, bias_add)
    if bias is not None and not bias.is_constant:
        return f"the bias of {lin.what} is not a constant"
    if bias is not None and lin.bias_add is not None:
        vec = _per_channel(bias.const, lin)
        if isinstance(vec, str):
            return f"its bias: {vec}"
    return lin


def _per_channel(c: np.ndarray, lin: _Linear) -> np.ndarray | str:
    """`c` as one float64 value per output channel of `lin`, or why it is not one: it varies
    along another axis, or broadcasting it would change the output shape."""
    shape = tuple(int(d) for d in c.shape)
    if c.ndim > lin.rank:
        return (f"constant of shape {shape} has more axes than the {lin.what} output "
                f"(rank {lin.rank}): folding it would change the output shape")
    full = (1,) * (lin.rank - c.ndim) + shape
    other = [i for i, d in enumerate(full) if i != lin.axis and d != 1]
    if other:
        return (f"constant of shape {shape} varies along axis {other[0]} of the {lin.what} output; "
                f"only a scalar or per-channel (axis {lin.axis}) constant folds into its weights")
    if full[lin.axis] not in (1, lin.channels):
        return (f"constant of shape {shape} has {full[lin.axis]} values along the channel axis, "
                f"but {lin.what} has {lin.channels} output channels")
    return np.broadcast_to(c.astype(np.float64).reshape(-1), (lin.channels,))


# ---- folding scale and shift into the producer ----------------------------------------------


def _take_name(node: Node) -> str:
    """The folded node takes over the name of the node it replaces (which is about to go)."""
    name = node.name
    node.name = f"{name}/folded"
    return name


def _new_node(b: Builder, like: Node, op_name: str, inputs: list[Value | None],
              attrs: dict) -> Value:
    out = b.op(op_name, inputs, attrs, name=_take_name(like))
    out.producer.meta.update(like.meta)
    return out


def _fold(b: Builder, lin: _Linear, scale: np.ndarray, shift: np.ndarray,
          as_gemm: bool = False) -> Value:
    """The producer's output times `scale` plus `shift` (per channel), as one new node (or a
    MatMul and its bias Add)."""
    if lin.node.op == "Conv":
        return _fold_conv(b, lin, scale, shift)
    if lin.node.op == "Gemm":
        return _fold_gemm(b, lin, scale, shift)
    return _fold_matmul(b, lin, scale, shift, as_gemm)


def _fold_conv(b: Builder, lin: _Linear, scale: np.ndarray, shift: np.ndarray) -> Value:
    conv = lin.node
    x, w, bias = conv.inputs[0], conv.inputs[1].const, lin.bias
    new_w = w.astype(np.float64) * scale.reshape((-1,) + (1,) * (w.ndim - 1))
    inputs = [x, b.constant(new_w.astype(w.dtype), f"{conv.name}.weight")]
    if bias is not None or np.any(shift):
        old = bias.const.astype(np.float64) if bias is not None else 0.0
        inputs.append(b.constant((old * scale + shift).astype(w.dtype), f"{conv.name}.bias"))
    return _new_node(b, conv, "Conv", inputs, conv.attrs)


def _fold_gemm(b: Builder, lin: _Linear, scale: np.ndarray, shift: np.ndarray) -> Value:
    """alpha * A'B' + beta * C, scaled and shifted: alpha goes into B, beta into C."""
    gemm = lin.node
    a, w, c = gemm.inputs[0], gemm.inputs[1].const, lin.bias
    alpha, beta = float(gemm.attrs.get("alpha", 1.0)), float(gemm.attrs.get("beta", 1.0))
    cols = scale[:, None] if gemm.attrs.get("transB", 0) else scale[None, :]
    new_w = w.astype(np.float64) * alpha * cols
    new_c = shift if c is None else beta * c.const.astype(np.float64) * scale + shift
    attrs = {**gemm.attrs, "alpha": 1.0, "beta": 1.0}
    inputs = [a, b.constant(new_w.astype(w.dtype), f"{gemm.name}.weight"),
              b.constant(new_c.astype(w.dtype), f"{gemm.name}.bias")]
    return _new_node(b, gemm, "Gemm", inputs, attrs)


def _fold_matmul(b: Builder, lin: _Linear, scale: np.ndarray, shift: np.ndarray,
                 as_gemm: bool) -> Value:
    """MatMul by the scaled weight, then the bias Add (a Gemm when asked and both are 2-D)."""
    mm, name = lin.node, lin.node.name
    x, w = mm.inputs[0], mm.inputs[1].const
    new_w = b.constant((w.astype(np.float64) * scale[None, :]).astype(w.dtype), f"{name}.weight")
    old = _per_channel(lin.bias.const, lin) if lin.bias is not None else None
    new_b = shift if old is None else old * scale + shift
    b_const = b.constant(new_b.astype(w.dtype), f"{name}.bias")
    if as_gemm and lin.rank == 2 and x.type is not None and x.type.rank == 2:
        return _new_node(b, mm, "Gemm", [x, new_w, b_const], {})
    y = _new_node(b, mm, "MatMul", [x, new_w], {})
    if old is None and not np.any(new_b):
        return y
    add_name = _take_name(lin.bias_add) if lin.bias_add is not None else f"{name}/bias"
    return b.op("Add", [y, b_const], name=add_name)


# ---- BatchNormalization ---------------------------------------------------------------------


def _bn_params(bn: Node) -> list[Value | None]:
    return list(bn.inputs[1:5]) + [None] * (5 - len(bn.inputs))


def _check_bn(m: Match) -> str | None:
    bn = m.node("bn")
    if bn.attrs.get("training_mode", 0):
        return "training_mode=1: it normalizes with batch statistics, not constants"
    if bn.attrs.get("spatial", 1) != 1:
        return "spatial=0: its statistics are per element, not per channel"
    if len(bn.outputs) > 1:
        return f"it has {len(bn.outputs)} outputs (the training form with running statistics)"
    if not all(p is not None and p.is_constant for p in _bn_params(bn)):
        return "its scale, bias, mean or variance is not a constant"
    lin = _describe(m)
    if isinstance(lin, str):
        return lin
    if lin.axis != 1:
        return (f"it normalizes axis 1 of the {lin.what} output (rank {lin.rank}), but the "
                f"weight's output features are on the last axis; only a 2-D [N, C] MatMul folds")
    sizes = {p.const.size for p in _bn_params(bn)}
    if sizes != {lin.channels}:
        return f"its parameters have {sorted(sizes)} values for {lin.channels} channels"
    return None


def _rewrite_bn(b: Builder, m: Match) -> Value:
    bn = m.node("bn")
    gamma, beta, mean, var_ = (p.const.astype(np.float64).reshape(-1) for p in _bn_params(bn))
    scale = gamma / np.sqrt(var_ + float(bn.attrs.get("epsilon", 1e-5)))
    lin = _describe(m)
    return _fold(b, lin, scale, beta - mean * scale, as_gemm=True)


def _bn_rules() -> list[Rule]:
    rules = []
    for kind, producer in _producer_patterns().items():
        params = [var() for _ in range(4)]
        pattern = op("BatchNormalization", producer, *params, name="bn")
        rules.append(Rule(f"fold-bn-into-{kind}", pattern, _rewrite_bn, _check_bn))
    return rules


# ---- Mul/Add/Sub/Div by a per-channel constant ------------------------------------------------


def _constant_first(m: Match) -> bool:
    """Sub(c, y) rather than Sub(y, c)."""
    return m.root.inputs[0] is m["c"]


def _check_step(m: Match) -> str | None:
    lin = _describe(m)
    if isinstance(lin, str):
        return lin
    c, out = m["c"], m.root.outputs[0].type
    if out is not None and str(c.const.dtype) != out.dtype:
        return f"constant '{c.name}' is {c.const.dtype}, the output is {out.dtype}"
    vec = _per_channel(c.const, lin)
    if isinstance(vec, str):
        return vec
    if m.root.op == "Div" and not np.all(vec):
        return f"constant '{c.name}' has zeros: dividing by it is not a finite scale"
    return None


def _rewrite_step(b: Builder, m: Match) -> Value:
    lin = _describe(m)
    vec = _per_channel(m["c"].const, lin)
    one, zero = np.ones_like(vec), np.zeros_like(vec)
    kind = m.root.op
    if kind == "Mul":
        scale, shift = vec, zero
    elif kind == "Div":
        scale, shift = 1.0 / vec, zero
    elif kind == "Add":
        scale, shift = one, vec
    else:  # Sub
        scale, shift = (-one, vec) if _constant_first(m) else (one, -vec)
    return _fold(b, lin, scale, shift)


def _step_rules() -> list[Rule]:
    rules = []
    for kind, producer in _producer_patterns().items():
        # MatMul + Add(bias) is the canonical form of a biased MatMul: leave it to "matmul-add".
        ops = tuple(o for o in STEP_OPS if not (kind == "matmul" and o == "Add"))
        rules.append(Rule(f"fold-{kind}-scale-bias",
                          op(ops, producer, const("c"), name="step"), _rewrite_step, _check_step))
        rules.append(Rule(f"fold-{kind}-negate-bias",
                          op("Sub", const("c"), producer, name="step"), _rewrite_step, _check_step))
    return rules


# ---- chains of constant factors and offsets --------------------------------------------------


def _broadcast(a: tuple[Dim, ...], b: tuple[int, ...]) -> tuple[Dim, ...] | None:
    """Numpy broadcasting of a (possibly symbolic) shape with a static one; None if unsure."""
    n = max(len(a), len(b))
    a2, b2 = (1,) * (n - len(a)) + tuple(a), (1,) * (n - len(b)) + tuple(b)
    out: list[Dim] = []
    for da, db in zip(a2, b2):
        if db == 1 or da == db:
            out.append(da)
        elif da == 1:
            out.append(db)
        else:
            return None
    return tuple(out)


def _check_chain(m: Match) -> str | None:
    a, c = m["a"].const, m["c"].const
    if a.dtype != c.dtype:
        return f"the constants differ in dtype ({a.dtype}, {c.dtype})"
    merged = np.broadcast_shapes(a.shape, c.shape)
    if math.prod(merged) > max(a.size, c.size):
        return (f"merging constants of shapes {a.shape} and {c.shape} would make a larger "
                f"constant of shape {merged}")
    x, out = m["x"].type, m.root.outputs[0].type
    if x is None or x.shape is None or out is None or out.shape is None:
        return "the shapes involved are unknown"
    if _broadcast(x.shape, merged) != out.shape or x.dtype != out.dtype:
        return f"the merged constant of shape {merged} would change the output {out}"
    return None


def _merge(a: np.ndarray, c: np.ndarray, kind: str) -> np.ndarray:
    if str(a.dtype) in FLOAT_DTYPES:
        a64, c64 = a.astype(np.float64), c.astype(np.float64)
        return (a64 * c64 if kind == "Mul" else a64 + c64).astype(a.dtype)
    return a * c if kind == "Mul" else a + c


def _chain_rule(kind: str) -> Rule:
    def rewrite(b: Builder, m: Match) -> Value:
        array = _merge(m["a"].const, m["c"].const, kind)
        merged = b.constant(array, f"{m.root.name}.{kind.lower()}")
        return b.op(kind, [m["x"], merged], name=_take_name(m.root))

    pattern = op(kind, op(kind, var("x"), const("a"), name="inner"), const("c"))
    return Rule(f"merge-{kind.lower()}-constants", pattern, rewrite, _check_chain)


# ---- the passes ----------------------------------------------------------------------------


@register_pass("fold-batchnorm",
               "fold inference BatchNormalization into the Conv/Gemm/MatMul weights before it",
               min_opt_level=2)
def fold_batchnorm(graph: Graph) -> PassResult:
    """A standalone BatchNormalization (after no foldable producer) stays: TVM lowers it."""
    stats = apply_rules(graph, _bn_rules())
    return PassResult(graph, stats.modified, stats.report())


@register_pass("fold-scale-bias",
               "fold Mul/Add/Sub/Div by per-channel constants into Conv/Gemm/MatMul weights; "
               "merge constant chains", min_opt_level=2, fixed_point=True)
def fold_scale_bias(graph: Graph) -> PassResult:
    stats = apply_rules(graph, _step_rules() + [_chain_rule("Mul"), _chain_rule("Add")])
    return PassResult(graph, stats.modified, stats.report())


__all__ = ["fold_batchnorm", "fold_scale_bias"]
