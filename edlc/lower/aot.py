"""Ahead-of-time lowering: kernels, the ordered call list, the constants.

There is no TVM runtime on a microcontroller (nor in a standalone Linux program), so nothing
may interpret the Relax `main` at run time. This module is the one place the AOT path crosses
into TVM: it fuses the Relax module as every target does (`pipeline.fuse`), schedules each
kernel (on a microcontroller for the least RAM: epilogues computed right after each output
element's reduction, so no full-size intermediate is materialized; on other CPUs with edlc's
default CPU schedules, single-threaded since there is no thread pool), then walks `main` once
to produce a flat program: the tensors, the kernel calls in order with the tensors each reads
and writes, and the constants. The kernels are built standalone with `tvm.tirx.build` (asserts
off: no error strings, no TVM error setter) to an object file (LLVM targets) or C source (the
`c` target).

Kernels keep TVM's packed signature `int32_t __tvm_ffi_<sym>(void*, TVMFFIAny* args, int32_t n,
void*)` with DLTensor arguments: the generated entry passes statically built descriptors, so
the call costs a few loads. A kernel's scratch buffers come from `TVMBackendAllocWorkspace`;
their sizes are read from the lowered TIR so the memory planner can place them in the arena.
"""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from edlc.errors import LoweringError, first_line
from edlc.lower import LoweredModel, pipeline
from edlc.memory_plan import align_up


@dataclass
class AotTensor:
    """A tensor of the flat program. A view (reshape) shares the storage of `base`."""

    name: str
    shape: tuple[int, ...]
    dtype: str
    role: str  # input | output | constant | intermediate
    base: str = ""  # the tensor whose storage this one uses ("" = its own)
    data: np.ndarray | None = None  # constants only

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * np.dtype(self.dtype).itemsize

    @property
    def storage(self) -> str:
        return self.base or self.name


@dataclass
class AotCall:
    """One kernel call: `args` are tensor names (the kernel's inputs, then its outputs)."""

    kernel: str  # symbol suffix: the kernel is `__tvm_ffi_<kernel>`
    args: list[str]
    outputs: list[str]
    workspace: int = 0  # bytes of TVMBackendAllocWorkspace requests (16-byte aligned, summed)


@dataclass
class AotProgram:
    """What the firmware writer needs: tensors, calls in order, and the built kernels."""

    name: str
    tensors: dict[str, AotTensor]
    calls: list[AotCall]
    inputs: list[str]
    outputs: list[str]
    kernel_format: str  # "object" (LLVM, thumb ELF) or "c" (C source)
    kernels: bytes | str = b""
    kernel_asm: str = ""  # LLVM assembly, for the stack estimate
    workspaces: dict[str, int] = field(default_factory=dict)

    def storage_users(self) -> dict[str, list[int]]:
        """Storage name -> indices of the calls that read or write it."""
        users: dict[str, list[int]] = {}
        for i, c in enumerate(self.calls):
            for a in c.args:
                users.setdefault(self.tensors[a].storage, []).append(i)
        return users


def c_identifier(name: str) -> str:
    s = re.sub(r"[^0-9A-Za-z_]", "_", name)
    return s if s and not s[0].isdigit() else f"m_{s}"


def lower_aot(lowered: LoweredModel, target, name: str) -> AotProgram:
    """Fuse, schedule and build the kernels of a lowered model; flatten `main` to calls.
    `target` is an edlc Target whose TVM target is an LLVM CPU target (thumb, aarch64) or `c`."""
    import tvm
    from tvm import relax

    prefix = c_identifier(name)
    tgt = aot_tvm_target(target)
    try:
        with tvm.transform.PassContext(opt_level=3):
            mod = lowered.mod
            if lowered.params:  # weights are compile-time constants on a microcontroller
                mod = relax.transform.BindParams("main", {
                    k: tvm.runtime.tensor(np.ascontiguousarray(v)) for k, v in lowered.params.items()})(mod)
            mod = pipeline.fuse(mod, tgt)
            mod = relax.transform.FoldConstant()(mod)  # e.g. a weight's transpose, done here
            mod = relax.transform.RewriteDataflowReshape()(mod)  # reshapes become views
        prims = schedule_kernels(mod, tgt, mcu=target.mcu is not None)
        program = flatten_main(mod["main"], lowered, prefix)
        used = {c.kernel for c in program.calls}
        symbols = {f"{prefix}_{k}": f for k, f in prims.items() if f"{prefix}_{k}" in used}
        lib, workspaces = build_kernels(symbols, tgt)
    except LoweringError:
        raise
    except Exception as e:  # a TVM failure: say where, keep the cause
        raise LoweringError(f"AOT build for target '{target.name}' failed: {first_line(e)}") from e
    for c in program.calls:
        c.workspace = workspaces.get(c.kernel, 0)
    program.workspaces = workspaces
    if tgt.kind.name == "c":
        program.kernel_format, program.kernels = "c", lib.inspect_source()
    else:
        program.kernel_format = "object"
        with tempfile.TemporaryDirectory(prefix="edlc-aot-") as tmp:
            path = os.path.join(tmp, "kernels.o")
            lib.write_to_file(path)
            with open(path, "rb") as f:
                program.kernels = f.read()
        try:
            program.kernel_asm = lib.inspect_source("asm")
        except Exception:  # noqa: BLE001  only the stack estimate needs it
            program.kernel_asm = ""
    return program


