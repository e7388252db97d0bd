"""Algebraic and peephole simplifications: ops that do nothing, chains that collapse.

Every rule is an `edlc.rewrite` Rule. A rule that forwards an existing value (`x * 1 -> x`)
fires only when that value has the root's type: the same dtype, and a shape the op cannot
change. With broadcasting that means a neutral constant may not grow `x` (`x + zeros[4, 8]`
with `x: [8]` is a broadcast, not a no-op). `x + 0` (and `x - (-0.0)`) is forwarded although
it turns `-0.0` into `+0.0`, an equal number; every other forward is bit-exact.

    before: %t = Transpose<perm=[1, 0]>(%x); %u = Transpose<perm=[1, 0]>(%t)
            %c = Cast<to=DOUBLE>(%u); %d = Cast<to=FLOAT>(%c); %e = Mul(%d, 1.0); %y = Relu(%e)
    after:  %y = Relu(%x)

A value that names a graph output keeps its name: the rewriter declines to replace it by a
graph input or a constant, and this pass (silently) declines to replace it by a value from an
outer scope. Values that a nested subgraph names as its outputs are never replaced (redirecting
uses would not reach those names).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from edlc.frontend.onnx import onnx_dtype_name
from edlc.ir.graph import Graph, Node, Value
from edlc.ir.types import TensorType
from edlc.pass_manager import PassResult, register_pass
from edlc.rewrite import Builder, Match, OpPattern, Rule, apply_rules, const, op, var

RESHAPE_LIKE = ("Reshape", "Flatten", "Squeeze", "Unsqueeze")
IDEMPOTENT = ("Relu", "Abs", "Floor", "Ceil", "Round")
VARIADIC = ("Concat", "Sum", "Max", "Min", "Mean")
# Slice ends at or past these reach the end of a dimension of unknown size.
SLICE_TO_END = 2**31 - 1

_INT_RANGE = {name: (int(np.iinfo(name).min), int(np.iinfo(name).max))
              for name in ("int8", "uint8", "int16", "uint16", "int32", "uint32", "int64",
                           "uint64")}
_FLOAT_DIGITS = {"float16": 11, "bfloat16": 8, "float32": 24, "float64": 53}
_FLOAT_WIDENING = {("float16", "float32"), ("float16", "float64"), ("bfloat16", "float32"),
                   ("bfloat16", "float64"), ("float32", "float64")}
_DYNAMIC = "dynamic"  # an int-list parameter computed at run time


# ---- facts about values and nodes --------------------------------------------------------------
def cast_is_exact(src: str, dst: str) -> bool:
    """Whether every `src` value is represented exactly in `dst` (so a later cast of the result
    sees the value it would have seen without this cast)."""
    if src == dst:
        return True
    if src == "bool":
        return dst in _INT_RANGE or dst in _FLOAT_DIGITS
    if src in _INT_RANGE and dst in _INT_RANGE:
        (lo, hi), (dlo, dhi) = _INT_RANGE[src], _INT_RANGE[dst]
        return dlo <= lo and hi <= dhi
    if src in _INT_RANGE and dst in _FLOAT_DIGITS:
        lo, hi = _INT_RANGE[src]
        return max(-lo, hi) <= 2 ** _FLOAT_DIGITS[dst]
    return (src, dst) in _FLOAT_WIDENING


def _cast_target(node: Node) -> str | None:
    to = node.attrs.get("to")
    if isinstance(to, str):
        return to
    try:
        return onnx_dtype_name(int(to))
    except Exception:  # absent or an element type edlc does not know: leave the Cast alone
        return None


def _dtype(v: Value) -> str | None:
    return v.type.dtype if v.type is not None else None


def _is_static(v: Value) -> bool:
    return v.type is not None and v.type.is_static


def _const_ints(v: Value | None) -> list[int] | None:
    if v is None or not v.is_constant:
        return None
    return [int(i) for i in np.asarray(v.const).reshape(-1)]


def _int_param(node: Node, index: int, attr: str) -> list[int] | str | None:
    """An int-list parameter that newer opsets take as input `index` and older ones as
    attribute `attr`: the list, None when absent, or _DYNAMIC when computed at run time."""
    if index < len(node.inputs) and node.inputs[index] is not None:
        ints = _const_ints(node.inputs[index])
        return _DYNAMIC if ints is None else ints
    if attr in node.attrs:
        return [int(i) for i in node.attrs[attr]]
    return None


def _broadcasts_into(shape: Sequence[int], x: Value) -> bool:
    """Whether broadcasting `x` with a tensor of `shape` leaves x's shape as it is."""
    if x.type is None or x.type.shape is None or len(shape) > len(x.type.shape):
        return False
    tail = x.type.shape[len(x.type.shape) - len(shape):]
    return all(s == 1 or (isinstance(d, int) and s == d) for s, d in zip(shape, tail))


