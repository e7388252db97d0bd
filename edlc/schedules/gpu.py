"""Default GPU schedules: TVM's dlight rules.

TVM refuses to build a GPU kernel whose loops are not bound to blocks and threads, so every
kernel a tuning record did not schedule needs one. The rules are tried in order (matmul with
shared-memory tiles, GEMV, reductions, then the fallback that binds the spatial loops); a rule
that raises on a kernel is skipped like one that does not apply.
"""

from __future__ import annotations

import tvm
from tvm import tirx

from edlc.schedules import SCHEDULED_ATTRS


def _rules() -> list:
    from tvm.s_tir import dlight as dl

    return [dl.gpu.Matmul(), dl.gpu.GEMV(), dl.gpu.Reduction(), dl.gpu.GeneralReduction(),
            dl.gpu.Fallback()]


def _is_scheduled(func: tirx.PrimFunc) -> bool:
    attrs = func.attrs
    return attrs is not None and any(bool(attrs.get(k, False)) for k in SCHEDULED_ATTRS)


def schedule_gpu_kernel(func: tirx.PrimFunc, target: tvm.target.Target) -> tirx.PrimFunc | None:
    """`func` scheduled by the first dlight rule that applies (and marked), or None."""
    for rule in _rules():
        try:
            space = rule.apply(func, target, False)
        except Exception:  # noqa: BLE001  a rule that fails on this kernel: try the next
            continue
        if space is None:
            continue
        sch = space[0] if isinstance(space, list) else space
        return sch.mod["main"].with_attr("tirx.is_scheduled", True)
    return None


def apply_gpu_schedules(mod: tvm.IRModule, target: tvm.target.Target) -> tvm.IRModule:
    """`mod` with every unscheduled PrimFunc scheduled for the GPU `target`; a new module
    (dlight's own pass would change `mod` in place)."""
    functions = {}
    for gv, func in mod.functions.items():
        if isinstance(func, tirx.PrimFunc) and not _is_scheduled(func):
            func = schedule_gpu_kernel(func, target) or func
        functions[gv] = func
    return tvm.IRModule(functions, attrs=mod.attrs, global_infos=mod.global_infos)
