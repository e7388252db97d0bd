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

from dataclasses import dataclass
from typing import Any


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
        return mark_weight_params(prepare_kernels(drop_unused_kernels(dedupe_kernels(mod)), target))


@dataclass
class AppliedRecords:
    """What `apply_records` did to a model's kernels."""

    found: list[str]  # kernels scheduled by a record
    missing: list[str]  # kernels without one (edlc's default schedules them)
    kept_default: list[str]  # of `missing`, those whose choice in the closing check was the default
    check: Any  # the directory's RecordsCheck: lines left out because they do not parse


def apply_records(mod, target, records_dir) -> tuple[object, AppliedRecords]:
    """Schedule the kernels that have a tuning record in `records_dir` (a MetaSchedule JSON
    database), honouring the choices of tune's closing check. The directory itself is only
    read; it may hold the records of other models too."""
    import tempfile

    import tvm
    from tvm import relax, tirx
    from tvm.s_tir.meta_schedule.tune_context import _normalize_mod

    from edlc.records import readable_copy, workload_hash

    with tempfile.TemporaryDirectory(prefix="edlc-records-") as copy:
        check = readable_copy(records_dir, copy)
        with target, tvm.transform.PassContext(opt_level=3):
            mod = relax.transform.MetaScheduleApplyDatabase(work_dir=copy)(mod)
    defaults = set(check.default_workloads)
    found, missing, kept_default = [], [], []
    for gv, f in mod.functions.items():
        if not isinstance(f, tirx.PrimFunc):
            continue
        if is_scheduled(f):
            found.append(gv.name_hint)
            continue
        missing.append(gv.name_hint)
        if defaults and workload_hash(_normalize_mod(f)) in defaults:
            kept_default.append(gv.name_hint)
    return mod, AppliedRecords(sorted(found), sorted(missing), sorted(kept_default), check)


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


def finish(mod, target, params: dict | None = None) -> tuple[object, dict | None]:
    """Default schedules for the kernels tuning records did not schedule (edlc's own on CPUs,
    TVM's dlight rules on GPUs), the weight re-layouts they ask for done now (with the weights,
    `params`), then TVM's default build passes. Returns the module, ready for
    `tvm.compile(..., relax_pipeline=None)`, and the parameters its `main` takes."""
    import tvm

    from edlc.schedules import apply_default_schedules
    from edlc.schedules.gpu import apply_gpu_schedules

    schedule = apply_gpu_schedules if "gpu" in target.keys else apply_default_schedules
    with target:
        mod = schedule(mod, target)
        if params is not None:
            mod, params = prepack_weights(mod, params)
        mod = materialize_empty_constants(mod)
        mod = tvm.transform.Sequential(_default_passes(has_control_flow(mod)))(mod)
    return drop_unused_kernels(mod), params


def materialize_empty_constants(mod):
    """Each constant with no elements becomes a tensor the VM allocates when the binding runs.

    TVM 0.27 writes an empty constant into the executable but cannot read it back unless its
    first dim is the 0 one ("Invalid DLTensor file format" when the VM or an exported library
    is loaded: the loader counts a read of zero bytes as a failure). An empty tensor has no
    data to keep, so an allocation of its shape stands in for it."""
    import tvm
    from tvm import relax
    from tvm.relax.expr_functor import PyExprMutator, mutator

    def empty(c) -> bool:
        ty = c.ty
        return isinstance(ty, relax.TensorType) and ty.shape is not None and \
            any(isinstance(d, tvm.tirx.IntImm) and int(d) == 0 for d in ty.shape.values)

    found: list = []
    for f in mod.functions.values():
        if isinstance(f, relax.Function):
            relax.analysis.post_order_visit(
                f, lambda e: found.append(e) if isinstance(e, tvm.ir.expr.Constant) and empty(e) else None)
    if not found:
        return mod

    @mutator
    class _Allocate(PyExprMutator):
        def visit_generic_const_(self, op):
            if not empty(op):
                return op
            return self.builder_.emit(relax.op.builtin.alloc_tensor(
                relax.ShapeExpr(op.ty.shape.values), str(op.ty.dtype), runtime_device_index=0))

    functions = {gv: (_Allocate().visit_expr(f) if isinstance(f, relax.Function) else f)
                 for gv, f in mod.functions.items()}
    return tvm_module(functions, mod)


