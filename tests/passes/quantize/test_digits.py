"""The issue's done-when: a CNN trained on sklearn's digits, exported to ONNX, quantized by edlc
(calibration = training images) and compiled int8 for x86 keeps its held-out accuracy within
1 point of float."""

import time

import pytest

import edlc
from edlc.testing.digits import accuracy, load_digits_split, train_digits_cnn
from tests.passes.quantize.helpers import ort_exact

pytest.importorskip("sklearn")


def test_digits_cnn_int8_accuracy_within_one_point():
    t0 = time.perf_counter()
    data = load_digits_split()
    model = train_digits_cnn(data)
    train_s = time.perf_counter() - t0
    shapes = {"x": data.x_test.shape}  # the whole held-out split in one batch
    n = len(data.x_test)
    calib = [{"x": data.x_train[:n]}]  # one batch of training images, at the compiled batch size
    int8 = edlc.compile(model, input_shapes=shapes, quantize="int8", calibration=calib)
    assert int8.manifest["quantization"]["int8_layers"] == 2
    acc_fp32 = accuracy(ort_exact(model, {"x": data.x_test})["logits"], data.y_test)
    acc_int8 = accuracy(int8.run({"x": data.x_test})["logits"], data.y_test)
    print(f"\ndigits: trained in {train_s:.2f} s; held-out accuracy float {acc_fp32:.2f}%, "
          f"int8 {acc_int8:.2f}% ({len(data.y_test)} images)")
    assert train_s < 10
    assert acc_fp32 > 90
    assert abs(acc_fp32 - acc_int8) <= 1.0
