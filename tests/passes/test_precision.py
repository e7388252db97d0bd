"""float16 / bfloat16: the graph runs in the half type with casts only at its float32 interface
and around the ops kept float32; the exported graph runs in onnxruntime."""

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

import edlc
from edlc.errors import EdlcError, InputError
from edlc.ir.types import numpy_dtype
from edlc.pass_manager import PassManager, default_pipeline
from edlc.passes.precision import convert_precision, half_type, pipeline_with
from tests.conftest import make_model, ort_run, tensor_info

HALVES = ["float16", "bfloat16"]
# max |error| allowed, relative to the output's largest magnitude: a few roundings of each
TOLERANCE = {"float16": 1e-2, "bfloat16": 6e-2}


def assert_close(got: np.ndarray, want: np.ndarray, half: str) -> None:
    assert got.dtype == want.dtype and got.shape == want.shape
    scale = max(1.0, float(np.abs(want).max()))
    err = float(np.abs(got.astype(np.float64) - want).max())
    assert err <= TOLERANCE[half] * scale, f"max |diff| {err:.3g} at scale {scale:.3g} ({half})"


def cnn(rng: np.random.Generator) -> onnx.ModelProto:
    """Conv + BN-free bias + Relu, MaxPool, Flatten, Gemm, Softmax: a small classifier."""
    inits = {"w": (rng.standard_normal((8, 3, 3, 3)) * 0.3).astype(np.float32),
             "b": rng.standard_normal(8).astype(np.float32),
             "fc": (rng.standard_normal((8 * 4 * 4, 10)) * 0.1).astype(np.float32),
             "fb": rng.standard_normal(10).astype(np.float32)}
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1], name="conv"),
             helper.make_node("Relu", ["c"], ["r"], name="relu"),
             helper.make_node("MaxPool", ["r"], ["p"], kernel_shape=[2, 2], strides=[2, 2], name="pool"),
             helper.make_node("Flatten", ["p"], ["f"], name="flatten"),
             helper.make_node("Gemm", ["f", "fc", "fb"], ["g"], name="fc"),
             helper.make_node("Softmax", ["g"], ["y"], name="softmax")]
    return make_model(nodes, [tensor_info("x", [1, 3, 8, 8])], [tensor_info("y", [1, 10])], inits)


def casts(graph) -> list[tuple[str, str, str]]:
    """(input dtype, output dtype, output name) of every Cast."""
    return [(n.inputs[0].type.dtype, n.outputs[0].type.dtype, n.outputs[0].name)
            for n in graph.nodes if n.op == "Cast"]


@pytest.mark.parametrize("half", HALVES)
def test_everything_runs_in_half_with_casts_only_at_the_interface(rng, half):
    model = cnn(rng)
    g, report = convert_precision(edlc.load_onnx(model), half)
    g.verify()
    assert casts(g) == [("float32", half, "x.to_" + half), (half, "float32", "y")]
    assert [v.name for v in g.inputs] == ["x"] and [v.name for v in g.outputs] == ["y"]
    assert g.inputs[0].type.dtype == g.outputs[0].type.dtype == "float32"
    inner = [v for n in g.nodes if n.op != "Cast" for v in (*n.inputs, *n.outputs)]
    assert {v.type.dtype for v in inner if v.type.dtype != "int64"} == {half}
    assert report.converted == 6 and report.casts == 2 and not report.kept
    assert report.weight_bytes_after * 2 == report.weight_bytes_before
    assert report.summary()["dtype"] == half


def test_the_exported_float16_graph_runs_in_onnxruntime_like_edlcs_build(rng):
    """onnxruntime runs the converted graph (its CPU provider has no bfloat16 Conv): it agrees
    with the float32 model and with edlc's build of the same graph."""
    model = cnn(rng)
    g, _ = convert_precision(edlc.load_onnx(model), "fp16")
    x = {"x": rng.standard_normal((1, 3, 8, 8)).astype(np.float32)}
    ort16 = ort_run(g.to_onnx(), x)["y"]
    assert_close(ort16, ort_run(model, x)["y"], "float16")
    assert_close(edlc.compile(g).run(x)["y"], ort16, "float16")


