"""Lowering of the sparse matmuls (`edlc.bsr_matmul`, `edlc.nm_matmul`) to kernels made for
their pattern.

The weights are constants, so the pattern is known here: the kernel is a TE compute over the
kept values only, with every loop bound static (J blocks per row block; K*n/m kept values per
output), the packed values and the index array as parameters. Static bounds keep it
schedulable (MetaSchedule rejects data-dependent loops; the notes in shared/notes say so).
TVM's default CPU schedule is a naive loop nest, so the kernel comes scheduled: row blocks in
parallel, the block's columns unrolled, its rows vectorized, marked "tirx.is_scheduled".
Symbolic batch dims fall back to the dense matmul of the same weights.
"""

from __future__ import annotations

import numpy as np

from edlc.ir.graph import Node
from edlc.lower import LowerContext, register_lowering

ROWS_PER_TASK = 8  # row blocks (or outputs) one parallel task computes


def _rows(ctx: LowerContext, node: Node) -> int | None:
    """M: the product of x's leading dims, or None when one is symbolic."""
    shape = node.inputs[0].type.shape
    if shape is None or not all(isinstance(d, int) for d in shape[:-1]):
        return None
    return int(np.prod(shape[:-1], dtype=np.int64))


def _scheduled(sch):
    """The scheduled PrimFunc, marked so default schedules leave it, without the "main"
    symbol TE gives it (the module names it)."""
    return sch.mod["main"].with_attr("tirx.is_scheduled", True).without_attr("global_symbol")


def bsr_kernel(m: int, k: int, nb: int, j: int, r: int, c: int, dtype: str):
    """y[m, i, r] = sum_{j, c} values[i, j, r, c] * x[m, indices[i, j] * C + c]."""
    from tvm import s_tir, te

    x = te.placeholder((m, k), dtype, name="x")
    v = te.placeholder((nb, j, r, c), dtype, name="values")
    ix = te.placeholder((nb, j), "int32", name="indices")
    args = [x, v, ix]
    rj, rc = te.reduce_axis((0, j), "j"), te.reduce_axis((0, c), "c")
    y = te.compute((m, nb, r), lambda mi, i, ri: te.sum(
        v[i, rj, ri, rc] * x[mi, ix[i, rj] * c + rc], axis=[rj, rc]),
        name="bsr_matmul")
    sch = s_tir.Schedule(te.create_prim_func([*args, y]))
    blk = sch.get_sblock("bsr_matmul")
    lm, li, lr, lj, lc = sch.get_loops(blk)
    io, ii = sch.split(li, [None, min(ROWS_PER_TASK, nb)])
    sch.reorder(io, lm, ii, lj, lc, lr)
    sch.parallel(io)
    sch.unroll(lc)
    if r > 1:
        sch.vectorize(lr)
    return _scheduled(sch)


def nm_kernel(m: int, k: int, out: int, n: int, mm: int, dtype: str):
    """y[m, o] = sum_q values[o, q] * x[m, (q // n) * M + indices[o, q]]: per
    output a register accumulator over its kept values, read in order."""
    from tvm import s_tir, te

    kept = k * n // mm
    x = te.placeholder((m, k), dtype, name="x")
    v = te.placeholder((out, kept), dtype, name="values")
    ix = te.placeholder((out, kept), "int8", name="indices")
    args = [x, v, ix]
    rq = te.reduce_axis((0, kept), "q")
    y = te.compute((m, out), lambda mi, o: te.sum(
        v[o, rq] * x[mi, (rq // n) * mm + ix[o, rq].astype("int32")], axis=[rq]),
        name="nm_matmul")
    sch = s_tir.Schedule(te.create_prim_func([*args, y]))
    blk = sch.get_sblock("nm_matmul")
    lm, lo, lq = sch.get_loops(blk)
    oo, oi = sch.split(lo, [None, min(ROWS_PER_TASK, out)])
    qo, qi = sch.split(lq, [None, 4 * n])
    sch.reorder(oo, lm, oi, qo, qi)
    sch.parallel(oo)
    sch.unroll(qi)
    return _scheduled(sch)


def _dense_fallback(ctx: LowerContext, node: Node, inputs: list):
    import tvm
    from tvm import relax

    from edlc.passes.sparsity.ops import dense_weight

    w = relax.const(tvm.runtime.tensor(np.ascontiguousarray(dense_weight(node))))
    y = ctx.emit(relax.op.matmul(inputs[0], w))
    return ctx.emit(relax.op.add(y, inputs[3])) if len(inputs) > 3 and inputs[3] is not None else y


def _emit(ctx: LowerContext, node: Node, inputs: list, func, out_features: int):
    from tvm import relax

    shape = list(node.inputs[0].type.shape)
    m, k = int(np.prod(shape[:-1], dtype=np.int64)), int(shape[-1])
    dtype = node.inputs[0].type.dtype
    x = ctx.emit(relax.op.reshape(inputs[0], [m, k])) if len(shape) != 2 else inputs[0]
    args = [x, inputs[1], inputs[2]]
    gv = ctx.bb.add_func(func, ctx.fresh(f"{node.op}_{node.name}"))
    out_shape: tuple[int, ...] = (m, out_features)
    if node.op == "bsr_matmul":  # the kernel writes [M, row blocks, R]
        r = int(node.inputs[1].type.shape[2])
        out_shape = (m, out_features // r, r)
    y = ctx.emit(relax.call_tir(gv, args, relax.TensorType(out_shape, dtype)))
    y = ctx.emit(relax.op.reshape(y, shape[:-1] + [out_features]))
    if len(inputs) > 3 and inputs[3] is not None:  # the bias: TE's reduction init is not kept
        y = ctx.emit(relax.op.add(y, inputs[3]))
    return y


@register_lowering("bsr_matmul", "edlc")
def bsr_matmul(ctx: LowerContext, node: Node, inputs: list):
    m = _rows(ctx, node)
    if m is None:
        return _dense_fallback(ctx, node, inputs)
    nb, j, r, c = (int(d) for d in node.inputs[1].type.shape)
    func = bsr_kernel(m, int(node.attrs["k"]), nb, j, r, c, node.inputs[0].type.dtype)
    return _emit(ctx, node, inputs, func, nb * r)


@register_lowering("nm_matmul", "edlc")
def nm_matmul(ctx: LowerContext, node: Node, inputs: list):
    m = _rows(ctx, node)
    if m is None:
        return _dense_fallback(ctx, node, inputs)
    out = int(node.inputs[1].type.shape[0])
    func = nm_kernel(m, int(node.attrs["k"]), out, int(node.attrs["n"]), int(node.attrs["m"]),
                     node.inputs[0].type.dtype)
    return _emit(ctx, node, inputs, func, out)