def flatten_main(main, lowered: LoweredModel, prefix: str) -> AotProgram:
    """Walk the bindings of the fused `main`: call_tir -> a call; reshape, tuple get-item and
    rebinding -> views; constants -> constant tensors."""
    import tvm
    from tvm import relax

    tensors: dict[str, AotTensor] = {}
    calls: list[AotCall] = []
    env: dict = {}  # relax Var -> tensor name, or list of names for a tuple
    counter = [0]

    def new(kind: str, sinfo, role: str, data=None, base: str = "") -> str:
        counter[0] += 1
        t = _tensor_type(sinfo)
        n = f"t{counter[0]}_{kind}"
        tensors[n] = AotTensor(n, t[0], t[1], role, base, data)
        return n

    names = ([n for n, _ in lowered.inputs] + list(lowered.params))[:len(main.params)]
    if len(main.params) < len(lowered.inputs):
        raise LoweringError(f"AOT: main takes {len(main.params)} arguments, expected {len(names)}")
    inputs = []
    for i, (var, pname) in enumerate(zip(main.params, names)):
        if i < len(lowered.inputs):
            env[var] = n = new("in", var.ty, "input")
            inputs.append(n)
        else:
            env[var] = new("w", var.ty, "constant", np.asarray(lowered.params[pname]))

    def value_of(expr):
        if isinstance(expr, tvm.ir.expr.Constant):
            return new("c", expr.ty, "constant", expr.value.numpy())
        if isinstance(expr, relax.Var) and expr in env:
            return env[expr]
        if isinstance(expr, relax.Tuple):
            return [value_of(f) for f in expr.fields]
        raise LoweringError(f"AOT: cannot use {type(expr).__name__} as a tensor in main")

    call_tir = _op("relax.call_tir")
    reshape = _op("relax.reshape")
    body = main.body
    for block in body.blocks:
        for b in block.bindings:
            if not isinstance(b, relax.VarBinding):
                raise LoweringError("AOT: match_cast bindings in main are not supported")
            v = b.value
            if isinstance(v, relax.Call) and v.op == call_tir:
                kernel = v.args[0].name_hint
                args = value_of(v.args[1])
                if not isinstance(args, list) or any(isinstance(a, list) for a in args):
                    raise LoweringError(f"AOT: call to {kernel} has tuple arguments")
                if len(v.args) > 2:
                    raise LoweringError(f"AOT: call to {kernel} has symbolic shape arguments")
                out_sinfo = v.ty_args[0]
                outs_sinfo = list(out_sinfo.fields) if isinstance(out_sinfo, relax.TupleType) \
                    else [out_sinfo]
                outs = [new("t", s, "intermediate") for s in outs_sinfo]
                calls.append(AotCall(f"{prefix}_{kernel}", args + outs, outs))
                env[b.var] = outs if isinstance(out_sinfo, relax.TupleType) else outs[0]
            elif isinstance(v, relax.Call) and v.op == reshape:
                src = value_of(v.args[0])
                env[b.var] = new("view", b.var.ty, tensors[src].role,
                                 base=tensors[src].storage)
            elif isinstance(v, relax.TupleGetItem):
                env[b.var] = value_of(v.tuple_value)[v.index]
            elif isinstance(v, (relax.Var, relax.Tuple, tvm.ir.expr.Constant)):
                env[b.var] = value_of(v)
            else:
                what = v.op.name if isinstance(v, relax.Call) and hasattr(v.op, "name") else type(v).__name__
                raise LoweringError(f"AOT: '{what}' in main is not supported by the firmware build")
    result = value_of(body.body)
    outputs = result if isinstance(result, list) else [result]
    if len(outputs) != len(lowered.outputs):
        raise LoweringError(f"AOT: main returns {len(outputs)} tensors, expected {len(lowered.outputs)}")
    _mark_outputs(tensors, outputs)
    return AotProgram(prefix, tensors, calls, inputs, outputs, kernel_format="")


def _mark_outputs(tensors: dict[str, AotTensor], outputs: Sequence[str]) -> None:
    """An output's storage is the caller's buffer: the kernel producing it writes there."""
    seen: set[str] = set()
    for o in outputs:
        root = tensors[o].storage
        if tensors[root].role != "intermediate" or root in seen:
            raise LoweringError("AOT: a model output that is an input, a constant or another "
                                "output is not supported by the firmware build")
        seen.add(root)
        for t in tensors.values():
            if t.storage == root:
                t.role = "output"


def _op(name: str):
    import tvm

    return tvm.ir.Op.get(name)


