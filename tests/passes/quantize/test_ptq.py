"""The quantize flow on a small CNN: int8 graph shape, QDQ export, report, accuracy fallback."""

import numpy as np
import pytest

import edlc
from edlc.errors import InputError
from edlc.ir.interpreter import run_graph
from edlc.passes.quantize import quantize
from tests.conftest import ort_run
from tests.passes.quantize.helpers import ort_exact, samples_for, small_cnn


@pytest.fixture
def cnn_and_samples(rng):
    return small_cnn(rng), samples_for(rng, (1, 1, 16, 16), 16)


def test_small_cnn_is_one_int8_region(cnn_and_samples):
    model, samples = cnn_and_samples
    g8, report = quantize(edlc.load_onnx(model), samples)
    hist = g8.op_histogram()
    # one QuantizeLinear at the input; pools (edlc::qmaxpool) and flatten run on uint8; the
    # last layer outputs float: no DequantizeLinear left
    assert hist == {"edlc::qconv2d": 2, "Flatten": 1, "edlc::qmaxpool": 2, "QuantizeLinear": 1,
                    "edlc::qmatmul": 1}
    assert [v.name for v in g8.outputs] == ["logits"]
    assert [r.status for r in report.layers] == ["int8"] * 3
    assert report.size_after < 0.3 * report.size_before
    assert report.sqnr_db > 30 and report.top1_agreement == 1.0
    text = report.format()
    assert "conv1" in text and "SQNR" in text and "size:" in text


def test_qdq_export_runs_in_onnxruntime(cnn_and_samples):
    model, samples = cnn_and_samples
    g8, _ = quantize(edlc.load_onnx(model), samples)
    qdq = g8.to_onnx()
    ops = {n.op_type for n in qdq.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear", "Conv", "MatMul"} <= ops
    assert all(n.domain in ("", "ai.onnx") for n in qdq.graph.node)
    for s in samples[:4]:
        (ref,) = run_graph(g8, s)
        np.testing.assert_allclose(ort_exact(qdq, s)["logits"], ref, rtol=1e-5, atol=1e-5)
        # with all of onnxruntime's optimizations (its own int8 kernels): close, not exact
        float_out = ort_run(model, s)["logits"]
        fused = ort_run(qdq, s)["logits"]
        assert np.argmax(fused) == np.argmax(float_out)


def test_methods_and_symmetric_activations(cnn_and_samples):
    model, samples = cnn_and_samples
    g = edlc.load_onnx(model)
    for method in ("percentile", "entropy"):
        _, report = quantize(g, samples, method=method)
        assert report.method == method and report.sqnr_db > 25
    g8, report = quantize(g, samples, activations="int8")
    assert report.sqnr_db > 25
    q = next(n for n in g8.nodes if n.op == "QuantizeLinear")
    assert q.outputs[0].type.dtype == "int8"


def test_fallback_returns_worst_layers_to_float(cnn_and_samples):
    model, samples = cnn_and_samples
    g = edlc.load_onnx(model)
    g8, report = quantize(g, samples, min_sqnr=1000.0)  # unreachable: everything goes back
    assert len(report.fallbacks) == 3 and report.sqnr_db == float("inf")
    assert "edlc::qconv2d" not in g8.op_histogram()
    _, report = quantize(g, samples, exclude=["conv1"])
    assert [r.status for r in report.layers] == ["float (excluded)", "int8", "int8"]
    _, report = quantize(g, samples, max_drop=0.0)
    assert report.drop == 0.0


def test_bad_options(cnn_and_samples):
    model, samples = cnn_and_samples
    g = edlc.load_onnx(model)
    with pytest.raises(InputError, match="calibration method"):
        quantize(g, samples, method="mse")
    with pytest.raises(InputError, match="no quantizable layers named"):
        quantize(g, samples, exclude=["nope"])


def test_depthwise_weights_take_the_full_range(rng):
    """Pairs only matter to the uint8 x int8 quad kernels, which grouped convs never take:
    a depthwise conv's weights use all of [-127, 127], the pointwise conv's stay paired."""
    from onnx import helper

    from edlc.lower.int8_packed import u8_pairs_fit
    from tests.conftest import make_model, tensor_info

    # every two neighbouring taps large: the paired range would cost the depthwise conv a bit
    dw = np.tile(np.array([1.0, 1.0, -1.0], np.float32), (8, 1, 3, 1)) * rng.uniform(0.5, 1.5, (8, 1, 1, 1))
    pw = rng.standard_normal((8, 8, 1, 1)).astype(np.float32)
    nodes = [helper.make_node("Conv", ["x", "dw"], ["d"], group=8, pads=[1, 1, 1, 1], name="depthwise"),
             helper.make_node("Relu", ["d"], ["r"], name="relu"),
             helper.make_node("Conv", ["r", "pw"], ["y"], name="pointwise")]
    model = make_model(nodes, [tensor_info("x", [1, 8, 6, 6])], [tensor_info("y", [1, 8, 6, 6])],
                       {"dw": dw.astype(np.float32), "pw": pw})
    g8, report = quantize(edlc.load_onnx(model), samples_for(rng, (1, 8, 6, 6)))
    weights = {n.name: n.inputs[3].const for n in g8.nodes if n.op == "qconv2d"}
    assert np.all(np.abs(weights["depthwise.int8"]).max(axis=(1, 2, 3)) == 127)
    assert not u8_pairs_fit(weights["depthwise.int8"], 3)
    assert u8_pairs_fit(weights["pointwise.int8"]) and report.sqnr_db > 30