def ranged(rng) -> onnx.ModelProto:
    """MatMul -> ReduceSum -> Mul -> Exp -> output: a sum and an Exp between half ops."""
    w = (rng.standard_normal((16, 16)) * 0.3).astype(np.float32)
    nodes = [helper.make_node("MatMul", ["x", "w"], ["m"]),
             helper.make_node("ReduceSum", ["m", "axes"], ["s"], keepdims=1),
             helper.make_node("Mul", ["s", "k"], ["t"]),
             helper.make_node("Exp", ["t"], ["y"])]
    return make_model(nodes, [tensor_info("x", [4, 16])], [tensor_info("y", [4, 1])],
                      {"w": w, "axes": np.array([1], np.int64), "k": np.array(0.1, np.float32)})


def test_range_sensitive_ops_stay_float32_for_float16_only(rng):
    model = ranged(rng)
    g16, r16 = convert_precision(edlc.load_onnx(model), "fp16")
    ops = {n.op: n for n in g16.nodes}
    assert ops["ReduceSum"].inputs[0].type.dtype == "float32"
    assert ops["ReduceSum"].outputs[0].type.dtype == "float32"
    assert ops["Mul"].outputs[0].type.dtype == "float16"
    assert ops["Exp"].inputs[0].type.dtype == "float32"  # the Mul's result, cast back
    assert set(r16.kept) == {"ReduceSum", "Exp"} and "range" in r16.kept["Exp"][1]
    assert any("kept float32: ReduceSum x1" in line for line in r16.lines())
    g16.verify()

    gb, rb = convert_precision(edlc.load_onnx(model), "bf16")
    assert set(rb.kept) == {"ReduceSum"}  # bfloat16 has float32's range: Exp runs in it
    assert {n.op: n for n in gb.nodes}["Exp"].outputs[0].type.dtype == "bfloat16"
    x = {"x": rng.standard_normal((4, 16)).astype(np.float32)}
    for half, g in (("float16", g16), ("bfloat16", gb)):
        got = edlc.compile(g, passes=[]).run(x)["y"]
        assert_close(got, ort_run(model, x)["y"], half)


def test_block_lists_keep_named_ops_and_nodes_in_float32(rng):
    g, report = convert_precision(edlc.load_onnx(cnn(rng)), "fp16", op_block_list=["Softmax"],
                                  node_block_list=["conv"])
    ops = {n.name: n for n in g.nodes}
    assert ops["conv"].outputs[0].type.dtype == "float32"
    assert ops["softmax"].outputs[0].type.dtype == "float32"
    assert ops["fc"].outputs[0].type.dtype == "float16"
    assert set(report.kept) == {"Conv", "Softmax"}
    assert len(casts(g)) == 2  # after the conv, before the softmax


def test_data_movement_follows_its_input_and_converts_weight_tables(rng):
    """A Reshape of the float32 input stays float32 (the cast comes after it); a Gather from an
    embedding table converts the table; Shape reads a half value as it is."""
    table = rng.standard_normal((50, 8)).astype(np.float32)
    w = rng.standard_normal((8, 8)).astype(np.float32)
    nodes = [helper.make_node("Reshape", ["x", "shape"], ["xr"]),
             helper.make_node("Gather", ["table", "ids"], ["e"]),
             helper.make_node("Add", ["xr", "e"], ["a"]),
             helper.make_node("MatMul", ["a", "w"], ["y"]),
             helper.make_node("Shape", ["y"], ["s"])]
    model = make_model(nodes, [tensor_info("x", [2, 4, 2]), tensor_info("ids", [2], TensorProto.INT64)],
                       [tensor_info("y", [2, 8]), tensor_info("s", [2], TensorProto.INT64)],
                       {"table": table, "w": w, "shape": np.array([2, 8], np.int64)})
    g, report = convert_precision(edlc.load_onnx(model), "fp16")
    ops = {n.op: n for n in g.nodes}
    assert ops["Reshape"].outputs[0].type.dtype == "float32"
    assert ops["Gather"].inputs[0].is_constant and ops["Gather"].inputs[0].type.dtype == "float16"
    assert ops["Shape"].inputs[0].type.dtype == "float16"
    assert report.weight_bytes_after < report.weight_bytes_before * 0.51
    x = {"x": rng.standard_normal((2, 4, 2)).astype(np.float32), "ids": np.array([3, 41], np.int64)}
    got, want = edlc.compile(g).run(x), ort_run(model, x)
    assert_close(got["y"], want["y"], "float16")
    np.testing.assert_array_equal(got["s"], want["s"])


