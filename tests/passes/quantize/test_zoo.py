"""int8 SQNR against float on the zoo models (32 random inputs each, which also serve as
calibration data), with the default paired weight range and the residuals read quantized. The
requirement is 25 dB: ResNet-18 and the BERT-style encoder meet it at small sizes, MobileNetV2
at its own size (224x224). At 32x32 its last seven blocks run on 1x1 and 2x2 maps and the
random network amplifies quantization noise by 8-10 dB (3 dB at 224x224; ResNet-18 attenuates
it), so int8 everywhere tops out near 22 dB there: that case only guards against regressions.
The figures print with `pytest -s`."""

import pytest

import edlc
from edlc.passes.quantize import quantize
from edlc.testing.zoo import bert_encoder, mobilenet_v2, random_inputs, resnet18

MODELS = [
    pytest.param("resnet18", lambda: resnet18(image=32), 28.0, id="resnet18"),
    pytest.param("mobilenet_v2", lambda: mobilenet_v2(image=32), 20.0, id="mobilenet_v2"),
    pytest.param("mobilenet_v2-224", mobilenet_v2, 25.0, id="mobilenet_v2-224", marks=pytest.mark.slow),
    pytest.param("bert", lambda: bert_encoder(seq=16, layers=2), 30.0, id="bert"),
]


@pytest.mark.parametrize("name,make,floor", MODELS)
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


def test_bert_twin_weights_run_exactly_on_the_twin_kernels():
    """weights="twins" (the matmul weights within the range of AVX2's twin kernels, two
    uint8 x int8 quads per int16 sum): about 1.5 dB below paired on the BERT-style encoder, still
    above 25 dB, and the compiled model computes the quantized graph as onnxruntime's unfused QDQ
    does (equal but where GELU's erf approximation lands on the other side of a rounding
    boundary, rarely)."""
    from edlc.passes.quantize.params import sqnr
    from tests.passes.quantize.helpers import ort_exact

    model = bert_encoder(seq=16, layers=2)
    samples = [random_inputs(model, seed=i) for i in range(16)]
    g8, report = quantize(edlc.load_onnx(model), samples, weights="twins")
    assert report.sqnr_db >= 28.0
    m = edlc.compile(g8)
    got, want = m.run(samples[0])["last_hidden_state"], ort_exact(g8.to_onnx(), samples[0])["last_hidden_state"]
    assert sqnr(want, got) > 50
