"""The Relax -> VM-ready pipeline edlc builds with: TVM's default build passes, plus edlc's
fusion step and default schedules, minus what breaks.

- Fusion: TVM's default CPU build fuses nothing. After legalization each `edlc.fused` group
  (a Primitive function) has its constants lifted to parameters and FuseTIR makes it one
  kernel; no other grouping happens, so the kernels are exactly edlc's decisions.
- Control flow: with `If` in `main`, TVM 0.27's KillAfterLastUse frees storage that a later
  branch still allocates from (a segfault in StorageObj::AllocTensor), and StaticPlanBlockMemory
  plans a tensor after the `If` into storage only one branch allocated (a segfault when the
  other branch ran); both are left out there, and the VM allocates those tensors itself.
- Identical kernels (fused groups of the same shapes) are built once; kernels FuseTIR leaves
  behind unused are dropped before code generation.
"""

from __future__ import annotations


def _default_passes(control_flow: bool) -> list:
    """TVM 0.27's `relax.pipeline.default_build_pipeline`, pass for pass."""
    from tvm.relax import backend, transform

    passes = [
        backend.DispatchSampling(),
        backend.DispatchSortScan(),
        transform.LegalizeOps(),
        transform.RewriteDataflowReshape(),
        transform.ToNonDataflow(),
        transform.RemovePurityChecking(),
        transform.CallTIRRewrite(),
        transform.StaticPlanBlockMemory(),
        transform.RewriteCUDAGraph(),
        transform.LowerAllocTensor(),
        transform.KillAfterLastUse(),
        transform.LowerRuntimeBuiltin(),
        transform.ComputePrimValue(),
        transform.VMShapeLower(),
        transform.AttachGlobalSymbol(),
    ]
    if control_flow:
        passes = [p for p in passes if p.info.name not in ("KillAfterLastUse", "StaticPlanBlockMemory")]
    return passes


def has_control_flow(mod) -> bool:
    from tvm import relax

    found = []
    for f in mod.functions.values():
        if isinstance(f, relax.Function):
            relax.analysis.post_order_visit(f, lambda e: found.append(isinstance(e, relax.If)))
    return any(found)


def fuse(mod, target):
    """Legalize to TIR and make each of edlc's fused groups one kernel (built once when
    identical). The kernels here are what tuning tasks and tuning records refer to."""
    from tvm import relax

    from edlc.lower.fused import lift_primitive_constants
    from edlc.schedules import prepare_kernels

    with target:
        mod = relax.transform.LegalizeOps()(mod)
        mod = lift_primitive_constants(mod)
        mod = relax.transform.AnnotateTIROpPattern()(mod)
        mod = relax.transform.FuseTIR()(mod)
        return prepare_kernels(drop_unused_kernels(dedupe_kernels(mod)), target)


def apply_records(mod, target, records_dir) -> tuple[object, list[str], list[str], list[str]]:
    """Schedule the kernels that have a tuning record in `records_dir` (a MetaSchedule JSON
    database); returns (module, kernels with a record, kernels without, lines of the database
    left out because they do not parse). The directory itself is only read."""
    import tempfile

    import tvm
    from tvm import relax, tirx

    from edlc.records import readable_copy

    with tempfile.TemporaryDirectory(prefix="edlc-records-") as copy:
        check = readable_copy(records_dir, copy)
        with target, tvm.transform.PassContext(opt_level=3):
            mod = relax.transform.MetaScheduleApplyDatabase(work_dir=copy)(mod)
    found, missing = [], []
    for gv, f in mod.functions.items():
        if isinstance(f, tirx.PrimFunc):
            (found if is_scheduled(f) else missing).append(gv.name_hint)
    return mod, sorted(found), sorted(missing), check.dropped


def estimate_flops(func) -> float | None:
    """FLOPs of one call of an unscheduled kernel (TVM's estimate), None where TVM has none
    (data-dependent loops and the like)."""
    import tvm
    from tvm.s_tir.analysis import estimate_tir_flops

    from edlc.schedules.fastmath import without_lets

    try:
        return float(estimate_tir_flops(tvm.IRModule({"main": without_lets(func)})))
    except Exception:  # noqa: BLE001  no estimate is an answer here
        return None


SCHEDULED = "tirx.is_scheduled"  # the attr TVM 0.27 sets on a scheduled PrimFunc


def is_scheduled(func) -> bool:
    return func.attrs is not None and SCHEDULED in func.attrs and bool(func.attrs[SCHEDULED])


def finish(mod, target):
    """Default schedules for the kernels tuning records did not schedule (edlc's own on CPUs,
    TVM's dlight rules on GPUs), then TVM's default build passes; the module is then ready for
    `tvm.compile(..., relax_pipeline=None)`."""
    import tvm

    from edlc.schedules import apply_default_schedules
    from edlc.schedules.gpu import apply_gpu_schedules

    schedule = apply_gpu_schedules if "gpu" in target.keys else apply_default_schedules
    with target:
        mod = schedule(mod, target)
        mod = tvm.transform.Sequential(_default_passes(has_control_flow(mod)))(mod)
    return drop_unused_kernels(mod)


def drop_unused_kernels(mod):
    """FuseTIR leaves the pieces of each fused function behind; building them would waste
    time and code, and counting them would misreport the kernels."""
    import tvm
    from tvm import relax

    used = {gv.name_hint for f in mod.functions.values() if isinstance(f, relax.Function)
            for gv in relax.analysis.all_global_vars(f)}
    keep = {gv: f for gv, f in mod.functions.items()
            if isinstance(f, relax.Function) or gv.name_hint in used}
    return tvm.IRModule(keep, attrs=mod.attrs, global_infos=mod.global_infos)


def dedupe_kernels(mod):
    """Point every call of a PrimFunc structurally equal to an earlier one at that one (fused
    groups are separate functions even when a model repeats a block)."""
    import tvm
    import tvm_ffi
    from tvm import relax, tirx

    from edlc.lower.fused import retarget_call_tir

    first: dict[int, list] = {}
    redirect: dict[str, object] = {}
    for gv, f in mod.functions.items():
        if not isinstance(f, tirx.PrimFunc):
            continue
        bucket = first.setdefault(tvm_ffi.structural_hash(f), [])
        same = next((g for g, h in bucket if tvm_ffi.structural_equal(f, h)), None)
        if same is None:
            bucket.append((gv, f))
        else:
            redirect[gv.name_hint] = same
    if not redirect:
        return mod
    functions = {gv: (retarget_call_tir(f, redirect) if isinstance(f, relax.Function) else f)
                 for gv, f in mod.functions.items() if gv.name_hint not in redirect}
    return tvm.IRModule(functions, attrs=mod.attrs, global_infos=mod.global_infos)
