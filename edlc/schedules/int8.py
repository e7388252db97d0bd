"""Schedule for the packed int8 accumulators (edlc.lower.int8_packed): one x86 multiply-add
per (16 or 8 output channels) x (2 or 4 reduction steps) block.

    parallel(outer spatial, output-channel tile)
      i-tile                              <- requantization epilogue here
        reduction loops (c/depth, kh, kw / k/depth)
          i in Xb (unrolled)              <- Xb (x T/8) int32 accumulator registers
            [T channels x depth] tensorized

int16 pairs (depth 2): the activation pair, one int32, broadcast to every lane, the weight
block sign-extended to int16; `vpmaddwd` + `vpaddd`, or VNNI's `vpdpwssd`. uint8 x int8 quads
(depth 4, the form x86 gets for weights whose pairs fit int16): the activation quad broadcast,
`vpmaddubsw`, `vpmaddwd` by ones, `vpaddd` (three instructions for 32 products where pairs need
four for 16), or VNNI's `vpdpbusd`. On AVX2 a quad tile is the whole 16-channel block (two
registers per row, each broadcast feeding two multiply-adds) when at least 3 rows fit in
registers, except for stride-1 windows with 8 rows, whose neighbouring rows share broadcasts
already. Exact int32 sums either way, as the IR reference computes them. Twin quads (AVX2
matmuls whose weights the quantizer kept in the "twins" range: edlc.lower.int8_packed.
matmul_acc_twins) take two quads per step: two `vpmaddubsw` added in int16 (`vpaddw`) before
one `vpmaddwd` by ones, three multiplies for 64 products where two quads take four.

On aarch64 with the dot-product extension the blocks are 16 x 4 int8 quads (the lowering packs
them so: `edlc.lower.int8_packed.depth_for`): four `sdot`s, each adding four int8 x int8
products into each of four int32 lanes, with the activation quad broadcast. Without dotprod
(cortex-a72, cortex-a53) the pairs stay plain loops, which LLVM vectorizes as it can.
A block this rule does not recognize (or a target without AVX2 or dotprod) is left to the others.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from functools import cache

from tvm import s_tir, tirx

from edlc.schedules.analysis import CPU, Load, divisors_desc, has_if_then_else, vars_in
from edlc.schedules.contraction import (
    Contraction,
    _extent,
    _j_innermost,
    _strip_cast,
    place_epilogue,
)

PAIR = 2
QUAD = 4
EPILOGUE_BLOCK_BYTES = 16384  # int32 accumulators a matmul keeps for one epilogue pass
X86_KINDS = ("avx2", "avx512", "vnni")


@dataclass(frozen=True)
class Isa:
    """The instruction a T x depth block maps onto."""

    lanes: int  # int32 lanes (output channels) of one tensorized block
    kind: str  # "vnni" (vpdpwssd), "avx512" or "avx2" (vpmaddwd + vpaddd), "sdot" (aarch64)
    registers: int
    depth: int = PAIR  # reduction steps per int32 lane: int16 pairs, or int8 quads for sdot
    unsigned: bool = False  # x86 quads: a uint8 activation x int8 weights (vpmaddubsw, vpdpbusd)
    twin: bool = False  # AVX2 quads: two quads' int16 sums added before widening (u8_twins_fit)

    @property
    def operand(self) -> str:
        """The packed activation's element type."""
        return "int16" if self.depth == PAIR else "uint8" if self.unsigned else "int8"


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


def for_operand(isa: Isa | None, dtype: str) -> Isa | None:
    """The instruction for a packed block whose activation has type `dtype`: `isa` itself, or on
    x86 its uint8 x int8 quad form (edlc.lower.int8_packed.x86_quads)."""
    if isa is None or isa.operand == dtype:
        return isa
    if dtype == "uint8" and isa.kind in X86_KINDS and isa.depth == PAIR:
        return Isa(isa.lanes, isa.kind, isa.registers, QUAD, True)
    return None