def _tensor_type(sinfo) -> tuple[tuple[int, ...], str]:
    from tvm import relax

    if not isinstance(sinfo, relax.TensorType) or sinfo.shape is None:
        raise LoweringError(f"AOT: expected a tensor of static shape, got {sinfo}")
    try:
        shape = tuple(int(d) for d in sinfo.shape.values)
    except (TypeError, AttributeError) as e:
        raise LoweringError(f"AOT: symbolic shape {sinfo.shape}; bind the input shapes") from e
    return shape, str(sinfo.dtype)


def aot_tvm_target(target):
    """The TVM target AOT kernels are built for: the target's own, on one core where it names
    cores, since without the TVM runtime there is no thread pool to run a parallel loop on."""
    import tvm

    if "num-cores" in target.tvm:
        return tvm.target.Target({**target.tvm, "num-cores": 1})
    return target.tvm_target()


def schedule_kernels(mod, tgt, mcu: bool) -> dict:
    """Kernel name -> scheduled PrimFunc: the least-RAM schedule on a microcontroller, edlc's
    default CPU schedules elsewhere (single-threaded: `tgt` names one core)."""
    from tvm import tirx

    if not mcu:
        from edlc.schedules import apply_default_schedules

        with tgt:
            mod = apply_default_schedules(mod, tgt)
        return {gv.name_hint: f for gv, f in mod.functions.items() if isinstance(f, tirx.PrimFunc)}
    return {gv.name_hint: schedule_for_mcu(f) for gv, f in mod.functions.items()
            if isinstance(f, tirx.PrimFunc)}


def schedule_for_mcu(func):
    """Schedule a kernel for the least RAM: no intermediate tensor of it is materialized.

    Injective producers (padding, transposes of weights, reshapes) are inlined into their
    consumers: the reads index the source directly (padding becomes a bounds check). The
    elementwise epilogues of each reduction (bias, ReLU, residual add, ...) run right after the
    reduction of each output element, so the accumulator buffer compacts to one element."""
    from tvm import s_tir

    try:
        sch = s_tir.Schedule(func)
        if not _has_root(sch):
            return func
        for rv in sch.get_child_blocks(sch.get_sblock("root")):
            if all(int(it.iter_type) == 0 for it in sch.get(rv).iter_vars):
                # fails, harmlessly, for the block writing the kernel's output
                with contextlib.suppress(s_tir.ScheduleError):
                    sch.compute_inline(rv)
        for rv in sch.get_child_blocks(sch.get_sblock("root")):
            iters = sch.get(rv).iter_vars
            n_spatial = sum(1 for it in iters if int(it.iter_type) == 0)
            loops = sch.get_loops(rv)
            if n_spatial == len(iters) or n_spatial == 0 or len(loops) < n_spatial:
                continue  # not a reduction, or a full reduction to a scalar
            loop, cur = loops[n_spatial - 1], rv
            while True:
                consumers = sch.get_consumers(cur)
                if len(consumers) != 1 or _is_under(sch, consumers[0], loop):
                    break
                try:
                    sch.reverse_compute_at(consumers[0], loop, preserve_unit_loops=True)
                except s_tir.ScheduleError:
                    break
                cur = consumers[0]
        return sch.mod["main"]
    except Exception:  # noqa: BLE001  an unusual kernel stays as it was
        return func


def _has_root(sch) -> bool:
    try:
        sch.get_sblock("root")
        return True
    except Exception:  # noqa: BLE001
        return False


def _is_under(sch, block_rv, loop_rv) -> bool:
    target = sch.get(loop_rv)
    return any(sch.get(lp).same_as(target) for lp in sch.get_loops(block_rv))


def build_kernels(functions: dict, target) -> tuple[object, dict[str, int]]:
    """Build PrimFuncs (keyed by symbol) as `tvm.tirx.build` does, asserts off, and read off each
    kernel's workspace requests (bytes, each rounded up to 16) from the lowered TIR."""
    import tvm
    import tvm_ffi
    from tvm import tirx
    from tvm.tirx.build import codegen_build, split_host_device_mods

    mod = tvm.IRModule({sym: f.with_attr("global_symbol", sym) for sym, f in functions.items()})
    with tvm.transform.PassContext(opt_level=3, config={"tirx.disable_assert": True}):
        mod = tirx.transform.BindTarget(target.with_host(target))(mod)
        lower_tir, finalize_host, _ = tvm.tirx.get_default_tir_pipeline(target)
        host, devices = split_host_device_mods(lower_tir(mod))
        if any(len(m.functions) for m in devices.values()):
            raise LoweringError("AOT: kernels for a device other than the CPU")
        host = finalize_host()(host)
        workspaces: dict[str, int] = {}
        for gv, f in host.functions.items():
            calls: list = []
            tvm_ffi.structural_walk(f, (tvm.ir.Call, calls.append), order="post")
            total = 0
            for c in calls:
                if getattr(c.op, "name", "") == "tirx.TVMBackendAllocWorkspace":
                    size = c.args[2]
                    if not hasattr(size, "value"):
                        raise LoweringError(f"AOT: kernel {gv.name_hint} allocates a workspace of "
                                            "run-time size")
                    total += align_up(int(size.value))
            workspaces[gv.name_hint] = total
        return codegen_build(host, target), workspaces
