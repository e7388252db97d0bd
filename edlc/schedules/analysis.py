"""What the schedule rules need to know about the target and about a PrimFunc's blocks.

The rules recognize blocks structurally (iteration kinds, which block vars index which buffer
dims, the shape of the update expression), never by block or buffer name, so they apply to
whatever LegalizeOps and FuseTIR produce.
"""

from __future__ import annotations

from dataclasses import dataclass

import tvm
import tvm_ffi
from tvm import s_tir, tirx

# a buffer element read (TVM 0.27 calls it TensorLoad; `tirx.BufferLoad` only builds one)
Load = tvm.ir.expr.TensorLoad

_TRANSCENDENTAL = ("exp", "erf", "tanh", "sigmoid", "log", "pow", "sqrt", "rsqrt", "sin", "cos")


@dataclass(frozen=True)
class CPU:
    """SIMD and thread resources of an LLVM CPU target."""

    lanes: int  # fp32 lanes of one vector register
    vector_regs: int  # architectural vector registers
    cores: int  # threads the parallel loops should feed
    features: frozenset = frozenset()  # the INT8_FEATURES and HALF_FEATURES the target has


# features the int8 rule (edlc.schedules.int8) chooses its instruction by
INT8_FEATURES = ("avx2", "avx512bw", "avx512vnni", "dotprod")
# float16 arithmetic in vectors (edlc.schedules.half: twice the lanes for float16 kernels)
HALF_FEATURES = ("fullfp16", "avx512fp16")


def cpu_of(target: tvm.target.Target) -> CPU | None:
    """The CPU resources of `target`, or None where these CPU rules do not apply (GPUs,
    C source for microcontrollers, Cortex-M without an FP SIMD unit)."""
    if target.kind.name != "llvm":
        return None
    from tvm.target import codegen

    triple = str(target.attrs.get("mtriple", "") or "")
    if triple.startswith(("thumb", "arm-none", "armv7m", "riscv32")):
        return None
    cores = int(target.attrs.get("num-cores", 0) or 0) or 1

    def has(feature: str) -> bool:
        try:
            return bool(codegen.target_has_features(feature, target))
        except Exception:  # noqa: BLE001  feature names differ across LLVM back ends
            return False

    features = frozenset(f for f in (*INT8_FEATURES, *HALF_FEATURES) if has(f))
    if has("avx512f"):
        return CPU(16, 32, cores, features)
    if has("avx2") or has("avx"):
        return CPU(8, 16, cores, features)
    if triple.startswith("aarch64") or has("neon"):
        return CPU(4, 32, cores, features)
    return CPU(4, 16, cores)


def const_int(expr) -> int | None:
    return int(expr.value) if isinstance(expr, tirx.IntImm) else None


def vars_in(expr) -> set:
    """The tirx.Vars an expression (or list of expressions) uses."""
    found: set = set()
    tvm_ffi.structural_walk(expr, (tirx.Var, found.add), order="post")
    return found


def loads_in(expr) -> list:
    found: list = []
    tvm_ffi.structural_walk(expr, (Load, found.append), order="post")
    return found


def is_expensive(expr) -> bool:
    """Whether evaluating `expr` twice would cost real time (transcendental calls)."""
    calls: list = []
    tvm_ffi.structural_walk(expr, (tvm.ir.Call, calls.append), order="post")
    for c in calls:
        name = getattr(c.op, "name", "")
        if any(name.endswith("." + t) for t in _TRANSCENDENTAL):
            return True
    return False


# calls TVM 0.27 cannot lower once vectorized ("unknown intrinsic" at build time)
_NO_VECTOR_CALLS = ("sinh", "cosh")
# element types the vectorizer mishandles (bfloat16 is legalized after vectorization)
_NO_SCHEDULE_DTYPES = ("float8", "float6", "float4")


def vector_unsafe(expr) -> bool:
    """Whether vectorizing a loop over `expr` would break the build."""
    calls: list = []
    tvm_ffi.structural_walk(expr, (tvm.ir.Call, calls.append), order="post")
    return any(getattr(c.op, "name", "").rsplit(".", 1)[-1] in _NO_VECTOR_CALLS for c in calls)


def unsupported_dtypes(func: tirx.PrimFunc) -> bool:
    """Whether the PrimFunc touches element types these rules must leave alone."""
    buffers = list(func.params)
    body = func.body
    if isinstance(body, s_tir.SBlockRealize):
        buffers += list(body.block.alloc_buffers)
    return any(str(getattr(b, "dtype", "")).startswith(_NO_SCHEDULE_DTYPES) for b in buffers)


def has_if_then_else(expr, on: set | None = None) -> bool:
    """Whether `expr` has an if_then_else (padding), optionally only one whose condition
    uses one of the var names `on`."""
    calls: list = []
    tvm_ffi.structural_walk(expr, (tvm.ir.Call, calls.append), order="post")
    return any(getattr(c.op, "name", "").endswith(".if_then_else")
               and (on is None or {v.name for v in vars_in(c.args[0])} & on) for c in calls)


@dataclass
class BlockInfo:
    """A block whose loops bind its iter vars one to one, in order (the shape LegalizeOps
    emits and the shape the rules need)."""

    rv: s_tir.schedule.SBlockRV
    block: s_tir.SBlock
    loops: list
    vars: list  # block iter vars, in loop order
    kinds: list  # "S" or "R" per var
    extents: list  # int per var

    @property
    def name(self) -> str:
        return self.block.name_hint

    @property
    def spatial(self) -> list:
        return [v for v, k in zip(self.vars, self.kinds) if k == "S"]

    @property
    def reduce(self) -> list:
        return [v for v, k in zip(self.vars, self.kinds) if k == "R"]

    @property
    def is_spatial(self) -> bool:
        return all(k == "S" for k in self.kinds)

    @property
    def store(self):
        body = self.block.body
        return body if isinstance(body, tirx.BufferStore) else None


def block_info(sch: s_tir.Schedule, rv) -> BlockInfo | None:
    """BlockInfo of `rv`, or None if its loop nest is not a plain one-loop-per-var nest with
    constant extents."""
    block = sch.get(rv)
    loops = sch.get_loops(rv)
    if len(loops) != len(block.iter_vars) or not loops:
        return None
    realize = sch.get(loops[-1]).body
    if not isinstance(realize, s_tir.SBlockRealize):
        return None
    kinds, extents = [], []
    for loop_rv, iv, value in zip(loops, block.iter_vars, realize.iter_values):
        loop = sch.get(loop_rv)
        if not value.same_as(loop.loop_var):
            return None
        kind = {tirx.IterVar.DataPar: "S", tirx.IterVar.CommReduce: "R"}.get(iv.iter_type)
        ext = const_int(loop.extent)
        if kind is None or ext is None or const_int(loop.min) != 0:
            return None
        kinds.append(kind)
        extents.append(ext)
    return BlockInfo(rv, block, list(loops), [iv.var for iv in block.iter_vars], kinds, extents)


def root_blocks(sch: s_tir.Schedule) -> list:
    """The blocks directly under the root block, in program order."""
    root = sch.mod["main"].body.block
    return list(sch.get_child_blocks(sch.get_sblock(root.name_hint)))


def is_param(func: tirx.PrimFunc, buffer) -> bool:
    """Whether `buffer` is one of the PrimFunc's parameters (an input or output tensor)."""
    return any(buffer.same_as(p) for p in func.params)


def divisors_desc(n: int, at_most: int) -> list[int]:
    return [d for d in range(min(n, at_most), 0, -1) if n % d == 0]
