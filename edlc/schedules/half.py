"""float16 / bfloat16 contractions summed in float32: operands converted once per tile.

A half-precision conv or matmul sums in float32 (`edlc.lower.precision`), so its update reads
`acc + f32(X[..]) * f32(W[..])`. Scheduled as for float32, every multiply-add converts its
operands where it loads them: a vector of the j-tile (one conversion per vector) and a
broadcast scalar (one conversion per scalar, each used by one or two FMAs). On x86 (F16C) and
on ARM those conversions outnumbered the FMAs: a float16 BERT ran 1.7x and ResNet-18 1.5x
slower than float32 on one Zen 3 core, and on aarch64 ran 1.5x the instructions.

After the contraction rule has scheduled the kernel, each half operand is made float32 once:

- the broadcast operand (the factor not indexed by the vector lanes) is copied, converted,
  into a float32 buffer: the whole operand before the kernel's loops where that fits in
  512 KB (a conv's weights, a strided conv's input: converted once a call), else the slab
  of each tile of rows (a long matmul's activation rows), so that each element is converted
  once, not once per multiply-add;
- an intermediate half buffer the kernel fills itself (the padded input of a conv, a tile
  the contraction rule packs) is stored in float32 where it is made.

Reading such a buffer back, `drop_exact_casts` removes the float32 -> half -> float32 round
trip the schedule primitives leave (exact: the values came from half ones). And where the
convs and matmuls sum in float16 (`accumulate="float16"`, a CPU with float16 vectors),
`cpu_for` gives their kernels twice the lanes.

The weights stay half in memory and in the artifact; only their copy during a call is
float32. ResNet-18 on one Zen 3 core: its convs take 0.85-1.1x the time of float32, the whole
model about the same (it had been 1.5x with the conversions in the inner loops).
"""

from __future__ import annotations

import dataclasses
import math

import tvm_ffi
from tvm import s_tir, tirx

from edlc.schedules.analysis import CPU, HALF_FEATURES, Load, vars_in
from edlc.schedules.contraction import LAYOUT_REWRITE_PREPROC

HALF = ("float16", "bfloat16")
MAX_SLAB_BYTES = 512 * 1024


def _half_factors(value) -> list:
    """Half-precision loads the update reads through a cast to float32."""
    found: list = []

    def visit(e):
        if isinstance(e, tirx.Cast) and str(e.ty) == "float32" and isinstance(e.value, Load) \
                and str(e.value.source.dtype) in HALF:
            found.append(e.value)
        elif isinstance(e, (tirx.Add, tirx.Mul, tirx.Sub)):
            visit(e.a)
            visit(e.b)
        elif isinstance(e, tirx.Cast):
            visit(e.value)

    visit(value)
    return found


def _update_block(sch: s_tir.Schedule, name: str):
    for candidate in (f"{name}_update", name):
        try:
            return sch.get_sblock(candidate)
        except Exception:  # noqa: BLE001  no block of that name
            continue
    return None


def _vectorize(sch: s_tir.Schedule, loops: list, lanes: int) -> None:
    """Vectorize a copy's innermost loops (fused, so that a narrow last dim, a conv's 3 taps,
    still fills vectors) by the widest of 2, 1 vectors that divides them."""
    k = len(loops)
    while k > 1 and math.prod(int(sch.get(lp).extent) for lp in loops[k - 1:]) < 2 * lanes:
        k -= 1
    inner = loops[k - 1:]
    n = math.prod(int(sch.get(lp).extent) for lp in inner)
    for width in (2 * lanes, lanes):
        if n % width == 0:
            fused = sch.fuse(*inner) if len(inner) > 1 else inner[0]
            sch.vectorize(sch.split(fused, [None, width])[1] if n > width else fused)
            return


def widen_half_operands(sch: s_tir.Schedule, name: str, lanes: int) -> s_tir.Schedule | None:
    """A copy of `sch` with the half operands of the scheduled contraction `name` converted
    once per tile (module docstring), or None where nothing applies. An operand whose tile is
    too large keeps its conversions in the inner loop."""
    rv = _update_block(sch, name)
    if rv is None:
        return None
    block = sch.get(rv)
    store = block.body
    if not isinstance(store, tirx.BufferStore) or str(store.buffer.dtype) != "float32":
        return None
    factors = _half_factors(store.value)
    loops = sch.get_loops(rv)
    realize = sch.get(loops[-1]).body if loops else None
    lane_loops = [lp for lp in loops if sch.get(lp).kind == tirx.ForKind.VECTORIZED]
    if not factors or not isinstance(realize, s_tir.SBlockRealize) or not lane_loops:
        return None
    lane = sch.get(lane_loops[-1]).loop_var
    bound = {iv.var: value for iv, value in zip(block.iter_vars, realize.iter_values)}
    lane_vars = {v for v, value in bound.items() if lane in vars_in(value)}
    reduce_loop_vars = {x for iv in block.iter_vars if iv.iter_type == tirx.IterVar.CommReduce
                        for x in vars_in(bound[iv.var])}
    first = next((k for k, lp in enumerate(loops) if sch.get(lp).loop_var in reduce_loop_vars), None)
    if not first:
        return None
    allocated = {b.name for b in sch.mod["main"].body.block.alloc_buffers}
    out = None
    for load in factors:
        buffer = load.source
        trial = (out or sch).copy()
        rv = _update_block(trial, name)
        if buffer.name in allocated:  # made in the kernel (padding): made in float32
            producer = next((p for p in trial.get_producers(rv)
                             if trial.get(p).writes[0].source.same_as(buffer)), None)
            # not a weight's re-layout: that one is done when compiling and stays half
            if producer is None or LAYOUT_REWRITE_PREPROC in trial.get(producer).annotations:
                continue
            trial.unsafe_set_dtype(producer, 0, "float32")
        elif any(v in lane_vars for v in vars_in(list(load.indices))):
            continue  # the vector operand: one conversion per vector already
        else:
            trial = _convert_once(trial, name, buffer, first, lanes)
            if trial is None:
                continue
        out = trial
    return out


