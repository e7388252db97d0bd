"""Lowering of the sparse matmuls (`edlc.bsr_matmul`, `edlc.nm_matmul`) to kernels made for
their pattern.

The weights are constants, so the pattern is known here: every loop bound is static (J blocks
per row block, K*n/m kept values per output) and the packed values and indices are the
kernel's operands, stored in the order the kernels read them (edlc/passes/sparsity/ops.py).
TVM's default CPU schedule is a naive loop nest, so each kernel comes scheduled (marked
"tirx.is_scheduled"), with the register blocking edlc's dense schedule uses
(edlc/schedules/contraction.py): a few vector accumulators, each reused across the reduction.

- N:M with m = 4 on AVX (`nm_permute_kernel`): vectorized over 8 output columns. Per group of
  4 inputs the kernel broadcasts x[4g .. 4g+3] to both 128-bit halves once, and per kept slot t
  one `vpermilps` picks, in every lane, the input that lane's column kept (the 2-bit position
  field of its index byte is the permute control, shifted into place): one permute and one FMA
  per 8 kept weights, the values and 4 bits per group of metadata read as one stream per
  column block. A gather would cost 8 loads; a column permutation cannot help, since 2:4
  magnitude pruning gives each column its own pattern. One row reads 5 MB where a dense
  768x3072 layer reads 9.4: memory bound, it runs about 2x faster. With many rows the dense
  kernel is compute bound at one FMA per 8 products and this one needs a permute as well, so
  2:4 buys no speed there on AVX2 (the kernel vectorized over rows, below, does no better).
- N:M elsewhere: `nm_batched_kernel` when x has a multiple of 8 rows, else `nm_kernel` (the
  column loop nest with the inputs gathered per lane).
- Rows of x in multiples of 8 (`bsr_batched_kernel`, `nm_batched_kernel`): x packed as
  [M/8, K, 8] (one transpose), vectorized over 8 rows: every kept weight is a broadcast scalar
  times a contiguous vector, the vector an R-row block loads serving its R rows.
- 1xC blocks, C = 4 or a multiple of 8, fewer rows (`bsr_row_kernel`): one output's blocks fill a
  vector (two 1x4 blocks per 8 lanes, values and x slices joined), the G outputs of a group
  interleaved, each summed across lanes at the end.
- Other blocks (`bsr_kernel`): a task per group of row blocks, the block rows vectorized.

Parallel loops only where a thread pool runs them (not in microcontroller firmware). Symbolic
batch dims fall back to the dense matmul of the same weights.
"""

from __future__ import annotations

import numpy as np

from edlc.ir.graph import Node
from edlc.lower import LowerContext, register_lowering

LANES = 8  # fp32 lanes of the vector kernels (one AVX2 register; two NEON ones)
BATCH = 8  # rows of x the batched kernels vectorize over (x packed [M/8, K, 8])


def _rows(ctx: LowerContext, node: Node) -> int | None:
    """M: the product of x's leading dims, or None when one is symbolic."""
    shape = node.inputs[0].type.shape
    if shape is None or not all(isinstance(d, int) for d in shape[:-1]):
        return None
    return int(np.prod(shape[:-1], dtype=np.int64))


def _scheduled(func):
    """The PrimFunc marked so default schedules leave it, without a global symbol (the
    module names it)."""
    return func.with_attr("tirx.is_scheduled", True).without_attr("global_symbol")


def has_avx(ctx: LowerContext) -> bool:
    """Whether the target being lowered for is an x86 CPU with AVX (`vpermilps`). A lowering
    without a target (target-neutral) takes the portable kernels."""
    target = getattr(ctx, "target", None)
    if target is None or target.tvm.get("kind") != "llvm":
        return False
    if not str(target.tvm.get("mtriple", "") or "x86_64").startswith(("x86_64", "i686", "i386")):
        return False
    from tvm.target import codegen

    try:
        return bool(codegen.target_has_features("avx", target.tvm_target()))
    except Exception:  # noqa: BLE001  an unknown CPU: the portable kernel is always right
        return False


