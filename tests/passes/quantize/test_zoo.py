"""int8 SQNR against float on the zoo models (small input sizes; 32 random inputs each, which
also serve as calibration data), with the default paired weight range and the residuals read
quantized. The floors guard against regressions (ResNet-18 and the BERT-style encoder at 25 dB
or more); the figures print with `pytest -s`. Measured at full size (224x224, seq 128, 32
inputs) in the quantization notes."""

import pytest

import edlc
from edlc.passes.quantize import quantize
from edlc.testing.zoo import bert_encoder, mobilenet_v2, random_inputs, resnet18

MODELS = [
    ("resnet18", lambda: resnet18(image=32), 28.0),
    ("mobilenet_v2", lambda: mobilenet_v2(image=32), 17.0),
    ("bert", lambda: bert_encoder(seq=16, layers=2), 30.0),
]


@pytest.mark.parametrize("name,make,floor", MODELS, ids=[m[0] for m in MODELS])
def test_zoo_int8_sqnr(name, make, floor):
    model = make()
    samples = [random_inputs(model, seed=i) for i in range(32)]
    g8, report = quantize(edlc.load_onnx(model), samples)
    int8 = sum(r.status == "int8" for r in report.layers)
    print(f"\n{name}: int8 SQNR {report.sqnr_db:.1f} dB vs float, {int8}/{len(report.layers)} "
          f"layers int8, {report.size_before / 1e6:.1f} -> {report.size_after / 1e6:.1f} MB")
    assert int8 == len(report.layers) > 0
    assert report.sqnr_db >= floor
    assert report.size_after < 0.4 * report.size_before  # embeddings stay float
