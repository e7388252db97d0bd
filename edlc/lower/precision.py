"""float16 / bfloat16 models: sums in float32, and which targets can run them.

A half-precision graph (from `edlc.passes.precision`, or an fp16 ONNX model) stores weights and
activations in 16 bits, but its long sums must not be rounded at every step: a 3x3x512 conv
summing 4608 products in float16 loses about 5 bits, and on x86 (no float16 arithmetic) each
rounding is two conversions, so such a kernel ran 3-4x slower than float32. After lowering,
`compute_in_float32` therefore rewrites the Relax module so that

- convolutions and matmuls on half inputs accumulate in float32 (`out_dtype`) and round once;
- reductions and normalizations (softmax, mean, layer/group/instance/RMS norm, average pools)
  and the transcendental functions (exp, erf, tanh, sigmoid, GELU, ...) compute in float32
  between a cast of their inputs and one rounding of their result, which also lets edlc's
  vectorized float32 exp/erf/sigmoid (`edlc.schedules.fastmath`) serve them.

Inside a fused group (a Primitive function: one kernel) the casts join that kernel. A call in
`main` becomes a small Primitive function of its own (casts, op, rounding), so it still builds
as one kernel: the float32 values live in registers, memory keeps 16 bits. The CPU schedules
then convert each operand once per tile (`edlc.schedules.half`).

`accumulate="float16"` keeps float16 sums in convs and matmuls, for CPUs with float16 vector
arithmetic (aarch64 +fp16): twice the lanes per instruction, fewer correct bits.
`check_target` refuses what a target cannot run sensibly, in one line.
"""

from __future__ import annotations

import inspect
from typing import TYPE_CHECKING

from edlc.errors import TargetError

if TYPE_CHECKING:
    from edlc.ir.graph import Graph
    from edlc.target import Target

HALF = ("float16", "bfloat16")
# ops whose sums get out_dtype="float32" (the Python constructor rebuilds the call)
ACCUMULATE = ("matmul", "nn.conv1d", "nn.conv2d", "nn.conv3d", "nn.conv1d_transpose",
              "nn.conv2d_transpose")
# ops computed in float32 between casts. Not ReduceSum/ReduceProd (`sum`, `prod`): their
# results can leave float16's range, so the conversion pass keeps them float32 (bfloat16's
# sums too), and a graph that asks for a half sum (ONNX Attention's bfloat16 softmax) gets one.
IN_FLOAT32 = frozenset({
    "nn.softmax", "nn.log_softmax", "mean", "variance", "std",
    "nn.layer_norm", "nn.group_norm", "nn.instance_norm", "nn.rms_norm",
    "nn.avg_pool1d", "nn.avg_pool2d", "nn.avg_pool3d",
    "nn.max_pool1d", "nn.max_pool2d", "nn.max_pool3d",  # exact either way; vectorized in float32
    "nn.adaptive_avg_pool1d", "nn.adaptive_avg_pool2d", "nn.adaptive_avg_pool3d",
    "exp", "erf", "tanh", "sigmoid", "log", "nn.gelu", "nn.gelu_tanh", "nn.silu", "power",
})


def has_half(graph: Graph) -> bool:
    """Whether any value of the graph (fused bodies and subgraphs included) is half."""
    values = [*graph.inputs, *(v for n in graph.all_nodes() for v in (*n.inputs, *n.outputs))]
    return any(v is not None and v.type is not None and v.type.dtype in HALF for v in values)


# predicates TIR has no bfloat16 form of (TVM's Clip converter checks its bounds with isnan)
PREDICATES = ("isnan", "isinf", "isfinite")


def _op_name(call) -> str | None:
    name = getattr(call.op, "name", None)
    return name[len("relax."):] if isinstance(name, str) and name.startswith("relax.") else None


def _constructor(name: str):
    from tvm import relax

    fn = relax.op
    for part in name.split("."):
        fn = getattr(fn, part)
    return fn


def _widened(call, name: str, emit):
    """`call` computed in float32 (`emit` binds intermediate values); returns the result
    rounded to the call's half type."""
    from tvm import relax

    half = str(call.ty.dtype)
    if name in ACCUMULATE:
        fn = _constructor(name)
        skip = {"out_dtype"} | set(list(inspect.signature(fn).parameters)[: len(call.args)])
        kwargs = {k: call.attrs[k] for k in inspect.signature(fn).parameters
                  if k not in skip and k in dir(call.attrs)}
        wide = emit(fn(*call.args, **kwargs, out_dtype="float32"))
    else:
        args = [emit(relax.op.astype(a, "float32"))
                if isinstance(a.ty, relax.TensorType) and str(a.ty.dtype) in HALF else a
                for a in call.args]
        wide = emit(relax.Call(call.op, args, call.attrs, call.ty_args))
    return relax.op.astype(wide, half)


