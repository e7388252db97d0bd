"""The pointwise-matmul pass: 1x1 stride-1 NHWC convs (alone or anchoring a fused group)
become MatMul groups over the pixels between reshapes; numerics against onnxruntime with
bias, residual and activation epilogues and pixel counts no register block divides; chains of
1x1 convs pass the flat tensor along without reshaping back; only eligible convs, each other
one with a reason; only in CPU targets' -O3 pipelines."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import helper

import edlc
from edlc.driver import import_model, optimize
from edlc.ir.interpreter import run_graph
from edlc.pass_manager import default_pipeline
from edlc.target import get_target
from tests.conftest import assert_matches_ort, make_model, ort_run, tensor_info


def _w(rng, cout, cin, k=1):
    return (rng.standard_normal((cout, cin, k, k)) / np.sqrt(cin * k * k)).astype(np.float32)


def chain(size: int = 7, *, stride: int = 1, pad: int = 0, group: int = 1, seed: int = 0):
    """3x3 depthwise conv (so the 1x1 convs read NHWC data, as inside MobileNetV2), a 1x1
    expand with Clip, a 1x1 project with bias and a residual add of the depthwise output."""
    rng = np.random.default_rng(seed)
    c, e = 16, 48
    inits = {"wd": _w(rng, c, 1, 3), "we": _w(rng, e, c // group), "be": rng.standard_normal(e).astype("f"),
             "wp": _w(rng, c, e), "bp": rng.standard_normal(c).astype("f"),
             "lo": np.array(0, np.float32), "hi": np.array(6, np.float32)}
    out = (size + 2 * pad - 1) // stride + 1
    nodes = [helper.make_node("Conv", ["x", "wd"], ["d"], pads=[1] * 4, group=c),
             helper.make_node("Relu", ["d"], ["r"]),
             helper.make_node("Conv", ["r", "we", "be"], ["ce"], strides=[stride] * 2, pads=[pad] * 4,
                              group=group),
             helper.make_node("Clip", ["ce", "lo", "hi"], ["xe"]),
             helper.make_node("Conv", ["xe", "wp", "bp"], ["cp"])]
    if stride == 1 and pad == 0:
        nodes.append(helper.make_node("Add", ["cp", "r"], ["y"]))
    else:
        nodes.append(helper.make_node("Identity", ["cp"], ["y"]))
    return make_model(nodes, [tensor_info("x", [1, c, size, size])], [tensor_info("y", [1, c, out, out])],
                      inits)


@pytest.mark.parametrize("size", [7, 14, 5])  # 49 and 196 pixels: partial / whole row blocks
def test_groups_become_matmuls_and_match_onnxruntime(rng, size):
    model = chain(size)
    x = rng.standard_normal((1, 16, size, size)).astype(np.float32)
    graph, _ = optimize(import_model(model), 3, target=get_target("x86"))
    kinds = [n.attrs["kind"] for n in graph.nodes if n.op == "fused"]
    assert kinds.count("MatMul+Add+Clip") == 1 and kinds.count("MatMul+Add+Add") == 1, kinds
    # the project reads the expand's flat output: one reshape into pixels, one back
    assert sum(n.op == "Reshape" for n in graph.nodes) == 3, graph  # input, residual, output
    got = run_graph(graph, [x])[0]
    np.testing.assert_allclose(got, ort_run(model, {"x": x})["y"], rtol=1e-4, atol=1e-4)
    assert_matches_ort(edlc.compile(model, opt_level=3), model, {"x": x})


@pytest.mark.parametrize("kw, reason", [({"stride": 2}, "strided"), ({"pad": 1}, "padded"),
                                        ({"group": 2}, "grouped")])
def test_ineligible_convs_stay_and_say_why(rng, kw, reason):
    model = chain(8, **kw)
    out, pm = optimize(import_model(model), 3, target=get_target("x86"))
    report = [line for r in pm.records for line in (r.report or []) if "pointwise-matmul" in line]
    assert any(reason in line for line in report), report
    x = rng.standard_normal((1, 16, 8, 8)).astype(np.float32)
    np.testing.assert_allclose(run_graph(out, [x])[0], ort_run(model, {"x": x})["y"],
                               rtol=1e-4, atol=1e-4)
    assert_matches_ort(edlc.compile(model, opt_level=3), model, {"x": x})


def test_only_in_cpu_pipelines_at_opt_level_3():
    assert "pointwise-matmul" in default_pipeline(3, get_target("x86"))
    assert "pointwise-matmul" not in default_pipeline(2, get_target("x86"))
    assert "pointwise-matmul" not in default_pipeline(3, get_target("cuda"))
