"""Ops where TVM's converter is wrong: edlc's rules match onnxruntime, or refuse clearly."""

import numpy as np
import pytest
from onnx import TensorProto, helper

import edlc
from edlc.errors import LoweringError
from tests.conftest import assert_matches_ort


def one_node(op, inputs, outputs, inits=(), **attrs):
    node = helper.make_node(op, [i.name for i in inputs] + [t.name for t in inits], [o.name for o in outputs], **attrs)
    g = helper.make_graph([node], op.lower(), list(inputs), list(outputs), list(inits))
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def vi(name, shape, t=TensorProto.FLOAT):
    return helper.make_tensor_value_info(name, t, shape)


def test_tile_large_matches_onnxruntime(rng):
    reps = helper.make_tensor("r", TensorProto.INT64, [3], [2, 3, 5])
    model = one_node("Tile", [vi("x", [4, 7, 16])], [vi("y", [8, 21, 80])], [reps])
    x = rng.standard_normal((4, 7, 16)).astype(np.float32)
    assert_matches_ort(edlc.compile(model), model, {"x": x}, rtol=0, atol=0)


@pytest.mark.parametrize("pos,neg", [(1, 1), (1, 0), (0, 1)])
def test_isinf_flags(pos, neg):
    model = one_node("IsInf", [vi("x", [6])], [vi("y", [6], TensorProto.BOOL)],
                     detect_positive=pos, detect_negative=neg)
    x = np.array([-np.inf, -1.0, 0.0, np.nan, np.inf, 2.0], np.float32)
    assert_matches_ort(edlc.compile(model), model, {"x": x})


@pytest.mark.parametrize("mode", ["DCR", "CRD"])
def test_depth_space_round_trip(rng, mode):
    model = one_node("DepthToSpace", [vi("x", [1, 8, 3, 2])], [vi("y", [1, 2, 6, 4])], blocksize=2, mode=mode)
    x = rng.standard_normal((1, 8, 3, 2)).astype(np.float32)
    assert_matches_ort(edlc.compile(model), model, {"x": x}, rtol=0, atol=0)
    s2d = one_node("SpaceToDepth", [vi("x", [1, 2, 6, 4])], [vi("y", [1, 8, 3, 2])], blocksize=2)
    y = rng.standard_normal((1, 2, 6, 4)).astype(np.float32)
    assert_matches_ort(edlc.compile(s2d), s2d, {"x": y}, rtol=0, atol=0)


def test_training_mode_batchnorm_is_refused():
    params = [helper.make_tensor(n, TensorProto.FLOAT, [2], [1.0, 1.0]) for n in ("s", "b", "m", "v")]
    model = one_node("BatchNormalization", [vi("x", [2, 2, 3])], [vi("y", [2, 2, 3])], params, training_mode=1)
    model.opset_import[0].version = 15
    with pytest.raises(LoweringError, match="training_mode"):
        edlc.compile(model)


@pytest.mark.parametrize("with_bias", [True, False])
def test_layer_norm_all_outputs(rng, with_bias):
    inits = [helper.make_tensor("scale", TensorProto.FLOAT, [8], rng.standard_normal(8).tolist())]
    if with_bias:
        inits.append(helper.make_tensor("bias", TensorProto.FLOAT, [8], rng.standard_normal(8).tolist()))
    model = one_node("LayerNormalization", [vi("x", [2, 3, 8])],
                     [vi("y", [2, 3, 8]), vi("mean", [2, 3, 1]), vi("inv", [2, 3, 1])], inits, epsilon=1e-3)
    x = rng.standard_normal((2, 3, 8)).astype(np.float32)
    assert_matches_ort(edlc.compile(model), model, {"x": x}, rtol=1e-5, atol=1e-5)


def test_unsqueeze_scalar_axes(rng):
    axes = helper.make_tensor("axes", TensorProto.INT64, [], [1])
    model = one_node("Unsqueeze", [vi("x", [3, 4])], [vi("y", [3, 1, 4])], [axes])
    x = rng.standard_normal((3, 4)).astype(np.float32)
    assert_matches_ort(edlc.compile(model), model, {"x": x}, rtol=0, atol=0)


