"""Lowering rules for ONNX control flow: If, Loop and Scan.

`If` becomes a `relax.If` whose branches are SeqExprs built in their own block scope, so only
the taken branch runs; a condition known at compile time inlines the taken branch instead.
`Loop` (constant trip count) and `Scan` (static scan length) are unrolled: before each
iteration the body's graph inputs are bound to that iteration's expressions and the body's
nodes are lowered again, which works because `ctx.env` is keyed by the body's Values.

A Loop whose condition is only known at run time is unrolled up to its trip count with the
condition as a mask: once it is false, loop-carried values keep their last values and the scan
outputs are cut to the number of iterations that ran.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import tvm
from tvm import relax, tirx

from edlc.errors import LoweringError
from edlc.ir.graph import Graph, Node, Value
from edlc.lower import LowerContext, _lower_node, register_lowering

# Unrolling beyond this many iterations would make huge programs: refuse instead.
MAX_UNROLL = 4096


# ---- helpers -----------------------------------------------------------------------------------
def _lower_body(ctx: LowerContext, body: Graph, args: Sequence[relax.Expr]) -> list[relax.Expr]:
    """Lower one instance of a subgraph with its inputs bound to `args`; its outputs' exprs."""
    if len(args) != len(body.inputs):
        raise LoweringError(f"subgraph '{body.name}' takes {len(body.inputs)} inputs, "
                            f"got {len(args)}")
    for v, e in zip(body.inputs, args):
        ctx.bind(v, e)
    for n in body.nodes:
        _lower_node(ctx, n)
    return [ctx.expr(v) for v in body.outputs]


def _static_value(ctx: LowerContext, e: relax.Expr) -> np.ndarray | None:
    """The array of an expression known at compile time (a constant, or a var bound to one)."""
    if isinstance(e, relax.Var):
        bound = ctx.bb.lookup_binding(e)
        e = bound if bound is not None else e
    if isinstance(e, tvm.ir.GenericConst):
        return e.value.numpy()
    return None


def _static_bool(ctx: LowerContext, e: relax.Expr) -> bool | None:
    arr = _static_value(ctx, e)
    if arr is None or arr.size != 1:
        return None
    return bool(arr.reshape(-1)[0])


def _dims(e: relax.Expr) -> list:
    """Static dims as ints, symbolic ones as PrimExprs (the rank must be known)."""
    shape = e.ty.shape if isinstance(e.ty, relax.TensorType) else None
    if shape is None or not hasattr(shape, "values"):
        raise LoweringError("control flow needs tensors of known shape")
    return [int(d) if isinstance(d, tirx.IntImm) else d for d in shape.values]


def _scalar(ctx: LowerContext, e: relax.Expr) -> relax.Expr:
    """A one-element tensor as a rank-0 one (relax.If and masks want scalars)."""
    return ctx.emit(relax.op.reshape(e, [])) if _dims(e) else e


def _unstack(ctx: LowerContext, x: relax.Expr, axis: int, n: int) -> list[relax.Expr]:
    """The n slices of x along `axis`, that axis removed."""
    return [
        ctx.emit(relax.op.squeeze(relax.op.strided_slice(x, [axis], [t], [t + 1]), axis=[axis]))
        for t in range(n)
    ]


def _empty_stack(v: Value, what: str) -> relax.Expr:
    """A stack of zero items, shaped from the body output's static type."""
    t = v.type
    if t is None or not t.is_static:
        raise LoweringError(f"{what} runs zero iterations and its element shape is unknown")
    return relax.const(np.zeros((0, *t.shape), dtype=t.dtype), t.dtype)


def _stack(ctx: LowerContext, vals: list[relax.Expr], axis: int = 0) -> relax.Expr:
    return ctx.emit(relax.op.stack(vals, axis=axis))


# ---- If ----------------------------------------------------------------------------------------
def _is_leaf(e: relax.Expr) -> bool:
    return isinstance(e, (relax.Var, tvm.ir.GenericConst))


def _bind_outer_values(ctx: LowerContext, g: Graph) -> None:
    """Emit the outer values a branch reads that are still unbound expressions (rules may
    return calls that are emitted on first use): emitted first inside the branch, they would
    be computed there and be out of scope everywhere else."""
    for v in g.free_values():
        e = ctx.env.get(id(v))
        if e is not None and not _is_leaf(e):
            ctx.bind(v, ctx.emit(e))


def _branch(ctx: LowerContext, g: Graph) -> relax.SeqExpr:
    """A branch as a SeqExpr of its own block, so it runs only when taken."""
    _bind_outer_values(ctx, g)
    ctx.bb.begin_scope()
    ctx.bb._begin_binding_block()
    try:
        outs = [e if _is_leaf(e) else ctx.emit(e) for e in _lower_body(ctx, g, [])]
    finally:
        block = ctx.bb._end_block()
        ctx.bb.end_scope()
    body = outs[0] if len(outs) == 1 else relax.Tuple(outs)
    return relax.SeqExpr([block], body)