def _convert_once(sch: s_tir.Schedule, name: str, buffer, first: int, lanes: int):
    """A copy of `sch` converting `buffer` (read by the update of `name`) into a float32 copy
    at the outermost loop whose slab fits MAX_SLAB_BYTES: before the kernel's loops (the whole
    operand once: a conv's weights, a strided conv's input) if it fits, else inside the loops
    down to the tile; None where even the tile's slab does not fit."""
    for depth in range(first):  # 0: before all loops; d: at the d-th loop of the update
        trial = sch.copy()
        rv = _update_block(trial, name)
        index = next(k for k, r in enumerate(trial.get(rv).reads) if r.source.same_as(buffer))
        cache = trial.cache_read(rv, index, "global")
        if depth:
            trial.compute_at(cache, trial.get_loops(rv)[depth - 1])
        region = trial.get(cache).writes[0].region
        extents = [r.extent for r in region]
        if not all(isinstance(e, tirx.IntImm) for e in extents) or \
                4 * math.prod(int(e) for e in extents) > MAX_SLAB_BYTES:
            continue
        trial.unsafe_set_dtype(cache, 0, "float32")
        if _contiguous([int(e) for e in extents], [int(d) for d in buffer.shape]):
            _vectorize(trial, trial.get_loops(cache)[depth:], lanes)
        return trial
    return None


def _contiguous(extents: list[int], shape: list[int]) -> bool:
    """Whether a region of these extents is one contiguous run of the buffer: after its first
    dim wider than 1, every dim whole."""
    dims = [k for k, e in enumerate(extents) if e > 1]
    return not dims or all(extents[k] == shape[k] for k in range(dims[0] + 1, len(shape)))


def _widened_from_half(func: tirx.PrimFunc) -> set:
    """Float32 buffers the kernel allocates and only ever stores half values into (through a
    cast): converting their elements back to half is exact."""
    allocated = {b for b in func.body.block.alloc_buffers} if isinstance(func.body, s_tir.SBlockRealize) else set()
    stores: list = []
    tvm_ffi.structural_walk(func.body, (tirx.BufferStore, stores.append))
    ok: dict = {}
    for st in stores:
        if not any(st.buffer.same_as(b) for b in allocated) or str(st.buffer.dtype) != "float32":
            continue
        exact = isinstance(st.value, tirx.Cast) and str(st.value.value.ty) in HALF
        key = st.buffer.name
        ok[key] = ok.get(key, True) and exact
    return {name for name, exact in ok.items() if exact}


def drop_exact_casts(func: tirx.PrimFunc) -> tirx.PrimFunc:
    """`float32(half(B[i]))` becomes `B[i]` for the buffers `widen_half_operands` made float32:
    their values came from half ones, so the round trip is exact (LLVM cannot know that and
    would convert twice per load)."""
    names = _widened_from_half(func)
    if not names:
        return func

    def rewrite(cast, mutator):
        inner = cast.value
        if str(cast.ty) == "float32" and isinstance(inner, tirx.Cast) and str(inner.ty) in HALF \
                and isinstance(inner.value, Load) and inner.value.source.name in names:
            return inner.value
        return mutator.default_mutate(cast)

    return tvm_ffi.structural_mutate(func, (tirx.Cast, rewrite))


def cpu_for(func: tirx.PrimFunc, cpu: CPU) -> CPU:
    """`cpu` with twice the lanes for a kernel computing only in float16 (its convs and
    matmuls summing in float16: `accumulate="float16"`) on a CPU with float16 vector
    arithmetic (aarch64 +fp16, AVX512-FP16): a vector register holds twice as many."""
    if not any(f in cpu.features for f in HALF_FEATURES):
        return cpu
    buffers = list(func.params) + (list(func.body.block.alloc_buffers)
                                   if isinstance(func.body, s_tir.SBlockRealize) else [])
    dtypes = {str(getattr(b, "dtype", "")) for b in buffers}
    floats = {d for d in dtypes if d.startswith(("float", "bfloat"))}
    return dataclasses.replace(cpu, lanes=2 * cpu.lanes) if floats == {"float16"} else cpu
