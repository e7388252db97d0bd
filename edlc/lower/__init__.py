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

import numpy as np

from edlc.errors import EdlcError, LoweringError, UnsupportedOpError, first_line
from edlc.ir.graph import Graph, Node, Value
from edlc.ir.ops import op_def
from edlc.ir.types import TensorType

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
    import edlc.lower.layout  # noqa: F401
    import edlc.lower.normalization  # noqa: F401
    import edlc.lower.overrides  # noqa: F401
    import edlc.lower.quantized  # noqa: F401
    import edlc.lower.rules  # noqa: F401
    import edlc.lower.sparse  # noqa: F401


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

    def __init__(self, graph: Graph, parent: LowerContext | None = None):
        from tvm import relax

        self.graph = graph
        # A sub-function's context (a fused group) reads large constants through extra params
        # bound to the parent's expressions: (param var, parent expr) in order.
        self.parent = parent
        self.captured: list[tuple] = []
        self.opset = graph.opset.get("", 17)
        self.bb = relax.BlockBuilder()
        self.env: dict[int, object] = {}
        self._held: list[Value] = []  # constants in env, kept alive: env is keyed by id()
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


def lower(graph: Graph) -> LoweredModel:
    """Lower a graph to a Relax IRModule with `main(inputs..., params...)`."""
    from tvm import relax

    unsupported = unsupported_nodes(graph)
    if unsupported:
        raise UnsupportedOpError(unsupported)
    ctx = LowerContext(graph)
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
