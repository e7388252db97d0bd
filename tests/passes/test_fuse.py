"""fuse: anchor + epilogues become one edlc.fused node, built as exactly one kernel."""

import numpy as np
import onnx
from onnx import helper

import edlc
from edlc.pass_manager import PassManager
from tests.conftest import make_model, ort_run, tensor_info


def _fuse(model):
    g = edlc.load_onnx(model)
    pm = PassManager(["fuse"], verify_each=True)
    return pm.run(g), pm


def _check(graph, model, inputs, rtol=1e-4, atol=1e-4):
    m = edlc.compile(graph, passes=[])
    got, want = m.run(inputs), ort_run(model, inputs)
    for k in want:
        np.testing.assert_allclose(got[k], want[k], rtol=rtol, atol=atol, err_msg=k)
    return m


def conv_block(rng):
    w = rng.standard_normal((8, 8, 3, 3)).astype(np.float32) * 0.2
    b = rng.standard_normal(8).astype(np.float32)
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1], name="conv"),
             helper.make_node("Add", ["c", "x"], ["a"], name="residual"),
             helper.make_node("Relu", ["a"], ["y"], name="relu")]
    return make_model(nodes, [tensor_info("x", [1, 8, 10, 10])], [tensor_info("y", [1, 8, 10, 10])], {"w": w, "b": b})


def test_conv_residual_relu_is_one_group_and_one_kernel(rng):
    model = conv_block(rng)
    g, pm = _fuse(model)
    assert [(n.qualified_op, n.attrs.get("kind")) for n in g.nodes] == [("edlc::fused", "Conv+Add+Relu")]
    assert [v.name for v in g.outputs] == ["y"]
    x = rng.standard_normal((1, 8, 10, 10)).astype(np.float32)
    m = _check(g, model, {"x": x})
    assert m.manifest["kernels"] == 1
    unfused = edlc.compile(model, passes=[])
    assert unfused.manifest["kernels"] >= 1  # TVM may group them too; edlc's grouping is exact


def test_conv_and_gemm_with_only_a_bias_are_one_kernel_each(rng):
    """No epilogue, but a bias: lowered alone, the bias would be an add kernel of its own."""
    w = rng.standard_normal((4, 8, 1, 1)).astype(np.float32)
    fc = rng.standard_normal((4 * 10 * 10, 5)).astype(np.float32) * 0.1
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"], name="project"),
             helper.make_node("Flatten", ["c"], ["f"], name="flatten"),
             helper.make_node("Gemm", ["f", "fc", "fb"], ["y"], name="classifier")]
    model = make_model(nodes, [tensor_info("x", [1, 8, 10, 10])], [tensor_info("y", [1, 5])],
                       {"w": w, "b": rng.standard_normal(4).astype(np.float32), "fc": fc,
                        "fb": rng.standard_normal(5).astype(np.float32)})
    g, _ = _fuse(model)
    assert [(n.qualified_op, n.attrs.get("kind")) for n in g.nodes] == [
        ("edlc::fused", "Conv"), ("Flatten", None), ("edlc::fused", "Gemm")]
    assert [v.name for v in g.outputs] == ["y"]
    m = _check(g, model, {"x": rng.standard_normal((1, 8, 10, 10)).astype(np.float32)})
    assert m.manifest["kernels"] == 2  # the conv and the gemm (Flatten is a view): no bias adds


def test_nhwc_conv_reads_the_model_input_through_its_padding_copy(rng):
    """At -O3 the conv runs NHWC; the Transpose of the NCHW model input joins its group."""
    w = rng.standard_normal((8, 3, 3, 3)).astype(np.float32) * 0.2
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1], strides=[2, 2]),
             helper.make_node("Relu", ["c"], ["y"])]
    model = make_model(nodes, [tensor_info("x", [1, 3, 16, 16])], [tensor_info("y", [1, 8, 8, 8])],
                       {"w": w, "b": rng.standard_normal(8).astype(np.float32)})
    g = PassManager(["layout", "fuse"], verify_each=True).run(edlc.load_onnx(model))
    assert [(n.op, n.attrs.get("kind")) for n in g.nodes] == [
        ("fused", "Transpose+Conv+Relu"), ("Transpose", None)]  # and the NHWC output back
    m = _check(g, model, {"x": rng.standard_normal((1, 3, 16, 16)).astype(np.float32)})
    assert m.manifest["kernels"] == 2