_CALL_TIR = "relax.call_tir"


def _call_tir_sites(f) -> list:
    """(kernel GlobalVar, argument list) of every call_tir in a Relax function."""
    import tvm
    from tvm import relax

    op = tvm.ir.Op.get(_CALL_TIR)
    sites: list = []
    relax.analysis.post_order_visit(f, lambda e: sites.append((e.args[0], list(e.args[1].fields)))
                                    if isinstance(e, relax.Call) and e.op.same_as(op) else None)
    return sites


def mark_weight_params(mod):
    """Give each kernel the "layout_free_buffers" attribute TVM's schedules read: the indices
    of its parameters that every call passes a weight (a parameter of `main` after its
    `num_input` inputs). A schedule may then ask for such a parameter in another layout, made
    once when compiling (`prepack_weights`). TVM's AttachAttrLayoutFreeBuffers does the same
    but renames every kernel it marks."""
    from tvm import relax, tirx

    gvs = {gv.name_hint: gv for gv in mod.get_global_vars()}
    main = mod[gvs["main"]] if "main" in gvs else None
    if main is None or main.attrs is None or "num_input" not in main.attrs:
        return mod
    weights = list(main.params[int(main.attrs["num_input"]):])
    free: dict[str, list[bool]] = {}
    for f in mod.functions.values():
        if not isinstance(f, relax.Function):
            continue
        for gv, args in _call_tir_sites(f):
            flags = [f.same_as(main) and any(a.same_as(w) for w in weights) for a in args]
            seen = free.setdefault(gv.name_hint, flags)
            free[gv.name_hint] = [x and y for x, y in zip(seen, flags)]
    functions = {}
    for gv, f in mod.functions.items():
        indices = [k for k, flag in enumerate(free.get(gv.name_hint, [])) if flag]
        if isinstance(f, tirx.PrimFunc) and indices:
            f = f.with_attr("layout_free_buffers", indices)
        functions[gv] = f
    return tvm_module(functions, mod)


def tvm_module(functions: dict, like):
    """A module of `functions` keeping `like`'s attributes and global infos."""
    import tvm

    return tvm.IRModule(functions, attrs=like.attrs, global_infos=like.global_infos)


def prepack_weights(mod, params: dict) -> tuple[object, dict]:
    """Run the weight re-layouts the schedules asked for (blocks annotated
    meta_schedule.layout_rewrite_preproc) once, now: TVM's SplitLayoutRewritePreproc moves each
    into a kernel of its own called on the weight; each such call becomes a new parameter of
    `main` holding the re-laid weight, and a weight nothing else reads is dropped. Returns the
    module and the parameters `main` takes after its inputs, in order."""
    import numpy as np
    import tvm
    from tvm import relax
    from tvm.relax.expr_functor import PyExprMutator, mutator

    mod = _split_layout_rewrites(mod)
    main_gv = mod.get_global_var("main")
    main = mod[main_gv]
    n_in = int(main.attrs["num_input"])
    weights = list(main.params[n_in:])
    values = list(params.values())
    if len(values) != len(weights):
        return mod, params
    calls = {}  # binding var -> (prepack kernel name, weight index)
    op = tvm.ir.Op.get(_CALL_TIR)
    for block in main.body.blocks:
        for b in block.bindings:
            v = b.value
            if not (isinstance(v, relax.Call) and v.op.same_as(op)
                    and v.args[0].name_hint.endswith("_weight_prepack")):
                continue
            args = list(v.args[1].fields)
            index = [next((k for k, w in enumerate(weights) if a.same_as(w)), None) for a in args]
            if index and None not in index:  # one kernel may re-lay several weights: a tuple
                calls[b.var] = (v.args[0].name_hint, index)
    if not calls:
        return mod, params
    kernels = {name for name, _ in calls.values()}
    lib = tvm.compile(tvm.IRModule({name: mod[name].with_attr("global_symbol", name)
                                    for name in kernels}), target="llvm").jit()
    new_params = {}
    replace = {}
    names = list(params)
    for var, (name, ks) in calls.items():
        out_tys = list(var.ty.fields) if isinstance(var.ty, relax.TupleType) else [var.ty]
        outs = [tvm.runtime.tensor(np.empty([int(d) for d in t.shape.values], str(t.dtype)))
                for t in out_tys]
        lib[name](*[tvm.runtime.tensor(np.ascontiguousarray(values[k])) for k in ks], *outs)
        new_vars = []
        for k, out, ty in zip(ks, outs, out_tys):
            key = f"{names[k]}.prepacked{len(new_params)}"
            new_params[key] = out.numpy()
            new_vars.append(relax.Var(key, ty))
        replace[var] = relax.Tuple(new_vars) if isinstance(var.ty, relax.TupleType) else new_vars[0]

    @mutator
    class _Substitute(PyExprMutator):
        def visit_var_binding_(self, binding):
            if binding.var not in replace:
                super().visit_var_binding_(binding)

        def visit_var_(self, var):
            return replace.get(var, var)

        def visit_dataflow_var_(self, var):
            return replace.get(var, var)

    body = _Substitute().visit_expr(main.body)
    used = set()
    relax.analysis.post_order_visit(body, lambda e: used.add(e) if isinstance(e, relax.Var) else None)
    kept = [(w, names[k], values[k]) for k, w in enumerate(weights) if w in used]
    packed = [v for r in replace.values() for v in (r.fields if isinstance(r, relax.Tuple) else [r])]
    new_main = relax.Function(list(main.params[:n_in]) + [w for w, _, _ in kept] + packed,
                              body, main.ret_ty, main.is_pure, main.attrs)
    functions = {gv: (new_main if gv.same_as(main_gv) else f) for gv, f in mod.functions.items()}
    out_params = {name: value for _, name, value in kept}
    out_params.update(new_params)
    return _drop_suffix(drop_unused_kernels(tvm_module(functions, mod)), "_prepacked"), out_params


