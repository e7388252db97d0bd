"""Graph -> TVM IRModule (Relax `main` calling TIR kernels). edlc crosses into TVM here.

Each op has one lowering rule `rule(ctx, node, inputs) -> relax.Expr | list[relax.Expr]`,
registered with `@register_lowering("Op")`. ONNX ops without a rule of edlc's own use TVM's
maintained per-node ONNX converters (`edlc.lower.tvm_onnx`), fed from edlc's IR.

Weights (large constants) become parameters of `main` after the model inputs, so the artifact
keeps them in a params file; small constants stay inline where converters need their values.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from edlc.errors import EdlcError, LoweringError, UnsupportedOpError, first_line
from edlc.ir.graph import Graph, Node, Value
from edlc.ir.ops import op_def
from edlc.ir.types import TensorType

if TYPE_CHECKING:
    from edlc.target import Target

# Constants at most this many elements stay inline (shape-like values, scalars, small tables).
INLINE_CONST_MAX = 64

# Element types TVM 0.27 builds and runs (no sub-byte, float8 or string tensors).
LOWERABLE_DTYPES = frozenset({"bool", "int8", "uint8", "int16", "uint16", "int32", "uint32", "int64",
                              "float16", "bfloat16", "float32", "float64"})

LoweringRule = Callable[["LowerContext", Node, list], object]


def register_lowering(op: str, domain: str = "") -> Callable[[LoweringRule], LoweringRule]:
    """Attach a lowering rule to an op in the op registry (overrides TVM's converter)."""

    def deco(fn: LoweringRule) -> LoweringRule:
        op_def(op, domain, create=True).lower = fn
        return fn

    return deco


def lowering_rule(node: Node) -> LoweringRule | None:
    _ensure_rules()
    d = op_def(node.op, node.domain)
    if d is not None and d.lower is not None:
        return d.lower
    if node.domain in ("", "ai.onnx"):
        from edlc.lower.tvm_onnx import tvm_converter_rule

        return tvm_converter_rule(node.op)
    return None


def unsupported_nodes(graph: Graph) -> list[tuple[str, str, str]]:
    """(node name, op, domain) of every node, subgraphs included, that has no lowering rule."""
    return [(n.name, n.op, n.domain) for n in graph.all_nodes() if lowering_rule(n) is None]


def _ensure_rules() -> None:
    # importing registers edlc's own rules
    import edlc.lower.attention  # noqa: F401
    import edlc.lower.fused  # noqa: F401
    import edlc.lower.int8_attention  # noqa: F401
    import edlc.lower.int8_norm  # noqa: F401
    import edlc.lower.layout  # noqa: F401
    import edlc.lower.normalization  # noqa: F401
    import edlc.lower.overrides  # noqa: F401
    import edlc.lower.quantized  # noqa: F401
    import edlc.lower.rules  # noqa: F401
    import edlc.lower.sparse  # noqa: F401
    import edlc.lower.winograd  # noqa: F401


@dataclass
class LoweredModel:
    """A Relax module plus what it takes to call `main`: inputs first, then params."""

    mod: object  # tvm.IRModule
    inputs: list[tuple[str, TensorType]]
    outputs: list[tuple[str, TensorType]]
    params: dict[str, np.ndarray] = field(default_factory=dict)


def _relax_name(name: str) -> str:
    s = re.sub(r"[^0-9A-Za-z_]", "_", name)
    return s if s and (s[0].isalpha() or s[0] == "_") else f"v_{s}"


class LowerContext:
    """State of one lowering: the BlockBuilder, the value -> Relax expression map, params."""

    def __init__(self, graph: Graph, parent: LowerContext | None = None,
                 target: Target | None = None):
        from tvm import relax

        self.graph = graph
        # the target being built for, where a rule's form depends on it (int8: edlc.lower.quantized)
        self.target = parent.target if parent is not None else target
        # A sub-function's context (a fused group) reads large constants through extra params
        # bound to the parent's expressions: (param var, parent expr) in order.
        self.parent = parent
        self.captured: list[tuple] = []
        self.opset = graph.opset.get("", 17)
        self.bb = relax.BlockBuilder()
        self.env: dict[int, object] = {}
        self._held: list[Value] = []  # constants in env, kept alive: env is keyed by id()
        # values computed at compile time (see _known_outputs), keyed by id() like env
        self.known: dict[int, np.ndarray] = {}
        self.sym_dims: dict[str, object] = {}
        self.param_vars: list = []
        self.params: dict[str, np.ndarray] = {}
        # TVM converters read weights through this: var name -> (var, tvm tensor)
        self.tvm_params: dict[str, tuple] = {}
        self._names: set[str] = set()

    def fresh(self, name: str) -> str:
        base = _relax_name(name)
        out, i = base, 1
        while out in self._names:
            out, i = f"{base}_{i}", i + 1
        self._names.add(out)
        return out

    def relax_type(self, t: TensorType):
        from tvm import relax, tirx

        if t.dtype not in LOWERABLE_DTYPES:
            raise LoweringError(f"tensors of type {t.dtype} cannot be lowered to TVM yet")
        if t.shape is None:
            return relax.TensorType(ndim=-1, dtype=t.dtype)
        dims = []
        for d in t.shape:
            if isinstance(d, str):
                if d not in self.sym_dims:
                    self.sym_dims[d] = tirx.Var(_relax_name(d), "int64")
                dims.append(self.sym_dims[d])
            else:
                dims.append(d)
        return relax.TensorType(dims, t.dtype)

    def new_input(self, v: Value):
        from tvm import relax

        var = relax.Var(self.fresh(v.name), self.relax_type(v.type))
        self.env[id(v)] = var
        return var

    def expr(self, v: Value | None):
        """The Relax expression of a value (constants are materialized on first use)."""
        if v is None:
            return None
        if id(v) not in self.env:
            if not v.is_constant:
                raise LoweringError(f"value '{v.name}' is read before it is defined")
            self.env[id(v)] = self._constant(v)
            self._held.append(v)  # a temporary Value's id could otherwise be reused
        return self.env[id(v)]

    def _constant(self, v: Value):
        import tvm
        from tvm import relax

        arr = v.const
        if v.type.dtype not in LOWERABLE_DTYPES:
            raise LoweringError(f"constant '{v.name}' is of type {v.type.dtype}, which cannot be lowered to TVM yet")
        if arr.size <= INLINE_CONST_MAX:
            return relax.const(tvm.runtime.tensor(np.require(arr, requirements="C")))
        var = relax.Var(self.fresh(v.name), self.relax_type(v.type))
        if self.parent is not None:
            self.captured.append((var, self.parent.expr(v)))
            return var
        self.param_vars.append(var)
        self.params[var.name] = arr
        self.tvm_params[var.name] = (var, tvm.runtime.tensor(np.require(arr, requirements="C")))
        return var

    def bind(self, v: Value, e) -> None:
        self.env[id(v)] = e

    def emit(self, e):
        return self.bb.emit(e)


def _lower_node(ctx: LowerContext, node: Node) -> None:
    from tvm import relax

    rule = lowering_rule(node)
    if rule is None:
        raise UnsupportedOpError([(node.name, node.op, node.domain)])
    known = _known_outputs(ctx, node)
    if known is not None:
        for v, arr in zip(node.outputs, known):
            if arr is not None:
                ctx.known[id(v)] = arr
                ctx.bind(v, ctx.expr(Value(v.name, v.type, arr)))
        return
    inputs = [ctx.expr(v) for v in node.inputs]
    try:
        result = rule(ctx, node, inputs)
    except EdlcError:
        raise
    except Exception as e:  # a converter rejected this node
        raise LoweringError(f"node '{node.name}' ({node.qualified_op}): cannot lower: {first_line(e, 300)}") from e
    if isinstance(result, relax.Expr) and not isinstance(result, relax.Tuple) and isinstance(result.ty, relax.TupleType):
        result = [ctx.emit(relax.TupleGetItem(result, i)) for i in range(len(result.ty.fields))]
    elif isinstance(result, relax.Tuple):
        result = list(result.fields)
    results = result if isinstance(result, list) else [result]
    if len(results) < len([v for v in node.outputs if v.name]):
        raise LoweringError(f"node '{node.name}' ({node.op}): lowering gave {len(results)} outputs, "
                            f"the graph expects {len(node.outputs)}")
    for v, e in zip(node.outputs, results):
        if v.type is not None and v.type.dtype not in LOWERABLE_DTYPES:
            raise LoweringError(f"node '{node.name}' ({node.op}): output '{v.name}' is of type "
                                f"{v.type.dtype}, which edlc cannot lower to TVM yet")
        ctx.bind(v, _conform(ctx, node, v, e))


def _is_empty(t: TensorType | None) -> bool:
    """A static shape with no elements: its value is known without running anything."""
    return t is not None and t.is_static and 0 in t.shape and t.dtype in LOWERABLE_DTYPES


def _known_outputs(ctx: LowerContext, node: Node) -> list[np.ndarray | None] | None:
    """The outputs of a node computed at compile time, without a kernel, where empty tensors
    make that possible; None to lower the node as usual.

    TVM's kernels are not written for empty tensors (the CumSum scan writes its first element
    whatever the axis length, into a buffer of zero bytes), so no kernel runs on one:
    - a node whose outputs are all empty gets empty constants (nothing to compute);
    - a node whose inputs are all known (constants, empty tensors: they have no data, or
      values computed so) is evaluated with the numpy/ONNX reference, e.g. a reduction over an
      empty axis or a MatMul with an inner dim of 0, and what follows from it. Where the
      reference fails the node is lowered as usual.
    Empty constants never reach the built code as constants (see
    `edlc.lower.pipeline.materialize_empty_constants`)."""
    from edlc.ir.ops import evaluate
    from edlc.ir.types import numpy_dtype

    if ctx.parent is not None:  # inside a fused group: the group as a whole was considered
        return None
    outputs = [v for v in node.outputs if v is not None and v.name]
    if not outputs or any(v.type is None or v.type.dtype not in LOWERABLE_DTYPES for v in outputs):
        return None
    if all(_is_empty(v.type) for v in outputs):
        return [np.zeros(v.type.shape, numpy_dtype(v.type.dtype)) if v is not None and v.name else None
                for v in node.outputs]
    present = [v for v in node.inputs if v is not None]
    if node.subgraphs or not any(id(v) in ctx.known or _is_empty(v.type) for v in present if not v.is_constant) \
            or not all(v.is_constant or id(v) in ctx.known or _is_empty(v.type) for v in present) \
            or not all(v.type.is_static for v in outputs):
        return None
    args = [None if v is None else v.const if v.is_constant else ctx.known[id(v)] if id(v) in ctx.known
            else np.zeros(v.type.shape, numpy_dtype(v.type.dtype)) for v in node.inputs]
    try:
        results = evaluate(node, args, ctx.graph.opset)
    except Exception:  # noqa: BLE001  no reference, or it rejects empty inputs: lower as usual
        return None
    known: list[np.ndarray | None] = []
    for v, a in zip(node.outputs, list(results) + [None] * len(node.outputs)):
        if v is None or not v.name:
            known.append(None)
            continue
        if a is None or tuple(np.shape(a)) != v.type.shape:
            return None
        known.append(np.require(np.asarray(a).astype(numpy_dtype(v.type.dtype), copy=False), requirements="C"))
    return known


def _conform(ctx: LowerContext, node: Node, v: Value, e):
    """Check a lowered value against the IR type: cast a differing dtype (ONNX decides the
    dtype), match a symbolic result shape to a static expected one, reject a static mismatch."""
    import tvm
    from tvm import relax

    e = ctx.bb.normalize(e)
    if not isinstance(e, (relax.Var, tvm.ir.expr.Constant)):
        # bind it here: a value first read inside an If branch must not be scoped to it
        e = ctx.emit(e)
    t = v.type
    ty = e.ty
    if t is None or not isinstance(ty, relax.TensorType):
        return e
    if ty.dtype != t.dtype and ty.dtype and t.dtype != "string":
        e = ctx.emit(relax.op.astype(e, t.dtype))
    if t.is_static:
        got = e.ty.shape
        dims = None if got is None else getattr(got, "values", None)
        if dims is not None:
            try:
                static = [int(d) for d in dims]
            except (TypeError, ValueError):
                static = None
            if static is not None and tuple(static) != t.shape:
                raise LoweringError(
                    f"node '{node.name}' ({node.op}): lowering produced shape {tuple(static)} for "
                    f"'{v.name}', ONNX semantics give {t.shape}"
                )
            if static is None:
                e = ctx.bb.match_cast(e, relax.TensorType(list(t.shape), t.dtype))
        elif e.ty.ndim == -1:
            e = ctx.bb.match_cast(e, relax.TensorType(list(t.shape), t.dtype))
    return e


def lower(graph: Graph, target: Target | None = None, *, accumulate: str = "float32") -> LoweredModel:
    """Lower a graph to a Relax IRModule with `main(inputs..., params...)`. With a `target`,
    rules may pick a form its instructions suit (the int8 kernels' operand packing on aarch64
    with dotprod); without one the lowering is target-neutral. `accumulate` is the type
    half-precision convs and matmuls sum in (edlc.lower.precision)."""
    from tvm import relax

    unsupported = unsupported_nodes(graph)
    if unsupported:
        raise UnsupportedOpError(unsupported)
    ctx = LowerContext(graph, target=target)
    input_vars = [ctx.new_input(v) for v in graph.inputs]
    has_control_flow = any(n.subgraphs and n.domain != "edlc" for n in graph.nodes)
    # Params are only known after the body is built: build it, then make the function.
    with ctx.bb.function("main"):
        if has_control_flow:
            for n in graph.nodes:
                _lower_node(ctx, n)
            outs = [ctx.expr(v) for v in graph.outputs]
            out = outs[0] if len(outs) == 1 else relax.Tuple(outs)
        else:
            with ctx.bb.dataflow():
                for n in graph.nodes:
                    _lower_node(ctx, n)
                outs = [ctx.expr(v) for v in graph.outputs]
                out = ctx.bb.emit_output(outs[0] if len(outs) == 1 else relax.Tuple(outs))
        ctx.bb.emit_func_output(out, params=input_vars + ctx.param_vars)
    mod = ctx.bb.get()
    mod["main"] = mod["main"].with_attr("num_input", len(input_vars))
    from edlc.lower.precision import compute_in_float32, has_half

    if has_half(graph):  # float16/bfloat16: sums and reductions in float32
        mod = compute_in_float32(mod, accumulate)
    return LoweredModel(
        mod,
        [(v.name, v.type) for v in graph.inputs],
        [(v.name, v.type) for v in graph.outputs],
        ctx.params,
    )


def count_kernels(mod) -> int:
    """Number of TIR kernels (PrimFuncs) in a lowered-and-built IRModule."""
    from tvm import tirx

    return sum(isinstance(f, tirx.PrimFunc) for f in mod.functions.values())


__all__: Sequence[str] = [
    "LowerContext", "LoweredModel", "count_kernels", "lower", "register_lowering", "unsupported_nodes",
]