@pytest.mark.parametrize("op,inf", [("ReduceMax", -np.inf), ("ReduceMin", np.inf)])
def test_reductions_over_infinite_rows(op, inf):
    axes = helper.make_tensor("axes", TensorProto.INT64, [1], [1])
    model = one_node(op, [vi("x", [3, 4])], [vi("y", [3, 1])], [axes])
    model.opset_import[0].version = 18
    x = np.array([[inf] * 4, [1, inf, 3, -2], [inf, -inf, 0, 5]], np.float32)
    assert_matches_ort(edlc.compile(model), model, {"x": x}, rtol=0, atol=0)


@pytest.mark.parametrize("dtype", [TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.INT32])
@pytest.mark.parametrize("lo,hi", [(0, 6), (None, 2), (np.nan, 3), (-1, None)])
def test_clip_with_constant_bounds_matches_onnxruntime(rng, dtype, lo, hi):
    """Constant bounds are numbers in the kernel; a NaN bound is no bound."""
    from onnx import helper as h
    from onnx import numpy_helper

    npdt = h.tensor_dtype_to_np_dtype(dtype)
    if dtype == TensorProto.INT32 and lo is not None and lo != lo:
        lo = -5  # integers have no NaN
    bounds = [None if v is None else numpy_helper.from_array(np.array(v, npdt), name)
              for v, name in ((lo, "lo"), (hi, "hi"))]
    node = h.make_node("Clip", ["x"] + [b.name if b is not None else "" for b in bounds], ["y"])
    g = h.make_graph([node], "clip", [vi("x", [3, 17], dtype)], [vi("y", [3, 17], dtype)],
                     [b for b in bounds if b is not None])
    model = h.make_model(g, opset_imports=[h.make_opsetid("", 17)])
    x = (rng.standard_normal((3, 17)) * 5).astype(npdt)
    assert_matches_ort(edlc.compile(model), model, {"x": x}, rtol=0, atol=0)


def test_clip_with_bounds_as_inputs_matches_onnxruntime(rng):
    model = one_node("Clip", [vi("x", [4, 9]), vi("lo", []), vi("hi", [])], [vi("y", [4, 9])])
    feeds = {"x": rng.standard_normal((4, 9)).astype(np.float32),
             "lo": np.array(-0.5, np.float32), "hi": np.array(np.nan, np.float32)}
    assert_matches_ort(edlc.compile(model), model, feeds, rtol=0, atol=0)


def test_conv_with_relu6_is_a_kernel_metaschedule_can_search():
    """TVM's Clip converter checked constant bounds for NaN in 0-d blocks inside the fused
    conv kernel, where MetaSchedule's multi-level tiling raised (reverse-compute-at)."""
    from tvm.s_tir import meta_schedule as ms

    from edlc.tune import _design_space, extract

    w = helper.make_tensor("w", TensorProto.FLOAT, [8, 4, 3, 3], np.ones(288, np.float32))
    lo = helper.make_tensor("lo", TensorProto.FLOAT, [], [0.0])
    hi = helper.make_tensor("hi", TensorProto.FLOAT, [], [6.0])
    g = helper.make_graph([helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
                           helper.make_node("Clip", ["c", "lo", "hi"], ["y"])], "relu6",
                          [vi("x", [1, 4, 8, 8])], [vi("y", [1, 8, 8, 8])], [w, lo, hi])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    _, target, tasks = extract(model)
    (conv,) = [t for t in tasks if "conv" in t.task_name.lower()]
    ctx = ms.TuneContext(mod=conv.dispatched[0], target=target, space_generator=_design_space(target),
                         search_strategy="evolutionary", task_name=conv.task_name)
    assert any(len(space.trace.decisions) for space in ctx.generate_design_space())
