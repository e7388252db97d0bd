"""Schedule for the packed int8 accumulators (edlc.lower.int8_packed): one x86 multiply-add
instruction per (16 or 8 output channels) x (2 reduction steps) block.

    parallel(outer spatial, output-channel tile)
      i-tile                              <- requantization epilogue here
        reduction loops (c/2, kh, kw / k/2)
          i in Xb (unrolled)              <- Xb int32 accumulator registers
            [T channels x 2] tensorized   <- vpmaddwd + vpaddd, or VNNI vpdpwssd

The activation operand is one int32 (an int16 pair) broadcast to every lane, the weight block
T x 2 int8 values sign-extended to int16: exact int32 sums, as the IR reference computes them.

On aarch64 with the dot-product extension the blocks are 16 x 4 int8 quads (the lowering packs
them so: `edlc.lower.int8_packed.depth_for`): four `sdot`s, each adding four int8 x int8
products into each of four int32 lanes, with the activation quad broadcast. Without dotprod
(cortex-a72, cortex-a53) the pairs stay plain loops, which LLVM vectorizes as it can.
A block this rule does not recognize (or a target without AVX2 or dotprod) is left to the others.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cache

from tvm import s_tir, tirx

from edlc.schedules.analysis import CPU, Load, divisors_desc, vars_in
from edlc.schedules.contraction import (
    Contraction,
    _extent,
    _j_innermost,
    _strip_cast,
    place_epilogue,
)

PAIR = 2


@dataclass(frozen=True)
class Isa:
    """The instruction a T x depth block maps onto."""

    lanes: int  # int32 lanes (output channels) of one tensorized block
    kind: str  # "vnni" (vpdpwssd), "avx512" or "avx2" (vpmaddwd + vpaddd), "sdot" (aarch64)
    registers: int
    depth: int = PAIR  # reduction steps per int32 lane: int16 pairs, or int8 quads for sdot

    @property
    def operand(self) -> str:
        """The packed activation's element type."""
        return "int16" if self.depth == PAIR else "int8"


SDOT = Isa(16, "sdot", 32, 4)


def isa_of(target_has) -> Isa | None:
    """The instruction for a target, given `target_has(feature) -> bool`."""
    if target_has("dotprod"):  # aarch64 only: x86 has no feature of that name
        return SDOT
    if target_has("avx512vnni") and target_has("avx512bw"):
        return Isa(16, "vnni", 32)
    if target_has("avx512bw"):
        return Isa(16, "avx512", 32)
    if target_has("avx2"):
        return Isa(8, "avx2", 16)
    return None


@cache
def intrinsic(isa: Isa) -> str:
    """Register (once) and name the tensor intrinsic C[T] += sum_k A[k] * B[T, k] (k < depth)."""
    from tvm.script import tirx as T

    if isa.kind == "sdot":
        return _sdot_intrinsic(isa)
    lanes = isa.lanes
    name = f"edlc_i16x2_{isa.kind}_{lanes}"

    @T.prim_func(s_tir=True)
    def desc(a: T.handle, b: T.handle, c: T.handle) -> None:
        A = T.match_buffer(a, (2,), "int16", offset_factor=1)
        B = T.match_buffer(b, (lanes, 2), "int8", offset_factor=1)
        C = T.match_buffer(c, (lanes,), "int32", offset_factor=1, scope="local")
        with T.sblock("root"):
            T.reads(C[0:lanes], A[0:2], B[0:lanes, 0:2])
            T.writes(C[0:lanes])
            for i, k in T.grid(lanes, 2):
                with T.sblock("update"):
                    vi, vk = T.axis.remap("SR", [i, k])
                    C[vi] = C[vi] + T.Cast("int32", A[vk]) * T.Cast("int32", B[vi, vk])

    vector = f"int16x{2 * lanes}"
    fused = isa.kind == "vnni"  # vpdpwssd adds into the accumulator itself
    llvm = {"vnni": "llvm.x86.avx512.vpdpwssd.512", "avx512": "llvm.x86.avx512.pmaddw.d.512",
            "avx2": "llvm.x86.avx2.pmadd.wd"}[isa.kind]

    @T.prim_func(s_tir=True)
    def impl(a: T.handle, b: T.handle, c: T.handle) -> None:
        A = T.match_buffer(a, (2,), "int16", offset_factor=1)
        B = T.match_buffer(b, (lanes, 2), "int8", offset_factor=1)
        C = T.match_buffer(c, (lanes,), "int32", offset_factor=1, scope="local")
        with T.sblock("root"):
            T.reads(C[0:lanes], A[0:2], B[0:lanes, 0:2])
            T.writes(C[0:lanes])
            if fused:
                C[T.ramp(0, 1, lanes)] = T.call_llvm_pure_intrin(
                    T.llvm_lookup_intrinsic_id(llvm), C.vload([0], f"int32x{lanes}"),
                    T.reinterpret(T.broadcast(T.reinterpret(A.vload([0], "int16x2"), dtype="int32"), lanes),
                                  dtype=vector),
                    T.Cast(vector, B.vload([0, 0], f"int8x{2 * lanes}")), dtype=f"int32x{lanes}")
            else:
                C[T.ramp(0, 1, lanes)] = C.vload([0], f"int32x{lanes}") + T.call_llvm_pure_intrin(
                    T.llvm_lookup_intrinsic_id(llvm),
                    T.reinterpret(T.broadcast(T.reinterpret(A.vload([0], "int16x2"), dtype="int32"), lanes),
                                  dtype=vector),
                    T.Cast(vector, B.vload([0, 0], f"int8x{2 * lanes}")), dtype=f"int32x{lanes}")

    s_tir.TensorIntrin.register(name, desc, impl, override=True)
    return name