@register_lowering("If")
def lower_if(ctx: LowerContext, node: Node, inputs: list) -> relax.Expr | list[relax.Expr]:
    then_g, else_g = node.attrs["then_branch"], node.attrs["else_branch"]
    taken = _static_bool(ctx, inputs[0])
    if taken is not None:  # known at compile time: inline the taken branch
        return _lower_body(ctx, then_g if taken else else_g, [])
    cond = _scalar(ctx, inputs[0])
    return ctx.emit(relax.If(cond, _branch(ctx, then_g), _branch(ctx, else_g)))


# ---- Loop --------------------------------------------------------------------------------------
def _trip_count(ctx: LowerContext, m: relax.Expr | None) -> int:
    if m is None:
        raise LoweringError("Loop without a trip count (a while loop) is not supported yet")
    arr = _static_value(ctx, m)
    if arr is None:
        raise LoweringError("Loop with a run-time trip count is not supported yet")
    trip = int(arr.reshape(-1)[0])
    if trip > MAX_UNROLL:
        raise LoweringError(f"Loop trip count {trip} is too large to unroll (at most {MAX_UNROLL})")
    return max(trip, 0)


class _Condition:
    """The loop's 'still running' flag: statically true, statically false, or a run-time bool."""

    def __init__(self, ctx: LowerContext, e: relax.Expr | None):
        self.ctx = ctx
        self.static: bool | None = True if e is None else _static_bool(ctx, e)
        self.expr = None if self.static is not None else _scalar(ctx, e)

    def body_input(self) -> relax.Expr:
        return self.expr if self.expr is not None else relax.const(self.static, "bool")

    def update(self, cond_in: relax.Expr, cond_out: relax.Expr) -> None:
        """AND in the body's output condition (a pass-through of cond_in changes nothing)."""
        if cond_out.same_as(cond_in):
            return
        out = _static_bool(self.ctx, cond_out)
        if out is True:
            return
        if out is False:
            self.static, self.expr = False, None
            return
        out_expr = _scalar(self.ctx, cond_out)
        self.expr = out_expr if self.expr is None else \
            self.ctx.emit(relax.op.logical_and(self.expr, out_expr))
        self.static = None


def _masked(ctx: LowerContext, flag: relax.Expr, new: relax.Expr, old: relax.Expr) -> relax.Expr:
    """new where the loop still runs, else old; shapes must agree for that."""
    if [str(d) for d in _dims(new)] != [str(d) for d in _dims(old)]:
        raise LoweringError("a Loop with a run-time condition needs loop-carried values of fixed "
                            f"shape; got {_dims(old)} then {_dims(new)}")
    return ctx.emit(relax.op.where(flag, new, old))


def _cut_to_count(ctx: LowerContext, stacked: relax.Expr, flags: list) -> relax.Expr:
    """Keep the first k items, k = the number of iterations that ran (flags: None = surely)."""
    one = relax.const(1, "int64")
    count = relax.const(0, "int64")
    for f in flags:
        count = relax.op.add(count, one if f is None else relax.op.astype(f, "int64"))
    dims = _dims(stacked)
    if not all(isinstance(d, int) for d in dims[1:]):
        raise LoweringError("a Loop with a run-time condition needs scan outputs of static shape")
    end = relax.op.concat(
        [relax.op.reshape(count, [1]), relax.const(np.array(dims[1:], np.int64), "int64")], axis=0)
    begin = relax.const(np.zeros(len(dims), np.int64), "int64")
    strides = relax.const(np.ones(len(dims), np.int64), "int64")
    return ctx.emit(relax.op.dynamic_strided_slice(stacked, begin, ctx.emit(end), strides))


@register_lowering("Loop")
def lower_loop(ctx: LowerContext, node: Node, inputs: list) -> list[relax.Expr]:
    body: Graph = node.attrs["body"]
    trip = _trip_count(ctx, inputs[0])
    n_carried = len(inputs) - 2
    n_scan = len(body.outputs) - 1 - n_carried
    carried = list(inputs[2:])
    cond = _Condition(ctx, inputs[1] if len(inputs) > 1 else None)
    scans: list[list[relax.Expr]] = [[] for _ in range(n_scan)]
    flags: list[relax.Expr | None] = []  # per iteration that may have run: its run-time flag
    for i in range(trip):
        if cond.static is False:
            break
        cond_in = cond.body_input()
        outs = _lower_body(ctx, body, [relax.const(i, "int64"), cond_in, *carried])
        new = outs[1:1 + n_carried]
        flag = cond.expr
        carried = new if flag is None else [_masked(ctx, flag, n, o) for n, o in zip(new, carried)]
        for k in range(n_scan):
            scans[k].append(outs[1 + n_carried + k])
        flags.append(flag)
        cond.update(cond_in, outs[0])
    results = list(carried)
    for k, vals in enumerate(scans):
        if not vals:
            results.append(_empty_stack(body.outputs[1 + n_carried + k], f"Loop '{node.name}'"))
            continue
        stacked = _stack(ctx, vals)
        results.append(stacked if all(f is None for f in flags) else
                       _cut_to_count(ctx, stacked, flags))
    return results