def _description(lanes: int, depth: int, operand: str, a_scope: str = "global"):
    """What every block intrinsic computes: C[lanes] += sum_k A[k] * B[lanes, k] (k < depth),
    A of type `operand` broadcast across the lanes, B int8, C int32 (exact). A lies in
    `a_scope` ("local": a buffer of the kernel's own, as P in edlc.lower.int8_attention)."""
    from tvm.script import tirx as T

    @T.prim_func(s_tir=True)
    def desc(a: T.handle, b: T.handle, c: T.handle) -> None:
        A = T.match_buffer(a, (depth,), operand, offset_factor=1, scope=a_scope)
        B = T.match_buffer(b, (lanes, depth), "int8", offset_factor=1)
        C = T.match_buffer(c, (lanes,), "int32", offset_factor=1, scope="local")
        with T.sblock("root"):
            T.reads(C[0:lanes], A[0:depth], B[0:lanes, 0:depth])
            T.writes(C[0:lanes])
            for i, k in T.grid(lanes, depth):
                with T.sblock("update"):
                    vi, vk = T.axis.remap("SR", [i, k])
                    C[vi] = C[vi] + T.Cast("int32", A[vk]) * T.Cast("int32", B[vi, vk])

    return desc


@cache
def intrinsic(isa: Isa, a_scope: str = "global") -> str:
    """Register (once) and name the tensor intrinsic C[T] += sum_k A[k] * B[T, k] (k < depth);
    A in `a_scope` (the uint8 quad forms only)."""
    from tvm.script import tirx as T

    if isa.kind == "sdot":
        return _sdot_intrinsic(isa)
    if isa.twin:
        return _u8_twin_intrinsic(isa)
    if isa.unsigned:
        return _u8_intrinsic(isa, a_scope)
    lanes = isa.lanes
    name = f"edlc_i16x2_{isa.kind}_{lanes}"

    desc = _description(lanes, 2, "int16")

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


