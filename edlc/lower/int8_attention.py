"""Lowering of `edlc.qattention` (edlc.passes.quantize.attention): one kernel per attention,
both products on the packed uint8 x int8 quads of the int8 layers (edlc.lower.int8_packed), so
edlc.schedules.int8 maps them onto `vpmaddubsw` (or `vpdpbusd`, or plain loops elsewhere).

    kp[b, h, j/16, d/4, 16, 4]  = clip(k[b, j, h*D + d], -64, 64)            K^T per head, packed
    acc1[b, h, i, j]            = sum_d q[b, i, h*D + d] * kp[..]              Q read in place (uint8)
    p[b, h, i, j]               = round(exp(s - max_j s) * 255),  s = (acc1 - qz * sum_d k) * c + mask
    vp[b, h, d/16, j/4, 16, 4]  = clip(v[b, j, h*D + d], -64, 64)            V per head, packed
    acc2[b, h, i, d]            = sum_j p[b, h, i, j] * vp[..]
    y[b, i, h*D + d]            = quantize(float32(acc2) * (vs / float32(sum_j p)))

The sums are exact int32 (|k|, |v| <= 64, so vpmaddubsw's int16 pair sums fit), as the op's
numpy reference computes them.
"""

from __future__ import annotations

import numpy as np

from edlc.errors import LoweringError
from edlc.ir.graph import Node
from edlc.lower import LowerContext, register_lowering


def _scalar(node: Node, i: int, what: str, default=None):
    v = node.inputs[i] if i < len(node.inputs) else None
    if v is None:
        return default
    if not v.is_constant or v.const.size != 1:
        raise LoweringError(f"node '{node.name}' (qattention): {what} must be a constant scalar")
    return np.asarray(v.const).reshape(())


# 255 * 2^f on [-1/2, 1/2], degree 5 (relative error 2.4e-7 evaluated in float32)
EXP2_255 = tuple(255.0 * c for c in (1.0000001192092896, 0.6931469440460205, 0.24022120237350464,
                                     0.05550713092088699, 0.00967550277709961, 0.0013276358367875218))


def scaled_exp(x):
    """255 * exp(x) for x <= 0 (the scores less their row max), in float32: 2^n * p(f) with
    t = x log2(e) = n + f, |f| <= 1/2. Within 2e-4 of 255 e^x (what P rounds), without the
    general form's range tests (edlc.schedules.fastmath): x is never positive, and below -87
    the result rounds to 0 anyway."""
    from tvm import tirx

    f32 = "float32"
    t = tirx.max(x, tirx.const(-87.0, f32)) * tirx.const(1.4426950408889634, f32)
    n = tirx.round(t)
    f = t - n
    y = tirx.const(EXP2_255[-1], f32)
    for c in EXP2_255[-2::-1]:
        y = y * f + tirx.const(c, f32)
    return y * tirx.reinterpret(f32, (n.astype("int32") + tirx.const(127, "int32")) << 23)


ROWS = {"avx2": 4}  # query rows per register tile (two accumulators of 8 lanes each per row)