def threads(ctx: LowerContext) -> bool:
    """Whether the kernels may run parallel loops: not on a microcontroller (no thread pool in
    the firmware) nor on a one-core target; a target-neutral lowering may."""
    target = getattr(ctx, "target", None)
    if target is None:
        return True
    return target.mcu is None and int(target.tvm.get("num-cores", 1) or 1) > 1


def _divisor(n: int, choices: tuple[int, ...]) -> int:
    """The first of `choices` dividing n (1 if none does)."""
    return next((c for c in choices if n % c == 0), 1)


# ---- block sparse ---------------------------------------------------------------------------


def bsr_kernel(m: int, k: int, groups: int, j: int, g: int, r: int, c: int, dtype: str,
               index_dtype: str, parallel: bool = True):
    """y[m, i, r] = sum_{j, c} values[i // G, j, i % G, r, c] * x[m, indices[i // G, j, i % G]*C + c]:
    a task per G row blocks, their G x R accumulators in registers (the rows vectorized),
    the block columns unrolled."""
    from tvm import s_tir, te

    x = te.placeholder((m, k), dtype, name="x")
    v = te.placeholder((groups, j, g, r, c), dtype, name="values")
    ix = te.placeholder((groups, j, g), index_dtype, name="indices")
    rj, rc = te.reduce_axis((0, j), "j"), te.reduce_axis((0, c), "c")
    y = te.compute((m, groups * g, r), lambda mi, i, ri: te.sum(
        v[i // g, rj, i % g, ri, rc] * x[mi, ix[i // g, rj, i % g].astype("int32") * c + rc],
        axis=[rj, rc]), name="bsr_matmul")
    sch = s_tir.Schedule(te.create_prim_func([x, v, ix, y]))
    blk = sch.get_sblock("bsr_matmul")
    lm, li, lr, lj, lc = sch.get_loops(blk)
    io, ii = sch.split(li, [None, g])
    sch.reorder(io, lm, lj, lc, ii, lr)
    if parallel:
        sch.parallel(io)
    acc = sch.cache_write(blk, 0, "local")
    sch.reverse_compute_at(acc, lm)
    sch.unroll(lc)
    sch.unroll(ii)
    if r > 1:
        sch.vectorize(lr)
    sch.decompose_reduction(blk, lj)
    return _scheduled(sch.mod["main"])


def row_blocks_vectorize(r: int, c: int, dtype: str) -> bool:
    """Whether `bsr_row_kernel` takes R x C blocks: one row, C = 4 or a multiple of 8, fp32."""
    return r == 1 and dtype == "float32" and (c == 4 or c % LANES == 0)


def bsr_row_kernel(m: int, k: int, groups: int, j: int, g: int, c: int, index_dtype: str,
                   parallel: bool = True):
    """y[m, i] = sum_j values[i // G, j, i % G, 0, :] . x[m, C*indices[i // G, j, i % G] : +C]
    for 1 x C blocks.

    Every output is one vector accumulator: two 1x4 blocks per 8 lanes (values and x slices
    joined), or C/8 vectors per block. The G outputs of a group are interleaved (G FMA chains
    in flight, their values one sequential stream); at the end each accumulator is summed
    across its lanes."""
    from tvm.script import tirx as T

    pair = c == 4
    steps, per_block = (j // 2, 1) if pair else (j, c // LANES)
    tail = g if pair and j % 2 == 1 else 0  # the odd 1x4 block of each output: half a vector
    flat = groups * j * g * c
    loop = T.parallel if parallel else T.serial

    def index(indices, a, jj, o):
        return T.Cast("int32", indices[a, jj, o]) * c

    def product(vf, x, indices, mi, a, o, s, q):
        """The values times the inputs of step s of output o of group a, vector q."""
        if pair:
            return T.Shuffle([vf[T.ramp(((a * j + s * 2) * g + o) * c, 1, 4)],
                              vf[T.ramp(((a * j + s * 2 + 1) * g + o) * c, 1, 4)]],
                             list(range(LANES))) * \
                T.Shuffle([x[mi, T.ramp(index(indices, a, s * 2, o), 1, 4)],
                           x[mi, T.ramp(index(indices, a, s * 2 + 1, o), 1, 4)]], list(range(LANES)))
        return vf[T.ramp(((a * j + s) * g + o) * c + q * LANES, 1, LANES)] * \
            x[mi, T.ramp(index(indices, a, s, o) + q * LANES, 1, LANES)]

    @T.prim_func(private=True, s_tir=True)
    def bsr_row(x: T.Buffer((m, k), "float32"), values: T.Buffer((groups, j, g, 1, c), "float32"),
                indices: T.Buffer((groups, j, g), index_dtype), y: T.Buffer((m, groups * g), "float32")):
        T.func_attr({"tirx.noalias": True})
        with T.sblock("root"):
            acc = T.sblock_alloc_buffer((g * LANES,), "float32", scope="local")
            for a in loop(groups):
                with T.sblock("bsr_row"):
                    T.reads(x[0:m, 0:k], values[a, 0:j, 0:g, 0, 0:c], indices[a, 0:j, 0:g])
                    T.writes(y[0:m, a * g:a * g + g])
                    vf = T.decl_buffer((flat,), "float32", data=values.data)
                    for mi in T.serial(m):
                        for o in T.unroll(g):
                            acc[T.ramp(o * LANES, 1, LANES)] = T.broadcast(T.float32(0), LANES)
                        for s in T.serial(steps):
                            for o in T.unroll(g):
                                for q in T.unroll(per_block):
                                    acc[T.ramp(o * LANES, 1, LANES)] = acc[T.ramp(o * LANES, 1, LANES)] \
                                        + product(vf, x, indices, mi, a, o, s, q)
                        for o in T.unroll(tail):
                            acc[T.ramp(o * LANES, 1, 4)] = acc[T.ramp(o * LANES, 1, 4)] + \
                                vf[T.ramp(((a * j + j - 1) * g + o) * c, 1, 4)] * \
                                x[mi, T.ramp(index(indices, a, j - 1, o), 1, 4)]
                        for o in T.unroll(g):
                            y[mi, a * g + o] = ((acc[o * LANES] + acc[o * LANES + 4])
                                                + (acc[o * LANES + 1] + acc[o * LANES + 5])) + (
                                (acc[o * LANES + 2] + acc[o * LANES + 6])
                                + (acc[o * LANES + 3] + acc[o * LANES + 7]))

    return _scheduled(bsr_row)


def bsr_batched_kernel(m: int, k: int, groups: int, j: int, g: int, r: int, c: int, dtype: str,
                       index_dtype: str, parallel: bool = True):
    """y[m, i, r] = sum_{j, c} values[i // G, j, i % G, r, c] * xp[m // 8, C*indices[..] + c, m % 8]
    for x packed as xp [M/8, K, 8]: vectorized over 8 rows of x, every kept weight a broadcast
    scalar times a contiguous vector. Accumulators: the G x R rows of a group (at most 8; taller
    blocks go 8 rows at a time) x 8 lanes; the x vector a block column loads serves R rows."""
    from tvm import s_tir, te

    xp = te.placeholder((m // BATCH, k, BATCH), dtype, name="xp")
    v = te.placeholder((groups, j, g, r, c), dtype, name="values")
    ix = te.placeholder((groups, j, g), index_dtype, name="indices")
    rj, rc = te.reduce_axis((0, j), "j"), te.reduce_axis((0, c), "c")
    y = te.compute((m, groups * g, r), lambda mi, i, ri: te.sum(
        v[i // g, rj, i % g, ri, rc]
        * xp[mi // BATCH, ix[i // g, rj, i % g].astype("int32") * c + rc, mi % BATCH],
        axis=[rj, rc]), name="bsr_matmul")
    sch = s_tir.Schedule(te.create_prim_func([xp, v, ix, y]))
    blk = sch.get_sblock("bsr_matmul")
    lm, li, lr, lj, lc = sch.get_loops(blk)
    mo, ml = sch.split(lm, [None, BATCH])
    ro, ri = sch.split(lr, [None, _divisor(r, (8, 4, 2))])
    io, ii = sch.split(li, [None, g])
    sch.reorder(io, mo, ro, lj, lc, ii, ri, ml)
    outer = sch.fuse(io, mo)
    if parallel:
        sch.parallel(outer)
    acc = sch.cache_write(blk, 0, "local")
    sch.reverse_compute_at(acc, ro)
    sch.unroll(ii)
    sch.unroll(ri)
    sch.vectorize(ml)
    sch.decompose_reduction(blk, lj)
    return _scheduled(sch.mod["main"])


# ---- N:M --------------------------------------------------------------------------------------


def nm_kernel(m: int, k: int, blocks: int, lanes: int, n: int, mm: int, index_dtype: str,
              dtype: str, parallel: bool = True):
    """y[m, c*L + l] = sum_{g, t} values[c, g*n + t, l] * x[m, g*M + field_t(indices[c, g, l])]:
    the portable N:M kernel, a register accumulator per column block, the column lanes
    vectorized (the x gather is per lane)."""
    from tvm import s_tir, te

    from edlc.passes.sparsity.ops import index_bits

    bits = index_bits(mm)
    groups = k // mm
    x = te.placeholder((m, k), dtype, name="x")
    v = te.placeholder((blocks, groups * n, lanes), dtype, name="values")
    ix = te.placeholder((blocks, groups, lanes), index_dtype, name="indices")
    rg, rt = te.reduce_axis((0, groups), "g"), te.reduce_axis((0, n), "t")

    def body(mi, o):
        c, lane = o // lanes, o % lanes
        pos = (ix[c, rg, lane].astype("int32") >> (rt * bits)) & ((1 << bits) - 1)
        return te.sum(v[c, rg * n + rt, lane] * x[mi, rg * mm + pos], axis=[rg, rt])

    y = te.compute((m, blocks * lanes), body, name="nm_matmul")
    sch = s_tir.Schedule(te.create_prim_func([x, v, ix, y]))
    blk = sch.get_sblock("nm_matmul")
    lm, lo, lg, lt = sch.get_loops(blk)
    lc, ll = sch.split(lo, [None, lanes])
    sch.reorder(lc, lm, lg, lt, ll)
    if parallel:
        sch.parallel(lc)
    acc = sch.cache_write(blk, 0, "local")
    sch.reverse_compute_at(acc, lm)
    sch.unroll(lt)
    if lanes > 1:
        sch.vectorize(ll)
    sch.decompose_reduction(blk, lg)
    return _scheduled(sch.mod["main"])


def nm_batched_kernel(m: int, k: int, blocks: int, lanes: int, n: int, mm: int,
                      index_dtype: str, dtype: str, parallel: bool = True):
    """y[m, o] = sum_{g, t} values[o // L, g*n + t, o % L] * xp[m // 8, g*M + p_t, m % 8] for x
    packed as xp [M/8, K, 8]: vectorized over 8 rows of x, each kept weight a broadcast scalar
    times the contiguous vector of its input (no permute, no gather). Accumulators: 8 outputs
    x 8 lanes, their FMA chains interleaved."""
    from tvm import s_tir, te

    from edlc.passes.sparsity.ops import index_bits

    bits = index_bits(mm)
    groups = k // mm
    xp = te.placeholder((m // BATCH, k, BATCH), dtype, name="xp")
    v = te.placeholder((blocks, groups * n, lanes), dtype, name="values")
    ix = te.placeholder((blocks, groups, lanes), index_dtype, name="indices")
    rg, rt = te.reduce_axis((0, groups), "g"), te.reduce_axis((0, n), "t")

    def body(mi, o):
        c, lane = o // lanes, o % lanes
        pos = (ix[c, rg, lane].astype("int32") >> (rt * bits)) & ((1 << bits) - 1)
        return te.sum(v[c, rg * n + rt, lane] * xp[mi // BATCH, rg * mm + pos, mi % BATCH],
                      axis=[rg, rt])

    y = te.compute((m, blocks * lanes), body, name="nm_matmul")
    sch = s_tir.Schedule(te.create_prim_func([xp, v, ix, y]))
    blk = sch.get_sblock("nm_matmul")
    lm, lo, lg, lt = sch.get_loops(blk)
    mo, ml = sch.split(lm, [None, BATCH])
    oo, oi = sch.split(lo, [None, _divisor(blocks * lanes, (8, 4, 2))])
    sch.reorder(oo, mo, lg, lt, oi, ml)
    outer = sch.fuse(oo, mo)
    if parallel:
        sch.parallel(outer)
    acc = sch.cache_write(blk, 0, "local")
    sch.reverse_compute_at(acc, sch.get_loops(blk)[0])
    sch.unroll(lt)
    sch.unroll(oi)
    sch.vectorize(ml)
    sch.decompose_reduction(blk, lg)
    return _scheduled(sch.mod["main"])


def nm_permute_kernel(m: int, k: int, blocks: int, lanes: int, n: int, parallel: bool = True):
    """The m = 4 kernel for AVX: 8 columns per vector, `vpermilps` selects each lane's kept
    input from the broadcast group x[4g .. 4g+3] (the lane's 2-bit position is the control).

    Register blocking: MR rows x V vectors of accumulators (M = 1: one row, four vectors, the
    32-column block at once; more rows: 4 x 2 or 2 x 4, within AVX2's 16 registers with the
    MR broadcast groups and the controls). The permute controls are decoded once per group
    and vector and reused across the MR rows."""
    from tvm.script import tirx as T

    groups, kept = k // 4, k // 4 * n
    mr = 1 if m == 1 else _divisor(m, (4, 3, 2))
    vecs = min(lanes // LANES, 2 if mr >= 3 else 4)
    width = vecs * LANES
    subs = lanes // width
    row_blocks = m // mr
    permute = T.llvm_lookup_intrinsic_id("llvm.x86.avx.vpermilvar.ps.256")
    loop = T.parallel if parallel else T.serial

    @T.prim_func(private=True, s_tir=True)
    def nm_permute(x: T.Buffer((m, k), "float32"), values: T.Buffer((blocks, kept, lanes), "float32"),
                   indices: T.Buffer((blocks, groups, lanes), "uint8"),
                   y: T.Buffer((m, blocks * lanes), "float32")):
        T.func_attr({"tirx.noalias": True})
        with T.sblock("root"):
            acc = T.sblock_alloc_buffer((mr * vecs * LANES,), "float32", scope="local")
            for task in loop(blocks * row_blocks):
                with T.sblock("nm_permute"):
                    for sub in T.serial(subs):
                        for a in T.unroll(mr * vecs):
                            acc[T.ramp(a * LANES, 1, LANES)] = T.broadcast(T.float32(0), LANES)
                        for g in T.serial(groups):
                            for vi in T.unroll(vecs):
                                for t in T.unroll(n):
                                    for r in T.unroll(mr):
                                        acc[T.ramp((r * vecs + vi) * LANES, 1, LANES)] = \
                                            acc[T.ramp((r * vecs + vi) * LANES, 1, LANES)] + values[
                                                task // row_blocks, g * n + t, T.ramp(sub * width + vi * LANES, 1, LANES)] * \
                                            T.call_llvm_pure_intrin(
                                                permute,
                                                T.Shuffle([x[task % row_blocks * mr + r, T.ramp(g * 4, 1, 4)],
                                                           x[task % row_blocks * mr + r, T.ramp(g * 4, 1, 4)]], list(range(LANES))),
                                                T.shift_right(T.Cast("int32x8", indices[
                                                    task // row_blocks, g, T.ramp(sub * width + vi * LANES, 1, LANES)]),
                                                    T.broadcast(2 * t, LANES)),
                                                dtype="float32x8")
                        for r in T.unroll(mr):
                            for vi in T.unroll(vecs):
                                y[task % row_blocks * mr + r, T.ramp(task // row_blocks * lanes + sub * width + vi * LANES, 1, LANES)] = \
                                    acc[T.ramp((r * vecs + vi) * LANES, 1, LANES)]

    return _scheduled(nm_permute)


def permute_applies(ctx: LowerContext, node: Node) -> bool:
    """Whether `nm_permute_kernel` takes this node: AVX, groups of 4, fp32, byte indices,
    column blocks of whole vectors."""
    lanes = int(node.inputs[1].type.shape[2])
    return (int(node.attrs["m"]) == 4 and node.inputs[0].type.dtype == "float32"
            and node.inputs[1].type.dtype == "float32" and node.inputs[2].type.dtype == "uint8"
            and lanes % LANES == 0 and has_avx(ctx))


# ---- emitting ----------------------------------------------------------------------------------


def _dense_fallback(ctx: LowerContext, node: Node, inputs: list):
    import tvm
    from tvm import relax

    from edlc.passes.sparsity.ops import dense_weight

    w = relax.const(tvm.runtime.tensor(np.ascontiguousarray(dense_weight(node))))
    y = ctx.emit(relax.op.matmul(inputs[0], w))
    return ctx.emit(relax.op.add(y, inputs[3])) if len(inputs) > 3 and inputs[3] is not None else y


def _emit(ctx: LowerContext, node: Node, inputs: list, func, out_shape: tuple[int, ...],
          batched: bool = False):
    """Call the kernel on x as [M, K] (`batched`: packed as [M/8, K, 8]) and give its [M, ...]
    result x's leading dims."""
    from tvm import relax

    shape = list(node.inputs[0].type.shape)
    m, k = int(np.prod(shape[:-1], dtype=np.int64)), int(shape[-1])
    dtype = node.inputs[0].type.dtype
    out_features = int(np.prod(out_shape[1:], dtype=np.int64))
    x = ctx.emit(relax.op.reshape(inputs[0], [m, k])) if len(shape) != 2 else inputs[0]
    if batched:
        x = ctx.emit(relax.op.reshape(x, [m // BATCH, BATCH, k]))
        x = ctx.emit(relax.op.permute_dims(x, [0, 2, 1]))
    gv = ctx.bb.add_func(func, ctx.fresh(f"{node.op}_{node.name}"))
    y = ctx.emit(relax.call_tir(gv, [x, inputs[1], inputs[2]], relax.TensorType(out_shape, dtype)))
    if list(out_shape) != shape[:-1] + [out_features]:
        y = ctx.emit(relax.op.reshape(y, shape[:-1] + [out_features]))
    if len(inputs) > 3 and inputs[3] is not None:  # the bias: TE's reduction init is not kept
        y = ctx.emit(relax.op.add(y, inputs[3]))
    return y


def batched(m: int) -> bool:
    """Whether x's rows fill the vectors of the kernels vectorized over rows."""
    return m % BATCH == 0


@register_lowering("bsr_matmul", "edlc")
def bsr_matmul(ctx: LowerContext, node: Node, inputs: list):
    m = _rows(ctx, node)
    if m is None:
        return _dense_fallback(ctx, node, inputs)
    groups, j, g, r, c = (int(d) for d in node.inputs[1].type.shape)
    k, dtype, index_dtype = int(node.attrs["k"]), node.inputs[0].type.dtype, node.inputs[2].type.dtype
    par = threads(ctx)
    if batched(m):
        func = bsr_batched_kernel(m, k, groups, j, g, r, c, dtype, index_dtype, par)
        return _emit(ctx, node, inputs, func, (m, groups * g, r), batched=True)
    if row_blocks_vectorize(r, c, dtype) and node.inputs[1].type.dtype == dtype:
        return _emit(ctx, node, inputs, bsr_row_kernel(m, k, groups, j, g, c, index_dtype, par),
                     (m, groups * g))
    func = bsr_kernel(m, k, groups, j, g, r, c, dtype, index_dtype, par)
    return _emit(ctx, node, inputs, func, (m, groups * g, r))


@register_lowering("nm_matmul", "edlc")
def nm_matmul(ctx: LowerContext, node: Node, inputs: list):
    m = _rows(ctx, node)
    if m is None:
        return _dense_fallback(ctx, node, inputs)
    blocks, _, lanes = (int(d) for d in node.inputs[1].type.shape)
    k, n, mm = int(node.attrs["k"]), int(node.attrs["n"]), int(node.attrs["m"])
    index_dtype, dtype = node.inputs[2].type.dtype, node.inputs[0].type.dtype
    par = threads(ctx)
    if permute_applies(ctx, node):
        return _emit(ctx, node, inputs, nm_permute_kernel(m, k, blocks, lanes, n, par), (m, blocks * lanes))
    if batched(m):
        func = nm_batched_kernel(m, k, blocks, lanes, n, mm, index_dtype, dtype, par)
        return _emit(ctx, node, inputs, func, (m, blocks * lanes), batched=True)
    func = nm_kernel(m, k, blocks, lanes, n, mm, index_dtype, dtype, par)
    return _emit(ctx, node, inputs, func, (m, blocks * lanes))