# ---- Scan --------------------------------------------------------------------------------------
def _axis(a: int, rank: int) -> int:
    return a + rank if a < 0 else a


def _scan(ctx: LowerContext, node: Node, states: list, xs: list, in_axes: Sequence[int],
          in_dirs: Sequence[int]) -> tuple[list[relax.Expr], list[list[relax.Expr]]]:
    """Unroll the body over the scan axis; final states and per-output item lists (in order)."""
    body: Graph = node.attrs["body"]
    lengths = {_dims(x)[a] for x, a in zip(xs, in_axes)}
    if len(lengths) != 1 or not isinstance(next(iter(lengths)), int):
        raise LoweringError(f"Scan needs one static scan length, got {sorted(map(str, lengths))}")
    length = lengths.pop()
    slices = []
    for x, a, rev in zip(xs, in_axes, in_dirs):
        s = _unstack(ctx, x, a, length)
        slices.append(s[::-1] if rev else s)
    n = len(states)
    items: list[list[relax.Expr]] = [[] for _ in range(len(body.outputs) - n)]
    for t in range(length):
        outs = _lower_body(ctx, body, [*states, *(s[t] for s in slices)])
        states = outs[:n]
        for k, v in enumerate(outs[n:]):
            items[k].append(v)
    return states, items


def _scan_outputs(ctx: LowerContext, node: Node, items: list[list[relax.Expr]],
                  axes: Sequence[int], dirs: Sequence[int]) -> list[relax.Expr]:
    body: Graph = node.attrs["body"]
    n_states = len(body.outputs) - len(items)
    outs = []
    for k, vals in enumerate(items):
        if not vals:
            outs.append(_empty_stack(body.outputs[n_states + k], f"Scan '{node.name}'"))
            continue
        vals = vals[::-1] if dirs[k] else vals
        outs.append(_stack(ctx, vals, _axis(axes[k], len(_dims(vals[0])) + 1)))
    return outs


@register_lowering("Scan")
def lower_scan(ctx: LowerContext, node: Node, inputs: list) -> list[relax.Expr]:
    if ctx.opset < 9:
        return _lower_scan8(ctx, node, inputs)
    m = int(node.attrs["num_scan_inputs"])
    n = len(inputs) - m
    states, xs = list(inputs[:n]), list(inputs[n:])
    in_axes = [_axis(a, len(_dims(x)))
               for a, x in zip(node.attrs.get("scan_input_axes") or [0] * m, xs)]
    in_dirs = node.attrs.get("scan_input_directions") or [0] * m
    states, items = _scan(ctx, node, states, xs, in_axes, in_dirs)
    k = len(items)
    out_axes = node.attrs.get("scan_output_axes") or [0] * k
    out_dirs = node.attrs.get("scan_output_directions") or [0] * k
    return states + _scan_outputs(ctx, node, items, out_axes, out_dirs)


def _lower_scan8(ctx: LowerContext, node: Node, inputs: list) -> list[relax.Expr]:
    """Scan-8: every input has a leading batch axis (scan axis 1); run one scan per entry."""
    m = int(node.attrs["num_scan_inputs"])
    lens, rest = inputs[0], list(inputs[1:])
    n = len(rest) - m
    batch = _dims(rest[0])[0]
    if not isinstance(batch, int):
        raise LoweringError("Scan-8 needs a static batch size")
    seq = _dims(rest[n])[1]
    if lens is not None:
        arr = _static_value(ctx, lens)
        if arr is None or not np.all(arr == seq):
            raise LoweringError("Scan-8 with sequence_lens shorter than the scan length is not "
                                "supported yet")
    dirs = node.attrs.get("directions") or [0] * m
    columns = [_unstack(ctx, x, 0, batch) for x in rest]
    per_batch = []
    for b in range(batch):
        picked = [c[b] for c in columns]
        states, items = _scan(ctx, node, picked[:n], picked[n:], [0] * m, dirs)
        per_batch.append(states + _scan_outputs(ctx, node, items, [0] * len(items),
                                                [0] * len(items)))
    return [_stack(ctx, list(col)) for col in zip(*per_batch)]