def _wants_float32(call, accumulate: str = "float32") -> str | None:
    """The op name when `call` should compute in float32, else None."""
    from tvm import relax

    name = _op_name(call)
    if name not in IN_FLOAT32 and name not in ACCUMULATE:
        return None
    if not isinstance(call.ty, relax.TensorType) or str(call.ty.dtype) not in HALF:
        return None
    if name in ACCUMULATE and str(call.ty.dtype) == accumulate:
        return None  # summed in the half type, as asked
    if name in ACCUMULATE and call.attrs.out_dtype is not None and \
            str(call.attrs.out_dtype) not in ("", *HALF):
        return None  # an explicit wider accumulator already
    return name


def compute_in_float32(mod, accumulate: str = "float32"):
    """The module with every half-precision conv/matmul accumulating in float32 (in float16
    with `accumulate="float16"`) and every reduction, normalization and transcendental op
    computed in float32 (module docstring)."""
    import tvm
    from tvm import relax
    from tvm.relax.expr_functor import PyExprMutator, mutator

    @mutator
    class _Widen(PyExprMutator):
        def __init__(self, module):
            super().__init__(module)
            self.primitive = False
            self.count = 0

        def visit_call_(self, op):
            call = super().visit_call_(op)
            if _op_name(call) in PREDICATES and call.args and \
                    str(getattr(call.args[0].ty, "dtype", "")) == "bfloat16":
                wide = self.builder_.emit(relax.op.astype(call.args[0], "float32"))
                return relax.Call(call.op, [wide], call.attrs, call.ty_args)
            name = _wants_float32(call, accumulate)
            if name is None:
                return call
            if self.primitive:  # one kernel already: the casts join it
                return _widened(call, name, self.builder_.emit)
            return relax.Call(self._function(call, name), [a for a in call.args
                                                           if isinstance(a.ty, relax.TensorType)])

        def _function(self, call, name: str):
            """A Primitive function computing `call` in float32: one kernel."""
            bb = relax.BlockBuilder()
            params, args = [], []
            for i, a in enumerate(call.args):
                if isinstance(a.ty, relax.TensorType):
                    params.append(relax.Var(f"x{i}", a.ty))
                    args.append(params[-1])
                else:
                    args.append(a)
            inner = relax.Call(call.op, args, call.attrs, call.ty_args)
            inner = bb.normalize(inner)
            with bb.function("f", params, attrs={"Primitive": True}, private=True):
                with bb.dataflow():
                    out = bb.emit_output(_widened(inner, name, bb.emit))
                bb.emit_func_output(out)
            self.count += 1
            return self.builder_.add_func(bb.get()["f"], f"{name.rsplit('.', 1)[-1]}_in_float32")

    widen = _Widen(mod)
    for gv, f in list(mod.functions.items()):
        if isinstance(f, relax.Function):
            widen.primitive = bool(f.attrs and "Primitive" in f.attrs)
            widen.builder_.update_func(gv, widen.visit_expr(f))
    out = widen.builder_.get()
    return tvm.IRModule(dict(out.functions.items()), attrs=mod.attrs, global_infos=mod.global_infos)


def check_target(target: Target, dtype: str, accumulate: str = "float32") -> None:
    """Refuse, in one line, a half type (or a half accumulator) the target cannot run
    sensibly."""
    from edlc.passes.precision import half_type

    half = half_type(dtype)
    name = {"float16": "fp16", "bfloat16": "bf16"}[half]
    kind = target.tvm.get("kind")
    if kind not in ("llvm", "cuda"):  # the C backend prints no half types
        raise TargetError(f"quantize='{name}' needs LLVM or CUDA kernels; target "
                          f"'{target.name}' writes C (use an LLVM target, e.g. --target cortex-m4)")
    if half == "float16" and kind == "llvm" and target.name == "x86" and not _llvm_has(target, "f16c"):
        raise TargetError(f"quantize='fp16' on x86 needs F16C conversions, which --mcpu "
                          f"{target.tvm.get('mcpu')} lacks (every x86-64-v3, Ivy Bridge and Zen CPU "
                          "has them); use quantize='bf16' or a newer --mcpu")
    if accumulate == "float32":
        return
    if accumulate != "float16" or half != "float16":
        raise TargetError(f"quantize='{name}' sums in float32" + (
            " or float16" if half == "float16" else "") + f", not {accumulate}")
    if kind == "llvm" and not (_llvm_has(target, "fullfp16") or _llvm_has(target, "avx512fp16")):
        raise TargetError(f"accumulate='float16': target '{target.name}' ({target.tvm.get('mcpu')}) "
                          "has no float16 arithmetic, so float16 sums would be slower and less "
                          "accurate than float32 ones (ARM: --mcpu cortex-a76 or neoverse-n1, or "
                          "--mattr +fp16)")


def _llvm_has(target: Target, feature: str) -> bool:
    from tvm.target import codegen

    try:
        return bool(codegen.target_has_features(feature, target.tvm_target()))
    except Exception:  # noqa: BLE001  an LLVM without the query: assume it has it
        return True


__all__ = ["ACCUMULATE", "IN_FLOAT32", "check_target", "compute_in_float32", "has_half"]