def _sdot_intrinsic(isa: Isa) -> str:
    """C[16] += sum_k A[k] * B[16, k] (k < 4, int8 -> int32) as four `sdot`s (LLVM's
    llvm.aarch64.neon.sdot), the activation quad A broadcast to the four lanes of each."""
    from tvm.script import tirx as T

    lanes, depth = isa.lanes, isa.depth
    name = f"edlc_i8x4_sdot_{lanes}"
    sdot = "llvm.aarch64.neon.sdot.v4i32.v16i8"

    @T.prim_func(s_tir=True)
    def desc(a: T.handle, b: T.handle, c: T.handle) -> None:
        A = T.match_buffer(a, (depth,), "int8", offset_factor=1)
        B = T.match_buffer(b, (lanes, depth), "int8", offset_factor=1)
        C = T.match_buffer(c, (lanes,), "int32", offset_factor=1, scope="local")
        with T.sblock("root"):
            T.reads(C[0:lanes], A[0:depth], B[0:lanes, 0:depth])
            T.writes(C[0:lanes])
            for i, k in T.grid(lanes, depth):
                with T.sblock("update"):
                    vi, vk = T.axis.remap("SR", [i, k])
                    C[vi] = C[vi] + T.Cast("int32", A[vk]) * T.Cast("int32", B[vi, vk])

    @T.prim_func(s_tir=True)
    def impl(a: T.handle, b: T.handle, c: T.handle) -> None:
        A = T.match_buffer(a, (depth,), "int8", offset_factor=1)
        B = T.match_buffer(b, (lanes, depth), "int8", offset_factor=1)
        C = T.match_buffer(c, (lanes,), "int32", offset_factor=1, scope="local")
        with T.sblock("root"):
            T.reads(C[0:lanes], A[0:depth], B[0:lanes, 0:depth])
            T.writes(C[0:lanes])
            quad = T.reinterpret(T.broadcast(T.reinterpret(A.vload([0], "int8x4"), dtype="int32"), 4),
                                 dtype="int8x16")
            for q in T.unroll(lanes // 4):
                C[T.ramp(q * 4, 1, 4)] = T.call_llvm_pure_intrin(
                    T.llvm_lookup_intrinsic_id(sdot), C.vload([q * 4], "int32x4"), quad,
                    B.vload([q * 4, 0], "int8x16"), dtype="int32x4")

    s_tir.TensorIntrin.register(name, desc, impl, override=True)
    return name


@dataclass
class PackedPlan:
    j: str  # the output-channel var (weight index `j % 16`)
    i: str | None  # the register-blocked var
    pair: str  # the reduction var of extent isa.depth (2 or 4)
    Xb: int


def _is_pair_load(load, dtype: str) -> bool:
    return isinstance(load, Load) and str(load.source.dtype) == dtype


def plan(c: Contraction, isa: Isa) -> PackedPlan | None:
    """The plan for a packed accumulator, or None if `c` is not one."""
    info = c.info
    if str(info.store.buffer.dtype) != "int32" or len(c.factors) != 2:
        return None
    loads = [_strip_cast(f) for f in c.factors]
    # the weight is read at [.., o % 16, k]; for quads the activation is int8 too
    weight = next((ld for ld in loads if _is_pair_load(ld, "int8") and len(ld.indices) >= 2
                   and isinstance(ld.indices[-2], tirx.FloorMod)), None)
    act = next((ld for ld in loads if ld is not weight and _is_pair_load(ld, isa.operand)), None)
    if weight is None or act is None:
        return None
    shape = [int(d) for d in weight.source.shape]
    if shape[-2:] != [16, isa.depth] or int(act.source.shape[-1]) != isa.depth:
        return None
    ext = {v.name: e for v, e in zip(info.vars, info.extents)}
    last = weight.indices[-1]
    if not isinstance(last, tirx.Var) or ext.get(last.name) != isa.depth or last.name not in \
            {v.name for v in info.reduce}:
        return None
    lane = weight.indices[-2]
    if not isinstance(lane, tirx.FloorMod):
        return None
    jv = [v.name for v in vars_in(lane)]
    if len(jv) != 1 or jv[0] not in c.out_vars or ext[jv[0]] % isa.lanes:
        return None
    j = jv[0]
    weight_vars = {v.name for v in vars_in(list(weight.indices))}
    others = [v for v in c.out_vars if v != j and v not in weight_vars and ext[v] > 1]
    i = others[-1] if others else None
    # accumulator rows in registers: one vector per row on x86; four (16 lanes) for sdot,
    # leaving room for the four weight vectors and the broadcast activation
    cap = {"avx2": max(1, isa.registers - 4), "sdot": (isa.registers - 6) // 4}.get(isa.kind, 14)
    xb = divisors_desc(ext[i], cap)[0] if i is not None else 1
    return PackedPlan(j, i if xb > 1 else None, last.name, xb)


def apply(sch: s_tir.Schedule, c: Contraction, p: PackedPlan, isa: Isa, cpu: CPU) -> None:
    """Schedule the packed accumulator in place (raises where a step does not apply; the
    caller works on a copy)."""
    info = c.info
    rv = info.rv
    loop = {v.name: lp for v, lp in zip(info.vars, info.loops)}
    jo, ji = sch.split(loop[p.j], [None, isa.lanes])
    io = ii = None
    if p.i is not None:
        io, ii = sch.split(loop[p.i], [None, p.Xb])
    outer = [jo if v == p.j else loop[v] for v in c.out_vars if v != p.i]
    reduce = [loop[v.name] for v in info.reduce if v.name != p.pair]
    sch.reorder(*outer, *([io] if io is not None else []), *reduce,
                *([ii] if ii is not None else []), ji, loop[p.pair])
    n_par = 1
    while n_par < len(outer) and math.prod(_extent(sch, lp) for lp in outer[:n_par]) < 4 * cpu.cores:
        n_par += 1
    par = sch.fuse(*outer[:n_par]) if n_par > 1 else outer[0]
    rest = outer[n_par:]
    tile = io if io is not None else (rest[-1] if rest else par)
    if cpu.cores > 1 and _extent(sch, par) > 1:
        sch.parallel(par)

    consumers = sch.get_consumers(rv)
    epilogue = place_epilogue(sch, rv, tile, consumers[0] if len(consumers) == 1 else None)
    j_dim = c.out_vars.index(p.j)
    if j_dim != len(c.out_vars) - 1:
        sch.transform_layout(rv, ("write", 0), _j_innermost(len(c.out_vars), j_dim, isa.lanes))
    init = sch.decompose_reduction(rv, reduce[0] if reduce else ji)
    sch.vectorize(sch.get_loops(init)[-1])
    if ii is not None:
        sch.unroll(ii)
    below = sch.get_loops(epilogue)
    if below and 1 < _extent(sch, below[-1]) <= 64:
        sch.vectorize(below[-1])
    _schedule_pack(sch, rv, cpu, isa.operand)
    probe = sch.copy()
    tensorize(probe, info.name, isa)


def _schedule_pack(sch: s_tir.Schedule, rv, cpu: CPU, dtype: str) -> None:
    """The pair- (or quad-) packing copy of the activation: parallel rows, each a plain loop
    over the row (the default elementwise rule would fuse every loop, paying divisions per
    element)."""
    for producer in sch.get_producers(rv):
        if str(sch.get(producer).writes[0].source.dtype) != dtype:
            continue
        loops = sch.get_loops(producer)
        if len(loops) < 3:
            continue
        keep = len(loops) - 2
        while keep > 1 and math.prod(_extent(sch, lp) for lp in loops[:keep - 1]) >= 4 * cpu.cores:
            keep -= 1
        par = sch.fuse(*loops[:keep]) if keep > 1 else loops[0]
        if cpu.cores > 1:
            sch.parallel(par)
        sch.unroll(loops[-1])


def tensorize(sch: s_tir.Schedule, name: str, isa: Isa) -> None:
    """Map the (T x 2) inner loops of the scheduled accumulator `name` onto the instruction.
    Done last: TVM 0.27 cannot copy a schedule once it holds a tensorized block."""
    loops = sch.get_loops(sch.get_sblock(f"{name}_update"))
    sch.tensorize(loops[-2], intrinsic(isa))


for _isa in (Isa(16, "vnni", 32), Isa(16, "avx512", 32), Isa(8, "avx2", 16), SDOT):
    intrinsic(_isa)  # registered up front: a tuning record may name any of them
