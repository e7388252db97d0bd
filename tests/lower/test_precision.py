"""Half-precision lowering: sums and reductions in float32 inside their kernels, and the targets
that refuse a half type."""

import ml_dtypes
import numpy as np
import pytest
from onnx import TensorProto, helper

import edlc
from edlc.errors import TargetError
from edlc.lower import lower
from edlc.lower.precision import check_target, compute_in_float32
from edlc.target import get_target
from tests.conftest import make_model, tensor_info


def _model(nodes, x_shape, y_shape, inits, elem):
    return make_model(nodes, [tensor_info("x", x_shape, elem)], [tensor_info("y", y_shape, elem)], inits)


def _primitive_ops(mod) -> dict[str, list[str]]:
    """Per Primitive function, the ops it calls in order."""
    from tvm import relax

    def calls(f) -> list[str]:
        ops: list = []
        relax.analysis.post_order_visit(
            f.body, lambda e: ops.append(str(e.op.name)) if isinstance(e, relax.Call)
            and hasattr(e.op, "name") else None)
        return ops

    return {gv.name_hint: calls(f) for gv, f in mod.functions.items()
            if isinstance(f, relax.Function) and f.attrs and "Primitive" in f.attrs}


def test_a_float16_matmul_sums_in_float32_and_rounds_once():
    """4096 positive products summing to about 1000, where float16's step is 0.5-1: summed in
    float16 the result is off by tens, in float32 by at most one rounding."""
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 1, (2, 4096)).astype(np.float16)
    w = rng.uniform(0, 1, (4096, 8)).astype(np.float16)
    model = _model([helper.make_node("MatMul", ["x", "w"], ["y"])], [2, 4096], [2, 8], {"w": w},
                   TensorProto.FLOAT16)
    g = edlc.load_onnx(model)
    ops = _primitive_ops(lower(g).mod)
    assert list(ops.values()) == [["relax.matmul", "relax.astype"]]
    want = x.astype(np.float64) @ w.astype(np.float64)
    got = edlc.compile(model).run({"x": x})["y"]
    assert got.dtype == np.float16
    assert np.abs(got - want).max() <= np.spacing(np.float16(want.max()))


@pytest.mark.parametrize("half", ["float16", "bfloat16"])
def test_a_softmax_in_main_is_one_kernel_computed_in_float32(half):
    elem = TensorProto.FLOAT16 if half == "float16" else TensorProto.BFLOAT16
    dt = np.float16 if half == "float16" else ml_dtypes.bfloat16
    model = _model([helper.make_node("Softmax", ["x"], ["y"], axis=-1)], [4, 300], [4, 300], {}, elem)
    lowered = lower(edlc.load_onnx(model))
    ops = _primitive_ops(lowered.mod)
    assert list(ops.values()) == [["relax.astype", "relax.nn.softmax", "relax.astype"]]
    assert list(ops) == ["softmax_in_float32"]
    assert _primitive_ops(compute_in_float32(lowered.mod)) == ops  # nothing left to widen
    m = edlc.compile(model)
    assert m.manifest["kernels"] == 1
    x = (np.random.default_rng(1).standard_normal((4, 300)) * 4).astype(dt)
    e = np.exp(x.astype(np.float64) - x.astype(np.float64).max(-1, keepdims=True))
    want = (e / e.sum(-1, keepdims=True)).astype(dt)  # computed exactly, rounded once
    got = m.run({"x": x})["y"]
    assert np.abs(got.astype(np.float64) - want.astype(np.float64)).max() <= \
        2 * np.spacing(dt(want.astype(np.float64).max()))


def test_bfloat16_clip_builds():
    """TVM's Clip converter tests its bounds with isnan, which TIR lacks for bfloat16."""
    bf16 = ml_dtypes.bfloat16
    model = make_model([helper.make_node("Clip", ["x", "lo", "hi"], ["y"])],
                       [tensor_info("x", [64], TensorProto.BFLOAT16)],
                       [tensor_info("y", [64], TensorProto.BFLOAT16)],
                       {"lo": np.array(0, bf16), "hi": np.array(6, bf16)})
    x = (np.arange(64) - 20).astype(bf16) / bf16(4)
    got = edlc.compile(model).run({"x": x})["y"]
    np.testing.assert_array_equal(got, np.clip(x.astype(np.float32), 0, 6).astype(bf16))


def test_targets_refuse_what_they_cannot_run():
    with pytest.raises(TargetError, match="needs F16C conversions, which --mcpu core2 lacks"):
        check_target(get_target("x86", mcpu="core2"), "fp16")
    check_target(get_target("x86", mcpu="core2"), "bf16")  # bfloat16 converts with shifts
    check_target(get_target("x86"), "fp16")
    check_target(get_target("arm"), "fp16")
    with pytest.raises(TargetError, match="needs LLVM or CUDA kernels; target 'c' writes C"):
        check_target(get_target("c"), "fp16")


def test_float16_sums_only_where_the_target_computes_in_float16():
    check_target(get_target("arm", mcpu="cortex-a76"), "fp16", "float16")
    check_target(get_target("arm", mattr="+fp16"), "fp16", "float16")  # LLVM's +fullfp16
    check_target(get_target("cortex-m55"), "fp16", "float16")
    for target in (get_target("x86"), get_target("arm")):
        with pytest.raises(TargetError, match="has no float16 arithmetic"):
            check_target(target, "fp16", "float16")
    with pytest.raises(TargetError, match="sums in float32, not bfloat16"):
        check_target(get_target("arm", mcpu="cortex-a76"), "bf16", "bfloat16")


def test_float16_sums_leave_the_matmul_alone():
    w = np.ones((8, 4), np.float16)
    model = _model([helper.make_node("MatMul", ["x", "w"], ["y"])], [2, 8], [2, 4], {"w": w},
                   TensorProto.FLOAT16)
    g = edlc.load_onnx(model)
    assert list(_primitive_ops(lower(g, accumulate="float16").mod).values()) == []
    assert list(_primitive_ops(lower(g).mod).values()) == [["relax.matmul", "relax.astype"]]