def _types_agree(a: TensorType | None, b: TensorType | None) -> bool:
    """No concrete conflict: equal dtypes, equal ranks, no two different static dims."""
    if a is None or b is None:
        return True
    if a.dtype != b.dtype:
        return False
    if a.shape is None or b.shape is None:
        return True
    return len(a.shape) == len(b.shape) and not any(
        isinstance(p, int) and isinstance(q, int) and p != q for p, q in zip(a.shape, b.shape))


class _Guard:
    """The checks every rule shares, made when the rewrite is about to happen (they need the
    graph, which a rule's check does not see)."""

    def __init__(self) -> None:
        self._pinned: dict[int, set[int]] = {}

    def allows(self, graph: Graph, root: Node, new: Sequence[Value]) -> bool:
        pinned = self._pinned.setdefault(id(graph), graph.nested_output_ids())
        for o, n in zip(root.outputs, new):
            if n is o:
                continue
            if id(o) in pinned or not _types_agree(o.type, n.type):
                return False
            outer = n.producer is not None and n.producer not in graph.nodes
            if outer and o in graph.outputs:
                return False  # a subgraph output would become an outer-scope value
        return True


# ---- checks and rewrites -----------------------------------------------------------------------
def _neutral(element: int) -> Callable[[Match], str | None]:
    """Check for `x op c` where c is all `element` and cannot broadcast x to a larger shape."""

    def check(m: Match) -> str | None:
        c, x = m["c"].const, m["x"]
        if not np.all(c == element):
            return f"the constant is not all {element}"
        if not _broadcasts_into(c.shape, x):
            return f"the constant {list(c.shape)} broadcasts {x.type} to a larger shape"
        if _dtype(x) != _dtype(m.root.outputs[0]):
            return "the result has another dtype"
        return None

    return check


def _check_dropout(m: Match) -> str | None:
    node = m.root
    if len(node.outputs) > 1 and node.outputs[1].users:
        return "its mask output is used"
    mode = node.inputs[2] if len(node.inputs) > 2 else None
    if mode is not None and not mode.is_constant:
        return "training_mode is computed at run time"
    if mode is not None and np.any(mode.const):
        return "training_mode is true"
    return None


def _rewrite_dropout(b: Builder, m: Match) -> list[Value] | None:
    node = m.root
    old_default_training = b.graph.opset.get("", 17) < 7 and not node.attrs.get("is_test", 0)
    if old_default_training or node.attrs.get("is_test", 1) == 0:
        return None  # opsets before 7: dropout trains unless is_test is set
    if any(v in b.graph.outputs for v in node.outputs[1:]):
        return None
    return [m["x"], *node.outputs[1:]]


def _check_noop_cast(m: Match) -> str | None:
    if _cast_target(m.root) != _dtype(m["x"]):
        return "it changes the dtype"
    return None


def _check_noop_cast_like(m: Match) -> str | None:
    if _dtype(m["like"]) != _dtype(m["x"]):
        return "it changes the dtype"
    return None


def _check_cast_chain(m: Match) -> str | None:
    src, mid = _dtype(m["x"]), _cast_target(m.node("inner"))
    if src is None or mid is None or _cast_target(m.root) is None:
        return "unknown dtype"
    if not cast_is_exact(src, mid):
        return f"the cast {src} -> {mid} is not exact"
    return None


def _rewrite_cast_chain(b: Builder, m: Match) -> Value:
    x, root = m["x"], m.root
    if _cast_target(root) == _dtype(x):
        return x
    return b.op("Cast", [x], dict(root.attrs), output_types=[root.outputs[0].type])


def _perm(node: Node, rank: int | None) -> list[int] | None:
    perm = node.attrs.get("perm")
    if perm is not None:
        return [int(p) for p in perm]
    return None if rank is None else list(reversed(range(rank)))


def _check_noop_transpose(m: Match) -> str | None:
    perm = _perm(m.root, m["x"].type.rank if m["x"].type else None)
    if perm is None or perm != list(range(len(perm))):
        return "it permutes the axes"
    return None


def _rewrite_transposes(b: Builder, m: Match) -> Value | None:
    x, root = m["x"], m.root
    rank = x.type.rank if x.type is not None else None
    first, second = _perm(m.node("inner"), rank), _perm(root, rank)
    if first is None or second is None:
        return None
    perm = [first[p] for p in second]
    if perm == list(range(len(perm))):
        return x
    return b.op("Transpose", [x], {"perm": perm}, output_types=[root.outputs[0].type])