def _has_layout_rewrite(func) -> bool:
    import tvm_ffi
    from tvm import s_tir

    from edlc.schedules.contraction import LAYOUT_REWRITE_PREPROC

    blocks: list = []
    tvm_ffi.structural_walk(func.body, (s_tir.SBlock, blocks.append), order="post")
    return any(LAYOUT_REWRITE_PREPROC in b.annotations for b in blocks)


def _split_layout_rewrites(mod):
    """TVM's SplitLayoutRewritePreproc, shown only the kernels that have a re-layout: it
    checks every PrimFunc for a root block of nested blocks and aborts on those that have none
    (TVM's ScatterElements and MaxUnpool kernels, written without blocks)."""
    from tvm import relax, tirx

    split = {gv for gv, f in mod.functions.items()
             if isinstance(f, tirx.PrimFunc) and _has_layout_rewrite(f)}
    if not split:
        return mod
    others = {gv: f for gv, f in mod.functions.items() if isinstance(f, tirx.PrimFunc) and gv not in split}
    shown = relax.transform.SplitLayoutRewritePreproc()(
        tvm_module({gv: f for gv, f in mod.functions.items() if gv not in others}, mod))
    return tvm_module({**dict(shown.functions.items()), **others}, mod)


def _drop_suffix(mod, suffix: str):
    """Kernels named X<suffix> renamed X where no X is left, so that profiles, FLOP counts and
    reports keep naming a kernel as the fused module did."""
    from tvm import relax

    from edlc.lower.fused import retarget_call_tir

    names = {gv.name_hint for gv in mod.get_global_vars()}
    rename = {gv.name_hint: gv.name_hint[:-len(suffix)] for gv in mod.get_global_vars()
              if gv.name_hint.endswith(suffix) and gv.name_hint[:-len(suffix)] not in names}
    if not rename:
        return mod
    kept = {gv: f for gv, f in mod.functions.items() if gv.name_hint not in rename}
    bb = relax.BlockBuilder(tvm_module(kept, mod))  # it types the new GlobalVars
    new_gvs = {old: bb.add_func(mod[old].with_attr("global_symbol", new), new)
               for old, new in rename.items()}
    for gv, f in kept.items():
        if isinstance(f, relax.Function):
            bb.update_func(gv, retarget_call_tir(f, new_gvs))
    return bb.get()


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
    return tvm_module(functions, mod)