def qattention_te(q, k, v, mask, heads: int, q_zp: int, score_scale: float, v_scale: float,
                  out_scale: float | None, out_zp, out_dtype: str):
    """TE: the whole attention (see the module docstring); `mask` may be None. The row max of
    the scores and the row sum of P are taken over 8 interleaved partial results first (where
    the keys are a multiple of 8), so both vectorize along the row."""
    from tvm import te, tirx

    from edlc.lower.int8_packed import LANES, QUAD
    from edlc.passes.quantize.attention import KV_QMAX, P_LEVELS

    batch, rows, hidden = (int(d) for d in q.shape)
    keys = int(k.shape[1])
    size = hidden // heads
    kb, d4 = -(-keys // LANES), -(-size // QUAD)
    db, j4 = -(-size // LANES), -(-keys // QUAD)
    lo, hi = tirx.const(-KV_QMAX, "int8"), tirx.const(KV_QMAX, "int8")
    f32 = "float32"

    def clipped(x, b, j, h, d):
        return tirx.max(tirx.min(x[b, j, h * size + d], hi), lo)

    def packed(x, b, h, j, d, j_ext, d_ext):
        """x clipped, zero past the keys or the head (the packed blocks are whole)."""
        inside = [c for c in ((j < keys) if j_ext != keys else None, (d < size) if d_ext != size else None)
                  if c is not None]
        if not inside:
            return clipped(x, b, j, h, d)
        val = clipped(x, b, tirx.min(j, keys - 1), h, tirx.min(d, size - 1))
        return tirx.if_then_else(tirx.all(*inside), val, tirx.const(0, "int8"))

    kp = te.compute((batch, heads, kb, d4, LANES, QUAD),
                    lambda b, h, jo, do, jl, di: packed(k, b, h, jo * LANES + jl, do * QUAD + di, kb * LANES, d4 * QUAD),
                    name="k_pack")
    rd4, rdi = te.reduce_axis((0, d4), "rd"), te.reduce_axis((0, QUAD), "rdi")
    if size % QUAD == 0:
        def q_at(b, i, h, dq, di):
            return q[b, i, h * size + dq * QUAD + di]
    else:  # the last quad runs past the head: K is zero there, any in-bounds Q value does
        def q_at(b, i, h, dq, di):
            return q[b, i, h * size + tirx.min(dq * QUAD + di, size - 1)]
    acc1 = te.compute((batch, heads, rows, keys),
                      lambda b, h, i, j: te.sum(q_at(b, i, h, rd4, rdi).astype("int32")
                                                * kp[b, h, j // LANES, rd4, j % LANES, rdi].astype("int32"),
                                                axis=[rd4, rdi]),
                      name="qk_acc")
    c = tirx.const(float(score_scale), f32)
    if q_zp:  # sum((q - zq) k) = sum(q k) - zq sum(k): zq sum(k) as a product by a quad of zq
        zq4 = te.compute((QUAD,), lambda i: tirx.const(q_zp, "uint8"), name="zq_quad")
        rk4, rki = te.reduce_axis((0, d4), "rk"), te.reduce_axis((0, QUAD), "rki")
        ksum = te.compute((batch, heads, keys),
                          lambda b, h, j: te.sum(zq4[rki].astype("int32")
                                                 * kp[b, h, j // LANES, rk4, j % LANES, rki].astype("int32"),
                                                 axis=[rk4, rki]),
                          name="k_sum")

        def centered(b, h, i, j):
            return acc1[b, h, i, j] - ksum[b, h, j]
    else:
        def centered(b, h, i, j):
            return acc1[b, h, i, j]
    mshape = [int(d) for d in mask.shape] if mask is not None else []

    def score(b, h, i, j):
        s = centered(b, h, i, j).astype(f32) * c
        if mask is None:
            return s
        idx = [b, h, i, j][4 - len(mshape):]
        return s + mask[tuple(0 if n == 1 else x for n, x in zip(mshape, idx))]

    sc = te.compute((batch, heads, rows, keys), score, name="score")
    split = keys % 8 == 0  # partial max / sum over 8 interleaved lanes

    def row_reduce(x, op, dtype, name):
        if split:
            r = te.reduce_axis((0, keys // 8), f"{name}_r")
            part = te.compute((batch, heads, rows, 8),
                              lambda b, h, i, lane: op(x(b, h, i, r * 8 + lane), axis=r), name=f"{name}8")
            r8 = te.reduce_axis((0, 8), f"{name}_r8")
            return te.compute((batch, heads, rows), lambda b, h, i: op(part[b, h, i, r8], axis=r8), name=name)
        r = te.reduce_axis((0, keys), f"{name}_r")
        return te.compute((batch, heads, rows), lambda b, h, i: op(x(b, h, i, r), axis=r), name=name)

    smax = row_reduce(lambda b, h, i, j: sc[b, h, i, j], te.max, f32, "s_max")
    levels = tirx.const(float(P_LEVELS), f32)

    def prob(b, h, i, j):
        x = sc[b, h, i, tirx.min(j, keys - 1) if j4 * QUAD != keys else j] - smax[b, h, i]
        pq = tirx.min(tirx.round(scaled_exp(x)), levels).astype("uint8")
        return tirx.if_then_else(j < keys, pq, tirx.const(0, "uint8")) if j4 * QUAD != keys else pq

    p = te.compute((batch, heads, rows, j4 * QUAD), prob, name="p_quant")
    psum = row_reduce(lambda b, h, i, j: p[b, h, i, j].astype("int32"), te.sum, "int32", "p_sum")
    vp = te.compute((batch, heads, db, j4, LANES, QUAD),
                    lambda b, h, do, jo, dl, ji: packed(v, b, h, jo * QUAD + ji, do * LANES + dl, j4 * QUAD, db * LANES),
                    name="v_pack")
    rj4, rji = te.reduce_axis((0, j4), "rj4"), te.reduce_axis((0, QUAD), "rji")
    acc2 = te.compute((batch, heads, rows, size),
                      lambda b, h, i, d: te.sum(p[b, h, i, rj4 * QUAD + rji].astype("int32")
                                                * vp[b, h, d // LANES, rj4, d % LANES, rji].astype("int32"),
                                                axis=[rj4, rji]),
                      name="pv_acc")
    vs = tirx.const(float(v_scale), f32)

    def out(b, i, x):
        h, d = x // size, x % size
        real = acc2[b, h, i, d].astype(f32) * (vs / psum[b, h, i].astype(f32))
        if out_scale is None:
            return real
        qlo, qhi = (0.0, 255.0) if out_dtype == "uint8" else (-128.0, 127.0)
        y = tirx.round(real / tirx.const(float(out_scale), f32)) + tirx.const(float(out_zp), f32)
        return tirx.max(tirx.min(y, tirx.const(qhi, f32)), tirx.const(qlo, f32)).astype(out_dtype)

    return te.compute((batch, rows, hidden), out, name="attention_out")


def schedule(func, isa, cores: int, rows_per_tile: int, heads: int):
    """The kernel's loop nest (x86 quads): K and V packed per head first; then per (batch,
    head, tile of query rows), in parallel, Q.K^T a tile of 16 keys at a time in registers,
    the scores, their row max, P and its row sum, and P.V a tile of 16 head features at a time
    in registers, written through the output epilogue. A tile's intermediates stay in L1."""
    from tvm import s_tir

    from edlc.schedules import int8

    sch = s_tir.Schedule(func)
    names = {sch.get(rv).name_hint for rv in sch.get_child_blocks(sch.get_sblock("root"))}

    def block(name):
        return sch.get_sblock(name) if name in names else None

    for name in ("k_pack", "v_pack"):  # per head (small: 2 x 8 KB a head for BERT's)
        b = sch.get_sblock(name)
        loops = sch.get_loops(b)
        par = sch.fuse(*loops[:2])
        if cores > 1:
            sch.parallel(par)
    ksum = block("k_sum")
    if ksum is not None:  # 16 keys a time on the quad intrinsic, after K's pack, per head
        kb_, kh_, kj, kr, kri = sch.get_loops(ksum)
        kjo, kji = sch.split(kj, [None, isa.lanes])
        sch.reorder(kjo, kr, kji, kri)
        kpar = sch.fuse(kb_, kh_)
        if cores > 1:
            sch.parallel(kpar)
        kwb = sch.cache_write(ksum, 0, "local")
        sch.reverse_compute_at(kwb, kjo)
        kinit = sch.decompose_reduction(ksum, kr)
        sch.vectorize(sch.get_loops(kinit)[-1])
    out = sch.get_sblock("attention_out")
    b_, i_, x_ = sch.get_loops(out)
    h_, d_ = sch.split(x_, [heads, None])
    io, ii = sch.split(i_, [None, rows_per_tile])
    do, di = sch.split(d_, [None, isa.lanes])
    sch.reorder(b_, h_, io, do, ii, di)
    tile = int8.parallel_tasks(sch, [b_, h_, io], cores)  # a few tasks, each a serial loop of tiles
    sch.vectorize(di)
    a2 = sch.get_sblock("pv_acc")
    sch.compute_at(a2, do)
    ri, d2, rj4, rji = sch.get_loops(a2)[-4:]
    sch.reorder(rj4, ri, d2, rji)
    sch.set_scope(a2, 0, "local")
    init2 = sch.decompose_reduction(a2, rj4)
    sch.vectorize(sch.get_loops(init2)[-1])
    sch.unroll(ri)

    # a tile's buffers are local to its task (allocated once a task: int8.parallel_tasks)
    def row_reduction(name: str) -> None:
        sch.compute_at(block(name), tile)
        sch.set_scope(block(name), 0, "local")
        part = block(f"{name}8")
        if part is not None:
            sch.compute_at(part, tile)
            sch.set_scope(part, 0, "local")
            pi, lane, r = sch.get_loops(part)[-3:]
            sch.reorder(pi, r, lane)
            sch.vectorize(lane)
            sch.decompose_reduction(part, r)

    row_reduction("p_sum")
    p = sch.get_sblock("p_quant")
    sch.compute_at(p, tile)
    sch.set_scope(p, 0, "local")
    pj = sch.get_loops(p)[-1]
    if int(sch.get(pj).extent) % 8 == 0:
        _, pv = sch.split(pj, [None, 8])
        sch.vectorize(pv)
    row_reduction("s_max")
    sc = sch.get_sblock("score")
    sch.compute_at(sc, tile)
    sj = sch.get_loops(sc)[-1]
    if int(sch.get(sj).extent) % 8 == 0:
        _, sv = sch.split(sj, [None, 8])
        sch.vectorize(sv)
    a1 = sch.get_sblock("qk_acc")
    sch.compute_at(a1, tile)
    i1, j1, rd, rdi = sch.get_loops(a1)[-4:]
    jo, ji = sch.split(j1, [None, isa.lanes])
    sch.reorder(jo, rd, i1, ji, rdi)
    wb = sch.cache_write(a1, 0, "local")
    sch.reverse_compute_at(wb, jo)
    sch.vectorize(sch.get_loops(wb)[-1])
    init1 = sch.decompose_reduction(a1, rd)
    sch.vectorize(sch.get_loops(init1)[-1])
    sch.unroll(i1)
    if ksum is not None:
        sch.tensorize(kji, int8.intrinsic(isa))
    sch.tensorize(ji, int8.intrinsic(isa))
    sch.tensorize(d2, int8.intrinsic(isa, "local"))  # P is a local buffer
    return sch.mod["main"]


def _quad_isa(ctx: LowerContext):
    """The x86 uint8 x int8 instruction for 16-lane blocks (AVX2 `vpmaddubsw` pairs of
    registers, AVX-512 VNNI `vpdpbusd`), and the CPU's cores; None elsewhere."""
    from dataclasses import replace

    from edlc.lower.int8_packed import LANES
    from edlc.schedules import int8
    from edlc.schedules.analysis import cpu_of

    target = getattr(ctx, "target", None)
    if target is None or target.tvm.get("kind") != "llvm" or target.mcu is not None:
        return None
    cpu = cpu_of(target.tvm_target())
    if cpu is None:
        return None
    isa = int8.for_operand(int8.isa_of(lambda f: f in cpu.features), "uint8")
    if isa is None or isa.kind not in ("avx2", "vnni") or not isa.unsigned:
        return None
    return replace(isa, lanes=LANES), cpu.cores


@register_lowering("qattention", "edlc")
def qattention(ctx: LowerContext, node: Node, inputs: list):
    from edlc.passes.quantize.attention import (
        K_ZP,
        MASK,
        OUT_SCALE,
        OUT_ZP,
        Q_SCALE,
        Q_ZP,
        V_SCALE,
        V_ZP,
        K,
        Q,
        V,
        score_scale,
    )

    types = [node.inputs[i].type for i in (Q, K, V)]
    if any(t is None or not t.is_static or t.rank != 3 for t in types):
        raise LoweringError(f"node '{node.name}' (qattention): Q, K and V must be static [B, S, H*D] tensors")
    if [t.dtype for t in types] != ["uint8", "int8", "int8"]:
        raise LoweringError(f"node '{node.name}' (qattention): Q must be uint8, K and V int8")
    if any(int(_scalar(node, i, "zero point", 0)) for i in (K_ZP, V_ZP)):
        raise LoweringError(f"node '{node.name}' (qattention): K and V must have zero point 0")
    heads = int(node.attrs["heads"])
    q_zp = int(_scalar(node, Q_ZP, "q zero point", 0))
    c = score_scale(_scalar(node, Q_SCALE, "q scale"), _scalar(node, K + 1, "k scale"), node.attrs["scale"])
    v_scale = np.float32(_scalar(node, V_SCALE, "v scale"))
    out_scale = _scalar(node, OUT_SCALE, "y scale")
    out_zp = _scalar(node, OUT_ZP, "y zero point", np.array(0, np.uint8))
    out_dtype = node.outputs[0].type.dtype
    mask = inputs[MASK] if len(inputs) > MASK else None
    args = [inputs[Q], inputs[K], inputs[V]] + ([mask] if mask is not None else [])

    def te_fn(q, k, v, *m):
        return qattention_te(q, k, v, m[0] if m else None, heads, q_zp, float(c), float(v_scale),
                             None if out_scale is None else float(np.float32(out_scale)),
                             None if out_scale is None else int(out_zp), out_dtype)

    found = _quad_isa(ctx)
    shape = [int(d) for d in node.inputs[Q].type.shape]
    size = shape[2] // heads
    rows = ROWS.get(found[0].kind, 8) if found is not None else 0
    if found is None or shape[1] % rows or size % 16 or int(node.inputs[K].type.shape[1]) % 16:
        return ctx.bb.emit_te(te_fn, *args, primfunc_name_hint="qattention")
    from tvm import relax, te

    holders = [te.placeholder([int(d) for d in a.ty.shape.values], a.ty.dtype, name=n)
               for a, n in zip(args, ("q", "k", "v", "mask"))]
    func = schedule(te.create_prim_func([*holders, te_fn(*holders)]), found[0], found[1], rows, heads)
    func = func.with_attr("tirx.is_scheduled", True).without_attr("global_symbol")
    gv = ctx.bb.add_func(func, ctx.fresh(f"qattention_{node.name}"))
    return ctx.emit(relax.call_tir(gv, args, relax.TensorType(shape, out_dtype)))