def _check_noop_reshape(m: Match) -> str | None:
    x, out = m["x"], m.root.outputs[0]
    if not _is_static(x):
        return "the input shape is not static"
    if out.type != x.type:
        return f"it changes {x.type} to {out.type}"
    if any(v is not None and not v.is_constant for v in m.root.inputs[1:]):
        return "its parameters are computed at run time"
    return None


def _static_reshape(b: Builder, x: Value, out: Value) -> Value | None:
    shape = np.array(out.type.shape, dtype=np.int64)
    attrs = {}
    if 0 in shape:  # an empty tensor: 0 must mean 0, not "copy the input dim"
        if b.graph.opset.get("", 17) < 14:
            return None
        attrs["allowzero"] = 1
    return b.op("Reshape", [x, b.constant(shape, "shape")], attrs, output_types=[out.type])


def _squeeze_pair_cancels(x: Value, inner: Node, root: Node) -> bool:
    """Squeeze(Unsqueeze(x, a), a) and Unsqueeze(Squeeze(x, a), a) are x, whatever x's dims."""
    if {inner.op, root.op} != {"Squeeze", "Unsqueeze"} or x.type is None or x.type.rank is None:
        return False
    first, second = _int_param(inner, 1, "axes"), _int_param(root, 1, "axes")
    if not isinstance(first, list) or not isinstance(second, list) or len(first) != len(second):
        return False
    rank = x.type.rank + (len(first) if inner.op == "Unsqueeze" else 0)
    if not all(-rank <= a < rank for a in first + second):
        return False
    norm_first, norm_second = sorted(a % rank for a in first), sorted(a % rank for a in second)
    return norm_first == norm_second and len(set(norm_first)) == len(first)


def _rewrite_reshapes(b: Builder, m: Match) -> Value | None:
    """Two reshape-like ops in a row become one Reshape (or nothing)."""
    x, inner, root = m["x"], m.node("inner"), m.root
    out = root.outputs[0]
    if _is_static(out):
        return x if x.type == out.type else _static_reshape(b, x, out)
    if root.op == "Reshape":
        shape = _const_ints(root.inputs[1])
        if shape is not None and (0 not in shape or root.attrs.get("allowzero", 0)):
            return b.op("Reshape", [x, root.inputs[1]], dict(root.attrs), output_types=[out.type])
    if _squeeze_pair_cancels(x, inner, root):
        return x
    return None


def _check_noop_expand(m: Match) -> str | None:
    shape = _const_ints(m["shape"])
    if shape is None or not _broadcasts_into(shape, m["x"]):
        return "it broadcasts to a larger shape"
    return None


def _check_full_slice(m: Match) -> str | None:
    node, x = m.root, m["x"]
    starts, ends = _int_param(node, 1, "starts"), _int_param(node, 2, "ends")
    axes, steps = _int_param(node, 3, "axes"), _int_param(node, 4, "steps")
    if _DYNAMIC in (starts, ends, axes, steps) or starts is None or ends is None:
        return "its bounds are computed at run time"
    if x.type is None or x.type.rank is None:
        return "the input rank is unknown"
    axes = list(range(len(starts))) if axes is None else axes
    steps = [1] * len(starts) if steps is None else steps
    for s, e, a, st in zip(starts, ends, axes, steps):
        if not -x.type.rank <= a < x.type.rank or not _slice_covers(s, e, st, x.type.shape[a]):
            return f"it does not take all of axis {a}"
    return None


def _slice_covers(start: int, end: int, step: int, dim: int | str) -> bool:
    if step != 1:
        return False
    if not isinstance(dim, int):
        return start == 0 and end >= SLICE_TO_END

    def clamp(i: int) -> int:
        return min(max(i + dim if i < 0 else i, 0), dim)

    return clamp(start) == 0 and clamp(end) == dim


def _check_zero_pad(m: Match) -> str | None:
    pads = _int_param(m.root, 1, "pads")
    if not isinstance(pads, list) or any(pads):
        return "it pads"
    return None


def _check_unit_tile(m: Match) -> str | None:
    repeats = _const_ints(m["repeats"])
    if repeats is None or any(r != 1 for r in repeats):
        return "it repeats"
    return None


def _check_same_dtype(m: Match) -> str | None:
    return None if _dtype(m["x"]) == _dtype(m.root.outputs[0]) else "the result has another dtype"


def _check_same_op(m: Match) -> str | None:
    return None if m.root.op == m.node("inner").op else "different ops"


# ---- the rules ---------------------------------------------------------------------------------
def _check_gemm_weight(m: Match) -> str | None:
    return None if m["w"].const is not None and np.ndim(m["w"].const) == 2 else "B is not a 2-D constant"