def test_float16_weights_beyond_its_range_are_clipped_not_inf():
    nodes = [helper.make_node("Mul", ["x", "k"], ["y"])]
    model = make_model(nodes, [tensor_info("x", [3])], [tensor_info("y", [3])],
                       {"k": np.array([1e6, -1e6, 2.0], np.float32)})
    g, report = convert_precision(edlc.load_onnx(model), "fp16")
    k = next(n for n in g.nodes if n.op == "Mul").inputs[1].const
    assert k.dtype == np.float16 and list(k) == [65504, -65504, 2] and report.clipped == 2
    gb, rb = convert_precision(edlc.load_onnx(model), "bf16")
    kb = next(n for n in gb.nodes if n.op == "Mul").inputs[1].const
    assert kb.dtype == numpy_dtype("bfloat16") and float(kb[0]) == pytest.approx(1e6, rel=1e-2)
    assert rb.clipped == 0


@pytest.mark.parametrize("half", HALVES)
def test_fused_groups_convert_whole(rng, half):
    """Converted after `fuse` (an explicit pipeline), a fused group's body runs in half too."""
    model = cnn(rng)
    g = PassManager(["fuse"]).run(edlc.load_onnx(model))
    g, report = convert_precision(g, half)
    g.verify()
    fused = [n for n in g.nodes if n.op == "fused"]
    assert fused and all(v.type.dtype == half for n in fused for b in [n.attrs["body"]]
                         for m in b.nodes for v in (*m.inputs, *m.outputs))
    x = {"x": rng.standard_normal((1, 3, 8, 8)).astype(np.float32)}
    assert_close(edlc.compile(g, passes=[]).run(x)["y"], ort_run(model, x)["y"], half)


def test_pipeline_places_the_conversion_before_fusion():
    names = lambda p: [getattr(x, "name", x) for x in p]  # noqa: E731
    p, reports = pipeline_with(default_pipeline(2), "fp16")
    n = names(p)
    assert n.index("float16") == n.index("fuse") - 1
    assert n.index("fold-batchnorm") < n.index("float16") and n.index("recognize") < n.index("float16")
    assert names(pipeline_with(default_pipeline(0), "bf16")[0])[-2:] == ["bfloat16", "eliminate-dead-code"]
    assert names(pipeline_with(["bfloat16", "fuse"], "bf16")[0]) == ["bfloat16", "fuse"]
    assert names(pipeline_with([], "fp16")[0]) == ["float16"]
    with pytest.raises(EdlcError, match="disabled"):
        pipeline_with(default_pipeline(2), "fp16", disabled=["float16"])
    with pytest.raises(EdlcError, match="op_block_list and node_block_list, not calibration"):
        pipeline_with(default_pipeline(2), "fp16", {"calibration": 1})
    with pytest.raises(EdlcError, match="no half-precision type 'fp8'"):
        half_type("fp8")
    assert reports == []


def test_compile_keeps_the_float32_interface_and_half_weights(rng):
    model = cnn(rng)
    x = {"x": rng.standard_normal((1, 3, 8, 8)).astype(np.float32)}
    fp32 = edlc.compile(model)
    for q, half in (("fp16", "float16"), ("bf16", "bfloat16")):
        m = edlc.compile(model, quantize=q)
        assert [s["dtype"] for s in m.inputs + m.outputs] == ["float32", "float32"]
        assert {str(v.dtype) for v in m.params.values()} == {half}
        assert sum(v.nbytes for v in m.params.values()) * 2 == sum(v.nbytes for v in fp32.params.values())
        summary = m.manifest["precision"]
        assert summary["dtype"] == half and summary["casts"] == 2
        assert_close(m.run(x)["y"], ort_run(model, x)["y"], half)


def test_calibration_is_refused_with_half_precision(rng):
    with pytest.raises(InputError, match="quantize='fp16' takes no calibration data"):
        edlc.compile(cnn(rng), quantize="fp16", calibration=[{"x": np.zeros((1, 3, 8, 8), np.float32)}])
    with pytest.raises(EdlcError, match="not one of int8, fp16, bf16"):
        edlc.compile(cnn(rng), quantize="fp8")