def test_matmul_bias_silu(rng):
    w = rng.standard_normal((16, 32)).astype(np.float32) * 0.2
    b = rng.standard_normal(32).astype(np.float32)
    nodes = [helper.make_node("MatMul", ["x", "w"], ["mm"]),
             helper.make_node("Add", ["b", "mm"], ["h"]),
             helper.make_node("Sigmoid", ["h"], ["s"]),
             helper.make_node("Mul", ["s", "h"], ["y"])]
    model = make_model(nodes, [tensor_info("x", [2, 4, 16])], [tensor_info("y", [2, 4, 32])], {"w": w, "b": b})
    g, _ = _fuse(model)
    assert [n.attrs.get("kind") for n in g.nodes] == ["MatMul+Add+SiLU"]
    x = rng.standard_normal((2, 4, 16)).astype(np.float32)
    assert _check(g, model, {"x": x}).manifest["kernels"] == 1


def test_gemm_clip_and_hardswish(rng):
    w = rng.standard_normal((32, 16)).astype(np.float32)
    b = rng.standard_normal(32).astype(np.float32)
    lo, hi = np.array(0, np.float32), np.array(6, np.float32)
    nodes = [helper.make_node("Gemm", ["x", "w", "b"], ["g"], transB=1),
             helper.make_node("Clip", ["g", "lo", "hi"], ["c"]),
             helper.make_node("HardSwish", ["c"], ["y"])]
    model = make_model(nodes, [tensor_info("x", [4, 16])], [tensor_info("y", [4, 32])], {"w": w, "b": b, "lo": lo, "hi": hi})
    g, _ = _fuse(model)
    assert [n.attrs.get("kind") for n in g.nodes] == ["Gemm+Clip+HardSwish"]
    _check(g, model, {"x": rng.standard_normal((4, 16)).astype(np.float32)})


def test_rejections_say_why(rng):
    w = rng.standard_normal((8, 8, 1, 1)).astype(np.float32)
    big = rng.standard_normal((3, 8, 4, 4)).astype(np.float32)
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], name="conv"),
             helper.make_node("Relu", ["c"], ["r"], name="relu"),
             helper.make_node("Add", ["r", "c"], ["y"], name="add_both"),
             helper.make_node("Conv", ["x", "w"], ["c2"], name="conv2"),
             helper.make_node("Add", ["c2", "big"], ["z"], name="broadcast_add")]
    model = make_model(nodes, [tensor_info("x", [1, 8, 4, 4])], [tensor_info("y", [1, 8, 4, 4]), tensor_info("z", [3, 8, 4, 4])],
                   {"w": w, "big": big})
    g, pm = _fuse(model)
    report = "\n".join(pm.records[0].report)
    assert "'c' (from Conv 'conv') is also read by" in report
    assert "Add 'broadcast_add' changes float32[1, 8, 4, 4] into float32[3, 8, 4, 4]" in report
    x = rng.standard_normal((1, 8, 4, 4)).astype(np.float32)
    _check(g, model, {"x": x})


def test_fused_graph_exports_to_standard_onnx(rng):
    model = conv_block(rng)
    g, _ = _fuse(model)
    out = g.to_onnx()
    onnx.checker.check_model(out)
    assert [n.op_type for n in out.graph.node] == ["Conv", "Add", "Relu"]
    x = rng.standard_normal((1, 8, 10, 10)).astype(np.float32)
    np.testing.assert_allclose(ort_run(out, {"x": x})["y"], ort_run(model, {"x": x})["y"], rtol=1e-6)
    internal = g.to_onnx(decompose=False)
    assert [(n.domain, n.op_type) for n in internal.graph.node] == [("edlc", "fused")]


def test_fused_reference_matches_onnxruntime(rng):
    from edlc.ir.interpreter import run_graph

    model = conv_block(rng)
    g, _ = _fuse(model)
    x = rng.standard_normal((1, 8, 10, 10)).astype(np.float32)
    (got,) = run_graph(g, {"x": x})
    np.testing.assert_allclose(got, ort_run(model, {"x": x})["y"], rtol=1e-5, atol=1e-5)
