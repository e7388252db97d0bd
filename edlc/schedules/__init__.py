"""edlc's default CPU schedules: good code without tuning.

TVM 0.27 applies no schedule on CPU, so every kernel would be a naive scalar loop nest. This
package schedules each PrimFunc of a module by recognizing its blocks structurally:

- inline.py: the elementwise blocks FuseTIR leaves around an anchor are inlined;
- contraction.py: conv2d (NCHW / NHWC), depthwise conv, dense, matmul and batch matmul get a
  register-tiled, vectorized, parallel loop nest with padding and epilogue fused at the tile;
- reduction.py: pooling, mean, softmax and layer-norm statistics run vectorized across output
  elements and parallel;
- elementwise.py: everything else spatial is vectorized and parallelized (transposes in tiles);
- fastmath.py: float32 erf / exp / sigmoid become vectorizable approximations (~1e-7 error).

A rule that does not apply leaves its block alone; a PrimFunc on which scheduling fails is left
unscheduled. Scheduled PrimFuncs get the attribute "tirx.is_scheduled" (what TVM 0.27 checks),
and PrimFuncs that already carry it (or "tir.is_scheduled") are skipped.
"""

from __future__ import annotations

import tvm
from tvm import s_tir, tirx

from edlc.schedules import contraction, elementwise, half, int8, reduction, winograd
from edlc.schedules.analysis import (
    CPU,
    block_info,
    cpu_of,
    has_if_then_else,
    root_blocks,
    unsupported_dtypes,
)
from edlc.schedules.bfloat16 import unroll_invariant_bf16_stores
from edlc.schedules.fastmath import fast_math, without_lets
from edlc.schedules.inline import inline_elementwise

__all__ = ["apply_default_schedules", "default_schedule", "prepare_kernels", "schedule_primfunc",
           "schedule_variants"]

SCHEDULED_ATTRS = ("tirx.is_scheduled", "tir.is_scheduled")


def _is_scheduled(func: tirx.PrimFunc) -> bool:
    attrs = func.attrs
    return attrs is not None and any(bool(attrs.get(k, False)) for k in SCHEDULED_ATTRS)


def prepare_kernels(mod: tvm.IRModule, target: tvm.target.Target) -> tvm.IRModule:
    """Rewrites every CPU kernel gets before tuning and scheduling (the fast-math forms), so a
    tuning task, its records and the default schedule all see the same PrimFunc."""
    if cpu_of(target) is None:
        return mod
    # without Let: MetaSchedule's task scheduler estimates each kernel's FLOPs with TVM's
    # estimator, which aborts on a Let (the fast forms bind temporaries so); the kernel tuned
    # and the one compiled must be the same function, so both get the substituted form
    functions = {gv: without_lets(fast_math(f)) if isinstance(f, tirx.PrimFunc) else f
                 for gv, f in mod.functions.items()}
    return tvm.IRModule(functions, attrs=mod.attrs, global_infos=mod.global_infos)


def apply_default_schedules(mod: tvm.IRModule, target: tvm.target.Target) -> tvm.IRModule:
    """Return `mod` with every unscheduled PrimFunc scheduled for the CPU `target` (marked
    "tirx.is_scheduled"). Never raises: a PrimFunc no rule can schedule is kept as it was.
    Targets these rules are not for (GPUs, C source, microcontrollers) get `mod` back."""
    try:
        cpu = cpu_of(target)
    except Exception:  # noqa: BLE001  an exotic target must not break the build
        return mod
    if cpu is None:
        return mod
    updates = {}
    for gv, func in mod.functions.items():
        if not isinstance(func, tirx.PrimFunc) or _is_scheduled(func):
            continue
        try:
            scheduled = schedule_primfunc(func, cpu)
        except Exception:  # noqa: BLE001  leave this kernel unscheduled, keep going
            scheduled = None
        if scheduled is not None:
            updates[gv] = scheduled
    if not updates:
        return mod
    functions = {gv: updates.get(gv, f) for gv, f in mod.functions.items()}
    return tvm.IRModule(functions, attrs=mod.attrs, global_infos=mod.global_infos)


def schedule_primfunc(func: tirx.PrimFunc, cpu: CPU) -> tirx.PrimFunc | None:
    """The PrimFunc scheduled (and marked), or None if no rule applied."""
    sch = default_schedule(func, cpu)
    if sch is None:
        return None
    func = half.drop_exact_casts(unroll_invariant_bf16_stores(sch.mod["main"]))
    return func.with_attr("tirx.is_scheduled", True)


