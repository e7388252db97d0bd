"""The issue's done-when: the digits CNN pruned 50% by channels keeps its held-out accuracy within
2 points, without retraining: the classifier that lost half its input features is refit by least
squares to the dense model's outputs on the (unlabelled) training images."""

import pytest

import edlc
from edlc.ir.interpreter import run_graph
from edlc.passes.sparsity import sparsify
from edlc.testing.digits import accuracy, load_digits_split, train_digits_cnn

pytest.importorskip("sklearn")


def test_digits_cnn_pruned_half_keeps_accuracy_within_two_points():
    data = load_digits_split()
    model = train_digits_cnn(data)
    dense = edlc.load_onnx(model)
    acc_dense = accuracy(run_graph(dense, {"x": data.x_test})[0], data.y_test)
    magnitude_only, _ = sparsify(edlc.load_onnx(model), "channel:0.5", measure=False)
    pruned, report = sparsify(edlc.load_onnx(model), "channel:0.5", calibration=[{"x": data.x_train}])
    conv = next(r for r in report.layers if r.name == "conv1")
    assert conv.kind == "channel" and conv.params_after == conv.params_before // 2
    assert "refit on calibration data" in next(r for r in report.layers if r.name == "fc").detail
    module = edlc.compile(pruned, input_shapes={"x": data.x_test.shape})
    acc_pruned = accuracy(module.run({"x": data.x_test})["logits"], data.y_test)
    acc_magnitude = accuracy(run_graph(magnitude_only, {"x": data.x_test})[0], data.y_test)
    print(f"\ndigits: dense {acc_dense:.2f}%, 50% channels pruned {acc_pruned:.2f}% "
          f"(by magnitude alone, no refit: {acc_magnitude:.2f}%)")
    assert acc_dense > 90
    assert acc_dense - acc_pruned <= 2.0


@pytest.mark.parametrize("spec", ["2:4", "block:1x4:0.5"])
def test_digits_weight_pruning_with_refit_keeps_accuracy(spec):
    """2:4 and half the 1x4 blocks of the classifier, refit on unlabelled training images:
    within 2 points of dense (magnitude pruning alone loses 34-44 points)."""
    data = load_digits_split()
    dense = edlc.load_onnx(train_digits_cnn(data))
    acc_dense = accuracy(run_graph(dense, {"x": data.x_test})[0], data.y_test)
    plain, _ = sparsify(dense, spec)
    pruned, report = sparsify(dense, spec, calibration=[{"x": data.x_train}])
    assert "refit on calibration data" in report.layers[0].detail
    module = edlc.compile(pruned, input_shapes={"x": data.x_test.shape})
    acc = accuracy(module.run({"x": data.x_test})["logits"], data.y_test)
    acc_plain = accuracy(run_graph(plain, {"x": data.x_test})[0], data.y_test)
    print(f"\ndigits {spec}: dense {acc_dense:.2f}%, refit {acc:.2f}%, magnitude only {acc_plain:.2f}%")
    assert acc_plain < acc_dense - 10  # the refit is what keeps it
    assert acc_dense - acc <= 2.0
