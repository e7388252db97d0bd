"""Half-precision contractions summed in float32: the broadcast operand and the padded input
are converted once per tile, not per multiply-add; float16-only kernels get twice the lanes
where the CPU computes in float16."""

import re

import numpy as np
import pytest
import tvm
from onnx import TensorProto, helper

import edlc
from edlc.lower import lower, pipeline
from edlc.schedules import analysis, apply_default_schedules
from edlc.schedules.half import cpu_for
from edlc.target import get_target
from tests.conftest import make_model, ort_run, tensor_info


def _kernels(model, target="x86", accumulate="float32", **options) -> dict:
    tgt = get_target(target, **options)
    t = tgt.tvm_target()
    lowered = lower(edlc.load_onnx(model), tgt, accumulate=accumulate)
    with tvm.transform.PassContext(opt_level=3):
        mod = pipeline.fuse(lowered.mod, t)
        with t:
            mod = apply_default_schedules(mod, t)
    return {gv.name_hint: f for gv, f in mod.functions.items() if isinstance(f, tvm.tirx.PrimFunc)}


def _model(op, x_shape, w, y_shape, **attrs):
    return make_model([helper.make_node(op, ["x", "w"], ["y"], **attrs)],
                      [tensor_info("x", x_shape, TensorProto.FLOAT16)],
                      [tensor_info("y", y_shape, TensorProto.FLOAT16)], {"w": w})


def test_matmul_rows_are_converted_once_per_tile(rng):
    w = rng.standard_normal((64, 32)).astype(np.float16)
    (func,) = _kernels(_model("MatMul", [16, 64], w, [16, 32])).values()
    text = func.script()
    # the activation rows of a tile copied into a float32 buffer, read without conversion
    assert re.search(r"x\w*_global = T.sblock_alloc_buffer\(\(T.int64\(16\), T.int64\(64\)\)\)", text)
    assert 'T.Cast("float32", T.Cast("float16"' not in text


def test_the_padded_conv_input_is_made_in_float32(rng):
    w = (rng.standard_normal((8, 8, 3, 3)) * 0.2).astype(np.float16)
    (func,) = _kernels(_model("Conv", [1, 8, 16, 16], w, [1, 8, 16, 16], pads=[1, 1, 1, 1])).values()
    text = func.script()
    assert "pad_temp = T.sblock_alloc_buffer((T.int64(1), T.int64(8), T.int64(18), T.int64(18)))" in text
    assert 'T.Cast("float32", T.Cast("float16"' not in text
    model = _model("Conv", [1, 8, 16, 16], w, [1, 8, 16, 16], pads=[1, 1, 1, 1])
    x = {"x": rng.standard_normal((1, 8, 16, 16)).astype(np.float16)}
    got, want = edlc.compile(model).run(x)["y"], ort_run(model, x)["y"]
    np.testing.assert_allclose(got.astype(np.float32), want.astype(np.float32), rtol=2e-2, atol=2e-2)


@pytest.mark.parametrize(("mcpu", "accumulate", "lanes"), [
    ("cortex-a76", "float16", 8), ("cortex-a76", "float32", 4), ("cortex-a72", "float16", 4)])
def test_float16_kernels_get_twice_the_lanes_with_float16_arithmetic(rng, mcpu, accumulate, lanes):
    w = rng.standard_normal((64, 32)).astype(np.float16)
    (func,) = _kernels(_model("MatMul", [16, 64], w, [16, 32]), "arm", accumulate, mcpu=mcpu).values()
    cpu = analysis.cpu_of(get_target("arm", mcpu=mcpu).tvm_target())
    assert cpu_for(func, cpu).lanes == lanes