def _u8_intrinsic(isa: Isa, a_scope: str = "global") -> str:
    """C[T] += sum_k A[k] * B[T, k] (k < 4; A uint8, B int8) on x86: the activation quad A
    broadcast to every int32 lane; `vpmaddubsw` (uint8 x int8 pairs summed into int16, exact
    while the pairs fit: edlc.lower.int8_packed.u8_pairs_fit) then `vpmaddwd` by ones (int16
    pairs summed into int32) and `vpaddd`; VNNI's `vpdpbusd` does all three, in int32."""
    from tvm.script import tirx as T

    lanes, depth = isa.lanes, isa.depth
    name = f"edlc_u8x4_{isa.kind}_{lanes}" + ("" if a_scope == "global" else f"_{a_scope}")
    wide = isa.kind != "avx2"  # 512-bit registers
    vec = 16 if wide else 8  # int32 lanes of one register; a 16-lane AVX2 block takes two
    nbytes = vec * depth
    madd_ub = "llvm.x86.avx512.pmaddubs.w.512" if wide else "llvm.x86.avx2.pmadd.ub.sw"
    madd_w = "llvm.x86.avx512.pmaddw.d.512" if wide else "llvm.x86.avx2.pmadd.wd"
    dpbusd = isa.kind == "vnni"

    desc = _description(lanes, depth, "uint8", a_scope)

    @T.prim_func(s_tir=True)
    def impl(a: T.handle, b: T.handle, c: T.handle) -> None:
        A = T.match_buffer(a, (depth,), "uint8", offset_factor=1, scope=a_scope)
        B = T.match_buffer(b, (lanes, depth), "int8", offset_factor=1)
        C = T.match_buffer(c, (lanes,), "int32", offset_factor=1, scope="local")
        with T.sblock("root"):
            T.reads(C[0:lanes], A[0:depth], B[0:lanes, 0:depth])
            T.writes(C[0:lanes])
            quad = T.reinterpret(T.broadcast(T.reinterpret(A.vload([0], f"uint8x{depth}"), dtype="int32"),
                                             vec), dtype=f"uint8x{nbytes}")
            for h in T.unroll(lanes // vec):
                if dpbusd:
                    C[T.ramp(h * vec, 1, vec)] = T.call_llvm_pure_intrin(
                        T.llvm_lookup_intrinsic_id("llvm.x86.avx512.vpdpbusd.512"),
                        C.vload([h * vec], f"int32x{vec}"), quad, B.vload([h * vec, 0], f"int8x{nbytes}"),
                        dtype=f"int32x{vec}")
                else:
                    C[T.ramp(h * vec, 1, vec)] = C.vload([h * vec], f"int32x{vec}") + T.call_llvm_pure_intrin(
                        T.llvm_lookup_intrinsic_id(madd_w),
                        T.call_llvm_pure_intrin(T.llvm_lookup_intrinsic_id(madd_ub), quad,
                                                B.vload([h * vec, 0], f"int8x{nbytes}"), dtype=f"int16x{2 * vec}"),
                        T.broadcast(T.int16(1), 2 * vec), dtype=f"int32x{vec}")

    s_tir.TensorIntrin.register(name, desc, impl, override=True)
    return name


def _u8_twin_intrinsic(isa: Isa) -> str:
    """C[T] += sum_{q, k} A[4q + k] * B[q, T, k] (q < 2, k < 4; A uint8, B int8) on x86
    without VNNI: two activation quads broadcast, `vpmaddubsw` of each with its weight block,
    the two int16 results added (`vpaddw`), then one `vpmaddwd` by ones and `vpaddd`: five
    instructions, three of them multiplies, for 64 products where two single quads take six,
    four of them multiplies. Exact while each int16 lane's four products fit:
    255 * (|w0| + |w1| + |w2| + |w3|) <= 32767 (edlc.lower.int8_packed.u8_twins_fit)."""
    from tvm.script import tirx as T

    lanes = isa.lanes
    name = f"edlc_u8x2x4_{isa.kind}_{lanes}"
    wide = isa.kind != "avx2"
    vec = 16 if wide else 8
    nbytes = vec * QUAD
    madd_ub = "llvm.x86.avx512.pmaddubs.w.512" if wide else "llvm.x86.avx2.pmadd.ub.sw"
    madd_w = "llvm.x86.avx512.pmaddw.d.512" if wide else "llvm.x86.avx2.pmadd.wd"

    @T.prim_func(s_tir=True)
    def desc(a: T.handle, b: T.handle, c: T.handle) -> None:
        A = T.match_buffer(a, (2 * QUAD,), "uint8", offset_factor=1)
        B = T.match_buffer(b, (2, lanes, QUAD), "int8", offset_factor=1)
        C = T.match_buffer(c, (lanes,), "int32", offset_factor=1, scope="local")
        with T.sblock("root"):
            T.reads(C[0:lanes], A[0:2 * QUAD], B[0:2, 0:lanes, 0:QUAD])
            T.writes(C[0:lanes])
            for i, q, k in T.grid(lanes, 2, QUAD):
                with T.sblock("update"):
                    vi, vq, vk = T.axis.remap("SRR", [i, q, k])
                    C[vi] = C[vi] + T.Cast("int32", A[vq * QUAD + vk]) * T.Cast("int32", B[vq, vi, vk])

    @T.prim_func(s_tir=True)
    def impl(a: T.handle, b: T.handle, c: T.handle) -> None:
        A = T.match_buffer(a, (2 * QUAD,), "uint8", offset_factor=1)
        B = T.match_buffer(b, (2, lanes, QUAD), "int8", offset_factor=1)
        C = T.match_buffer(c, (lanes,), "int32", offset_factor=1, scope="local")
        with T.sblock("root"):
            T.reads(C[0:lanes], A[0:2 * QUAD], B[0:2, 0:lanes, 0:QUAD])
            T.writes(C[0:lanes])
            q0 = T.reinterpret(T.broadcast(T.reinterpret(A.vload([0], "uint8x4"), dtype="int32"), vec),
                               dtype=f"uint8x{nbytes}")
            q1 = T.reinterpret(T.broadcast(T.reinterpret(A.vload([QUAD], "uint8x4"), dtype="int32"), vec),
                               dtype=f"uint8x{nbytes}")
            for h in T.unroll(lanes // vec):
                C[T.ramp(h * vec, 1, vec)] = C.vload([h * vec], f"int32x{vec}") + T.call_llvm_pure_intrin(
                    T.llvm_lookup_intrinsic_id(madd_w),
                    T.call_llvm_pure_intrin(T.llvm_lookup_intrinsic_id(madd_ub), q0,
                                            B.vload([0, h * vec, 0], f"int8x{nbytes}"), dtype=f"int16x{2 * vec}")
                    + T.call_llvm_pure_intrin(T.llvm_lookup_intrinsic_id(madd_ub), q1,
                                              B.vload([1, h * vec, 0], f"int8x{nbytes}"), dtype=f"int16x{2 * vec}"),
                    T.broadcast(T.int16(1), 2 * vec), dtype=f"int32x{vec}")

    s_tir.TensorIntrin.register(name, desc, impl, override=True)
    return name


def _sdot_intrinsic(isa: Isa) -> str:
    """C[16] += sum_k A[k] * B[16, k] (k < 4, int8 -> int32) as four `sdot`s (LLVM's
    llvm.aarch64.neon.sdot), the activation quad A broadcast to the four lanes of each."""
    from tvm.script import tirx as T

    lanes, depth = isa.lanes, isa.depth
    name = f"edlc_i8x4_sdot_{lanes}"
    sdot = "llvm.aarch64.neon.sdot.v4i32.v16i8"

    desc = _description(lanes, depth, "int8")

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
    isa: Isa | None = None  # the instruction, where it differs from the target's pair one
    twin: str | None = None  # the reduction var (extent 2) over a twin's two quads


def _is_pair_load(load, dtype: str) -> bool:
    return isinstance(load, Load) and str(load.source.dtype) == dtype


def _contiguous(ix, var: str) -> bool:
    """Whether an index is `var`, or `e + var` with `var` nowhere in e: the activation's
    `depth` elements are neighbours (its last dim holds them, or a row of quads of columns)."""
    if isinstance(ix, tirx.Var):
        return ix.name == var
    return isinstance(ix, tirx.Add) and isinstance(ix.b, tirx.Var) and ix.b.name == var and \
        var not in {v.name for v in vars_in(ix.a)}


def _sliding(act: Load, i: str | None, reduce: set) -> bool:
    """Whether the activation is read at `i + r` (stride 1, r a reduction var): a sliding
    window along the register axis."""
    if i is None:
        return False
    for ix in act.indices:
        names = {v.name for v in vars_in(ix)}
        if i in names:
            return isinstance(ix, tirx.Add) and names - {i} <= reduce and any(
                isinstance(t, tirx.Var) and t.name == i for t in (ix.a, ix.b))
    return False


def plan(c: Contraction, isa: Isa) -> PackedPlan | None:
    """The plan for a packed accumulator, or None if `c` is not one."""
    info = c.info
    if str(info.store.buffer.dtype) != "int32" or len(c.factors) != 2:
        return None
    loads = [_strip_cast(f) for f in c.factors]
    # the weight is read at [.., o % 16, k]; for quads the activation is int8 too
    weight = next((ld for ld in loads if _is_pair_load(ld, "int8") and len(ld.indices) >= 2
                   and isinstance(ld.indices[-2], tirx.FloorMod)), None)
    act = next((ld for ld in loads if ld is not weight and isinstance(ld, Load)), None)
    isa = for_operand(isa, str(act.source.dtype)) if act is not None else None
    if weight is None or isa is None:
        return None
    shape = [int(d) for d in weight.source.shape]
    if shape[-2:] != [16, isa.depth]:
        return None
    ext = {v.name: e for v, e in zip(info.vars, info.extents)}
    last = weight.indices[-1]
    if not isinstance(last, tirx.Var) or ext.get(last.name) != isa.depth or last.name not in \
            {v.name for v in info.reduce} or not _contiguous(act.indices[-1], last.name):
        return None
    lane = weight.indices[-2]
    if not isinstance(lane, tirx.FloorMod):
        return None
    twin = _twin_var(weight, ext, {v.name for v in info.reduce}, shape)
    if twin is not None and (not isa.unsigned or isa.kind != "avx2"):
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
    if isa.unsigned and isa.kind == "avx2":
        # uint8 quads on AVX2: the whole 16-channel block per row (two registers), so that each
        # broadcast activation quad feeds two multiply-adds, where enough rows remain to hide
        # their latency (up to 6 rows x 2 accumulators, plus the broadcast, a temporary and the
        # ones). A stride-1 window already shares its broadcasts between neighbouring rows (LLVM
        # reuses x + rx across rx), so there 8 rows of one register do as well or better.
        xb2 = divisors_desc(ext[i], (isa.registers - 4) // 2)[0] if i is not None else 1
        if (xb2 >= 3 or i is None) and not (xb >= 8 and _sliding(act, i, {v.name for v in info.reduce})):
            isa, xb = replace(isa, lanes=2 * isa.lanes), xb2
    if twin is not None:
        isa = replace(isa, twin=True)
    return PackedPlan(j, i if xb > 1 else None, last.name, xb, isa, twin)


def _twin_var(weight: Load, ext: dict, reduce: set, shape: list) -> str | None:
    """The reduction var over the two quads of a twin-packed weight ([.., 2, 16, 4],
    edlc.lower.int8_packed.pack_matmul_twins), or None for a plain one."""
    if len(shape) != 5 or shape[-3] != 2:
        return None
    q = weight.indices[-3]
    if isinstance(q, tirx.Var) and q.name in reduce and ext.get(q.name) == 2:
        return q.name
    return None


def apply(sch: s_tir.Schedule, c: Contraction, p: PackedPlan, isa: Isa, cpu: CPU) -> None:
    """Schedule the packed accumulator in place (raises where a step does not apply; the
    caller works on a copy)."""
    isa = p.isa or isa
    info = c.info
    rv = info.rv
    loop = {v.name: lp for v, lp in zip(info.vars, info.loops)}
    jo, ji = sch.split(loop[p.j], [None, isa.lanes])
    io = ii = None
    if p.i is not None:
        io, ii = sch.split(loop[p.i], [None, p.Xb])
    outer = [jo if v == p.j else loop[v] for v in c.out_vars if v != p.i]
    reduce = [loop[v.name] for v in info.reduce if v.name not in (p.pair, p.twin)]
    sch.reorder(*outer, *([io] if io is not None else []), *reduce,
                *([ii] if ii is not None else []), ji, *([loop[p.twin]] if p.twin else []), loop[p.pair])
    n_par = 1
    while n_par < len(outer) and math.prod(_extent(sch, lp) for lp in outer[:n_par]) < 4 * cpu.cores:
        n_par += 1
    rest = outer[n_par:]
    if cpu.cores > 1 and math.prod(_extent(sch, lp) for lp in outer[:n_par]) > 1:
        par = parallel_tasks(sch, outer[:n_par], cpu.cores)
    else:
        par = sch.fuse(*outer[:n_par]) if n_par > 1 else outer[0]
    tile = io if io is not None else (rest[-1] if rest else par)
    at = tile
    if io is not None and not rest and _extent(sch, io) * p.Xb * isa.lanes * 4 <= EPILOGUE_BLOCK_BYTES:
        # the epilogue once per block of output channels, over all its rows: a loop that keeps
        # its constants and the channels' scales in registers, where per register tile it
        # reloaded them (the int32 block stays in L1)
        at = par
    consumers = sch.get_consumers(rv)
    epilogue = place_epilogue(sch, rv, at, consumers[0] if len(consumers) == 1 else None)
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


def parallel_tasks(sch: s_tir.Schedule, loops: list, cores: int):
    """Run the (adjacent, outermost first) `loops` in parallel as a few tasks, cores to twice
    as many, each a serial loop over its share: the last loop is split into (tasks part,
    serial part) and the tasks part fused with the loops before it. Returns the serial loop,
    or, where no such split exists, the fused loop made parallel. TVM allocates a tile's local
    buffers (the accumulator, the broadcast quad) through a workspace call in the body of the
    loop that holds them and hoists that out of serial loops only: a parallel loop of many
    iterations made those calls per iteration. (Splitting the fused loop instead would leave
    bindings tensorize cannot take.)"""
    if cores <= 1:  # one serial loop
        return sch.fuse(*loops) if len(loops) > 1 else loops[0]
    head = math.prod(_extent(sch, lp) for lp in loops[:-1])
    last = _extent(sch, loops[-1])
    d = next((d for d in divisors_desc(last, last) if cores <= head * d <= 2 * cores), None)
    if d is None or d == last:
        par = sch.fuse(*loops) if len(loops) > 1 else loops[0]
        sch.parallel(par)
        return par
    lo, inner = sch.split(loops[-1], [d, None])
    par = sch.fuse(*loops[:-1], lo) if len(loops) > 1 else lo
    sch.parallel(par)
    return inner


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
        block = sch.get(producer)
        inner = block.iter_vars[-1].var.name
        if _extent(sch, loops[-1]) <= QUAD:  # a pair or quad
            sch.unroll(loops[-1])
        elif isinstance(block.body, tirx.BufferStore) and not has_if_then_else(block.body.value, {inner}):
            # channels innermost (NHWC data): the padding test is the same for all of them
            width = next((v for v in (16, 8, 4) if _extent(sch, loops[-1]) % v == 0), None)
            if width is not None:
                _, vi = sch.split(loops[-1], [None, width])
                sch.vectorize(vi)


def tensorize(sch: s_tir.Schedule, name: str, isa: Isa) -> None:
    """Map the (T x depth) inner loops (T x 2 x 4 for twins) of the scheduled accumulator
    `name` onto the instruction.
    Done last: TVM 0.27 cannot copy a schedule once it holds a tensorized block."""
    block = sch.get_sblock(f"{name}_update")
    reads = sch.get(block).reads
    act = [str(r.source.dtype) for r in reads if str(r.source.dtype) not in ("int32", "int8")]
    isa = for_operand(isa, act[0]) if act else isa
    loops = sch.get_loops(block)
    twin = isa.unsigned and any(str(r.source.dtype) == "int8" and len(r.source.shape) == 5
                                and int(r.source.shape[-3]) == 2 for r in reads)  # plan's _twin_var
    at = loops[-3] if twin else loops[-2]
    if isa.unsigned:  # the plan may have taken a block of two registers (plan)
        isa = replace(isa, lanes=int(sch.get(at).extent), twin=twin)
    sch.tensorize(at, intrinsic(isa))


for _isa in (Isa(16, "vnni", 32), Isa(16, "avx512", 32), Isa(8, "avx2", 16), SDOT):
    intrinsic(_isa)
    if _isa.kind in X86_KINDS:
        intrinsic(for_operand(_isa, "uint8"))
        if _isa.kind == "avx2":
            intrinsic(replace(for_operand(_isa, "uint8"), lanes=16))  # registered up front: a tuning record may name any of them
            intrinsic(replace(for_operand(_isa, "uint8"), lanes=16, twin=True))