def _rewrite_gemm_weight(b: Builder, m: Match) -> Value:
    """Gemm's transB=1 on a constant B is a transpose run at every inference (a classifier's
    1000x512 weights: 0.4 ms on 2 cores); transposed once here, the kernel reads B row-major."""
    gemm = m.node("gemm")
    w = b.constant(np.ascontiguousarray(np.asarray(m["w"].const).T), m["w"].name or "weight")
    return b.op("Gemm", [gemm.inputs[0], w, *gemm.inputs[2:]], {**gemm.attrs, "transB": 0},
                output_types=[gemm.outputs[0].type], name=gemm.name)


def _forward(name: str) -> Callable[[Builder, Match], Value]:
    return lambda b, m: m[name]


def simplify_rules() -> list[Rule]:
    """The rules of the `simplify` pass (fresh ones: they carry a per-run cache)."""
    guard = _Guard()

    def rule(name: str, pattern: OpPattern, rewrite: Callable, check: Callable | None = None,
             chain: bool = False) -> Rule:
        def guarded(b: Builder, m: Match) -> Value | list[Value] | None:
            out = rewrite(b, m)
            if out is None:
                return None
            new = [out] if isinstance(out, Value) else list(out)
            return out if guard.allows(b.graph, m.root, new) else None

        # a chain rule reads the inner node's input, so the inner node may keep other readers
        return Rule(name, pattern, guarded, check, allow_outside_uses=chain)

    x = var("x")
    inner_any = op(RESHAPE_LIKE, x, ..., name="inner")
    return [
        rule("remove-identity", op("Identity", x), _forward("x")),
        rule("remove-dropout", op("Dropout", x, ...), _rewrite_dropout, _check_dropout),
        rule("remove-noop-cast", op("Cast", x), _forward("x"), _check_noop_cast),
        rule("remove-noop-cast-like", op("CastLike", x, var("like")), _forward("x"),
             _check_noop_cast_like),
        rule("fold-cast-chain", op("Cast", op("Cast", x, name="inner")), _rewrite_cast_chain,
             _check_cast_chain, chain=True),
        rule("remove-noop-transpose", op("Transpose", x), _forward("x"), _check_noop_transpose),
        rule("merge-transposes", op("Transpose", op("Transpose", x, name="inner")),
             _rewrite_transposes, chain=True),
        rule("remove-noop-reshape", op(RESHAPE_LIKE, x, ...), _forward("x"), _check_noop_reshape),
        rule("merge-reshapes", op(RESHAPE_LIKE, inner_any, ...), _rewrite_reshapes, chain=True),
        rule("remove-noop-expand", op("Expand", x, const("shape")), _forward("x"),
             _check_noop_expand),
        rule("remove-single-input", op(VARIADIC, x), _forward("x"), _check_same_dtype),
        rule("remove-full-slice", op("Slice", x, ...), _forward("x"), _check_full_slice),
        rule("remove-zero-pad", op("Pad", x, ...), _forward("x"), _check_zero_pad),
        rule("remove-unit-tile", op("Tile", x, const("repeats")), _forward("x"),
             _check_unit_tile),
        rule("mul-by-one", op("Mul", x, const("c")), _forward("x"), _neutral(1)),
        rule("add-zero", op("Add", x, const("c")), _forward("x"), _neutral(0)),
        rule("sub-zero", op("Sub", x, const("c")), _forward("x"), _neutral(0)),
        rule("div-by-one", op("Div", x, const("c")), _forward("x"), _neutral(1)),
        rule("pow-one", op("Pow", x, const("c")), _forward("x"), _neutral(1)),
        rule("double-negation", op(("Neg", "Not"), op(("Neg", "Not"), x, name="inner")),
             _forward("x"), _check_same_op, chain=True),
        rule("idempotent", op(IDEMPOTENT, op(IDEMPOTENT, x, name="inner")),
             lambda b, m: m.node("inner").outputs[0], _check_same_op, chain=True),
        rule("pretranspose-gemm-weight", op("Gemm", x, const("w"), ..., name="gemm", transB=1),
             _rewrite_gemm_weight, _check_gemm_weight),
    ]


@register_pass("simplify", "remove no-op nodes and collapse chains (x*1, Identity, "
               "Transpose∘Transpose, exact Cast chains, ...)", min_opt_level=1, fixed_point=True)
def simplify(graph: Graph) -> PassResult:
    """Apply the peephole rules to a fixed point, subgraphs included. The report is empty: a
    rule that does not fire is the normal case, not news."""
    stats = apply_rules(graph, simplify_rules())
    return PassResult(graph, stats.modified, [])
