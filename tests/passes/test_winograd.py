"""The winograd pass: 3x3 stride-1 convs become input transform, batch MatMul and output
transform with the group's epilogue; numerics against onnxruntime (channel counts, sizes that
the tiles do not divide, bias / residual / activation epilogues); only eligible convs, each
other one with a reason; only in CPU targets' -O3 pipelines."""

from __future__ import annotations

import functools

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import edlc
from edlc.driver import import_model, optimize
from edlc.ir.interpreter import run_graph
from edlc.pass_manager import PassInfo, default_pipeline
from edlc.passes import winograd as W
from edlc.target import get_target
from tests.conftest import assert_matches_ort, ort_run


def block(cin: int = 16, cout: int = 16, size: int | tuple[int, int] = 9, *, bias: bool = True,
          residual: bool = True, act: str | None = "Relu", stride: int = 1, dilation: int = 1,
          group: int = 1, kernel: int = 3, seed: int = 0) -> onnx.ModelProto:
    """A 1x1 conv + ReLU (so the conv under test reads NHWC data at -O3, as inside a network),
    then the conv, an optional residual add of the first conv's output and an activation."""
    h, w = (size, size) if isinstance(size, int) else size
    rng = np.random.default_rng(seed)
    pad = dilation * (kernel // 2)
    inits = {"w0": rng.standard_normal((cin, cin, 1, 1)) / np.sqrt(cin),
             "w": rng.standard_normal((cout, cin // group, kernel, kernel)) * np.sqrt(2 / (cin * kernel * kernel / group))}
    conv_in = ["r0", "w"]
    if bias:
        inits["b"] = rng.standard_normal(cout) * 0.1
        conv_in.append("b")
    nodes = [helper.make_node("Conv", ["x", "w0"], ["c0"]), helper.make_node("Relu", ["c0"], ["r0"]),
             helper.make_node("Conv", conv_in, ["c"], kernel_shape=[kernel, kernel], pads=[pad] * 4,
                              strides=[stride] * 2, dilations=[dilation] * 2, group=group)]
    y = "c"
    oh, ow = (h - 1) // stride + 1, (w - 1) // stride + 1
    if residual:
        nodes.append(helper.make_node("Add", [y, "r0"], ["a"]))
        y = "a"
    if act:
        nodes.append(helper.make_node(act, [y], ["y"]))
        y = "y"
    g = helper.make_graph(
        nodes, "block", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, cin, h, w])],
        [helper.make_tensor_value_info(y, TensorProto.FLOAT, [1, cout, oh, ow])],
        [numpy_helper.from_array(a.astype(np.float32), n) for n, a in inits.items()])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    return model


def _inputs(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    shape = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    return {"x": np.random.default_rng(1).standard_normal(shape).astype(np.float32)}


def _pipeline(tile: int | None) -> list:
    """The -O3 pipeline with the winograd pass forced to one tile size."""
    forced = PassInfo("winograd", functools.partial(W.winograd, tile=tile), "", 3)
    return [forced if n == "winograd" else n for n in default_pipeline(3)]


def _ops(graph) -> list[str]:
    return [n.qualified_op for n in graph.all_nodes()]


# ---- the transforms themselves (numpy) -----------------------------------------------------------
@pytest.mark.parametrize("m", W.TILES)
@pytest.mark.parametrize("size", [(5, 5), (8, 11)])
def test_references_compose_to_the_direct_conv(m, size):
    from edlc.ir.graph import Node, Value
    from edlc.ir.types import TensorType

    rng = np.random.default_rng(0)
    n, (h, w), cin, cout = 2, size, 3, 5
    x = rng.standard_normal((n, h, w, cin))
    wt = rng.standard_normal((cout, 3, 3, cin))
    bias = rng.standard_normal(cout)
    pads = [1, 0, 1, 2]  # top, left, bottom, right
    oh, ow = h + pads[0] + pads[2] - 2, w + pads[1] + pads[3] - 2
    xin = Node("WinogradInput", [Value("x", TensorType(x.shape, "float64"))], [Value("v", None)],
               {"tile": m, "pads": pads, "rows": W.padded_rows(n * W.tiles_of(oh, m) * W.tiles_of(ow, m)) + 3},
               domain="edlc")
    (v,) = W._reference_input(xin, [x])
    u = W.transform_weight(wt, m)
    prods = np.matmul(v, u)
    out = Node("WinogradOutput", [Value("m", None), Value("b", None)], [Value("y", None)],
               {"tile": m, "size": [n, oh, ow]}, domain="edlc")
    (y,) = W._reference_output(out, [prods, bias])
    xp = np.pad(x, ((0, 0), (pads[0], pads[2]), (pads[1], pads[3]), (0, 0)))
    want = sum(np.einsum("nhwc,oc->nhwo", xp[:, i:i + oh, j:j + ow], wt[:, i, j])
               for i in range(3) for j in range(3)) + bias
    np.testing.assert_allclose(y, want, rtol=1e-10, atol=1e-10)


# ---- the rewrite ---------------------------------------------------------------------------------
def test_conv_group_becomes_transforms_and_a_batch_matmul():
    graph, pm = optimize(import_model(block(size=16)), 3, target=get_target("x86"))
    top = [n.qualified_op for n in graph.nodes]
    assert "edlc::WinogradInput" in top and "MatMul" in top
    group = next(n for n in graph.nodes if n.op == "fused" and "Winograd" in n.attrs["kind"])
    assert group.attrs["kind"] == "WinogradOutput+Add+Relu"
    assert [n.op for n in group.attrs["body"].nodes] == ["WinogradOutput", "Add", "Relu"]
    matmul = next(n for n in graph.nodes if n.op == "MatMul")
    weight = matmul.inputs[1]
    assert weight.is_constant and weight.const.shape == (36, 16, 16)  # F(4x4, 3x3) on 16x16
    # the interpreter (numpy references) agrees with onnxruntime, and so does onnxruntime on the
    # graph exported as standard ONNX
    model = block(size=16)
    want = ort_run(model, _inputs(model))["y"]
    got = run_graph(graph, [_inputs(model)["x"]])[0]
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    exported = graph.to_onnx()
    assert not any(n.domain == "edlc" for n in exported.graph.node)
    np.testing.assert_allclose(ort_run(exported, _inputs(model))["y"], want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("tile,cin,cout,size,bias,residual,act", [
    (2, 16, 16, 7, True, True, "Relu"),      # odd size: the last tile is partly padding
    (4, 16, 24, (9, 13), True, False, "Relu"),  # neither side a multiple of 4
    (4, 24, 16, 6, False, False, None),      # no bias, no epilogue
    (2, 32, 32, (5, 10), True, True, "Sigmoid"),
])
def test_matches_onnxruntime(tile, cin, cout, size, bias, residual, act):
    model = block(cin, cout, size, bias=bias, residual=residual and cin == cout, act=act)
    module = edlc.compile(model, opt_level=3, passes=_pipeline(tile))
    graph, _ = optimize(import_model(model), passes=_pipeline(tile))
    assert "edlc::WinogradOutput" in _ops(graph)
    assert_matches_ort(module, model, _inputs(model))


def test_default_tiles_by_output_size():
    assert W.choose_tile(56, 56) == W.choose_tile(14, 14) == 4
    assert W.choose_tile(7, 7) == 2
    assert W.choose_tile(3, 3) is None
    assert W.padded_rows(49) == 50 and W.padded_rows(16) == 16


@pytest.mark.parametrize("kwargs,reason", [
    ({"stride": 2, "residual": False}, "strides"),
    ({"dilation": 2}, "dilations"),
    ({"group": 2}, "groups"),
    ({"kernel": 1}, "not 3x3"),
    ({"cin": 8, "cout": 8}, "channels"),
    ({"cin": 16, "cout": 32, "residual": False}, None),  # eligible: rewritten
    ({"size": 3}, "too small"),
])
def test_ineligible_convs_stay_and_say_why(kwargs, reason):
    records: list = []
    graph, _ = optimize(import_model(block(**{"size": 16, **kwargs})), 3,
                        target=get_target("x86"), records=records)
    report = [line for r in records if r.name == "winograd" for line in r.report]
    if reason is None:
        assert "edlc::WinogradInput" in _ops(graph)
        assert all("not 3x3" in line for line in report), report  # only the 1x1 conv before it
        return
    assert "edlc::WinogradInput" not in _ops(graph)
    assert any(reason in line for line in report), report


def test_a_conv_reading_its_input_through_a_transpose_prologue_is_left():
    """The model's first conv reads NCHW input through a Transpose in its group."""
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.standard_normal((16, 16, 3, 3)).astype(np.float32), "w")
    g = helper.make_graph([helper.make_node("Conv", ["x", "w"], ["y"], pads=[1, 1, 1, 1])], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 16, 12, 12])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 16, 12, 12])], [w])
    records: list = []
    graph, _ = optimize(import_model(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])),
                        3, records=records)
    assert "edlc::WinogradInput" not in _ops(graph)
    assert any("prologue" in line for r in records if r.name == "winograd" for line in r.report)


def test_only_cpu_targets_and_only_at_O3():
    assert "winograd" in default_pipeline(3, get_target("x86"))
    assert "winograd" in default_pipeline(3, get_target("arm"))
    assert "winograd" not in default_pipeline(2, get_target("x86"))
    assert "winograd" not in default_pipeline(3, get_target("cuda"))
    assert "winograd" not in default_pipeline(3, get_target("cortex-m4"))


def test_exported_graph_runs_in_onnxruntime_with_padding_rows():
    """28x28 outputs: 49 tiles, padded to 50 rows of the product; 7x7: F(2x2, 3x3)."""
    for size in (28, 7):
        model = block(16, 16, size)
        graph, _ = optimize(import_model(model), 3, target=get_target("x86"))
        assert "edlc::WinogradInput" in _ops(graph)
        exported = graph.to_onnx()
        np.testing.assert_allclose(ort_run(exported, _inputs(model))["y"],
                                   ort_run(model, _inputs(model))["y"], rtol=1e-4, atol=1e-4)