def default_schedule(func: tirx.PrimFunc, cpu: CPU,
                     variant: contraction.Variant | None = None) -> s_tir.Schedule | None:
    """The schedule the rules build for `func`, or None if no rule applied. Its trace is a
    tuning record like any other: tuning measures it first, so tuned never loses to untuned.
    A `variant` fixes choices of the contraction rule (see `schedule_variants`)."""
    if unsupported_dtypes(func):
        return None
    cpu = half.cpu_for(func, cpu)
    sch = s_tir.Schedule(fast_math(func))
    if winograd.blocks(sch):  # a Winograd transform (and its fused epilogue): its own rule
        return sch if winograd.apply(sch, cpu) else None
    anchors = []
    for rv in root_blocks(sch):
        c = contraction.match(sch, rv)
        if c is not None:
            anchors.append(c.info.name)
    inline_elementwise(sch, lambda rv: sch.get(rv).name_hint in anchors)

    changed = False
    tensorized = []  # int8 accumulators, tensorized after every other step
    for name in anchors:
        trial = _schedule_int8(sch, name, cpu)
        if trial is not None:
            tensorized.append(name)
        else:
            trial = sch.copy()
            try:
                rv = trial.get_sblock(name)
                c = contraction.match(trial, rv)
                v = variant or contraction.Variant()
                p = contraction.plan(c, cpu, v.tiles, v.j_inner) if c is not None else None
                if p is None:
                    continue
                contraction.apply(trial, c, p, cpu, v.pad_redundancy)
            except Exception:  # noqa: BLE001  this anchor stays unscheduled
                continue
            trial = _widen_half(trial, name, cpu)
        sch, changed = trial, True

    for rv in _free_blocks(sch):
        info = block_info(sch, rv)
        if info is None:
            continue
        rule = elementwise.apply if info.is_spatial else reduction.apply
        trial = sch.copy()
        try:
            done = rule(trial, block_info(trial, rv), cpu)
        except Exception:  # noqa: BLE001  this block stays unscheduled
            continue
        if done:
            sch, changed = trial, True
    isa = int8.isa_of(lambda f: f in cpu.features)
    for name in tensorized:
        int8.tensorize(sch, name, isa)
    return sch if changed else None


def schedule_variants(func: tirx.PrimFunc, cpu: CPU) -> list[contraction.Variant]:
    """The variants of the contraction rule worth measuring for `func` besides its default:
    other register tiles, and padding per tile or once (where the kernel pads). Tuning builds
    one candidate of each (edlc.tune), so a kernel's tuned schedule is the fastest of them
    measured, or a faster one the search found."""
    if unsupported_dtypes(func):
        return []
    sch = s_tir.Schedule(fast_math(func))
    plans = []
    for rv in root_blocks(sch):
        c = contraction.match(sch, rv)
        p = contraction.plan(c, cpu) if c is not None else None
        if p is not None:
            plans.append(p)
    if not plans:
        return []
    out = [contraction.Variant(tiles=t) for t in contraction.tile_options(plans[0], cpu)]
    if plans[0].depthwise and plans[0].i is not None and plans[0].e_j > plans[0].T:
        out.append(contraction.Variant(j_inner=True))
    if not plans[0].depthwise and any(has_if_then_else(b.body.value) for b in _stores(sch)):
        # (a depthwise conv reads its padding inline: no padded copy to place)
        out += [contraction.Variant(pad_redundancy=0.0), contraction.Variant(pad_redundancy=1e30)]
    return out


def _stores(sch: s_tir.Schedule) -> list:
    blocks = [sch.get(rv) for rv in root_blocks(sch)]
    return [b for b in blocks if isinstance(b.body, tirx.BufferStore)]


def _schedule_int8(sch: s_tir.Schedule, name: str, cpu: CPU) -> s_tir.Schedule | None:
    """A copy of `sch` with the anchor `name` scheduled as a packed int8 accumulator, or None
    if it is not one (or the target has no instruction for it)."""
    isa = int8.isa_of(lambda f: f in cpu.features)
    if isa is None:
        return None
    trial = sch.copy()
    try:
        c = contraction.match(trial, trial.get_sblock(name))
        p = int8.plan(c, isa) if c is not None else None
        if p is None:
            return None
        int8.apply(trial, c, p, isa, cpu)
    except Exception:  # noqa: BLE001  left to the general contraction rule
        return None
    return trial


def _widen_half(sch: s_tir.Schedule, name: str, cpu: CPU) -> s_tir.Schedule:
    """`sch` with the half operands of contraction `name` converted once per tile (float16 /
    bfloat16 kernels summing in float32), or as it was where that does not apply."""
    try:
        return half.widen_half_operands(sch, name, cpu.lanes) or sch
    except Exception:  # noqa: BLE001  keep the conversions in the inner loop
        return sch


def _free_blocks(sch: s_tir.Schedule) -> list:
    """Blocks still alone in their own serial loop nest (not placed under a scheduled one)."""
    nests: dict = {}
    blocks = []
    for rv in root_blocks(sch):
        loops = sch.get_loops(rv)
        if not loops:
            continue
        top = sch.get(loops[0])
        nests.setdefault(top, []).append(rv)
        blocks.append((rv, top, loops))
    free = []
    for rv, top, loops in blocks:
        if len(nests[top]) > 1:
            continue
        if any(sch.get(lp).kind != tirx.ForKind.SERIAL for lp in loops):
            continue
        free.append(rv)
    return free
