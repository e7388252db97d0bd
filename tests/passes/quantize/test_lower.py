"""Lowering of the int8 ops to TVM: compiled x86 code computes exactly what the IR reference
does (int32 accumulation, the same float32 epilogue), end to end through compile()."""

import numpy as np
import pytest

import edlc
from edlc.ir.interpreter import run_graph
from edlc.passes.quantize import quantize
from tests.passes.quantize.helpers import (
    int8_input,
    int8_op_graph,
    ort_exact,
    samples_for,
    small_cnn,
)

CASES = [
    ("qconv2d", (2, 8, 9, 9), (8, 2, 3, 3), {"pads": [1, 0, 1, 2], "strides": [2, 1], "group": 4,
                                            "clip_min": 0.0, "clip_max": 6.0}, True, "uint8"),
    ("qconv2d", (1, 4, 7, 7), (6, 4, 3, 3), {"dilations": [2, 1]}, False, "int8"),
    ("qmatmul", (2, 5, 48), (48, 24), {"clip_min": 0.0}, True, "uint8"),
]


@pytest.mark.parametrize("op,x_shape,w_shape,attrs,quantized,act", CASES)
def test_int8_op_compiles_to_the_reference(rng, op, x_shape, w_shape, attrs, quantized, act):
    g = int8_op_graph(rng, op, x_shape, w_shape, attrs=attrs, quantized_out=quantized, act=act)
    m = edlc.compile(g, passes=[])
    assert m.manifest["kernels"] == 1  # int32 accumulation and requantization in one kernel
    x = int8_input(rng, x_shape, act)
    (ref,) = run_graph(g, {"x": x})
    got = m.run({"x": x})[g.outputs[0].name]
    assert got.dtype == ref.dtype
    np.testing.assert_array_equal(got, ref)


def test_compile_quantize_int8_matches_the_qdq_model(rng):
    model = small_cnn(rng)
    samples = samples_for(rng, (1, 1, 16, 16), 8)
    m = edlc.compile(model, quantize="int8", calibration=samples)
    q = m.manifest["quantization"]
    assert q["int8_layers"] == 3 and q["sqnr_db"] > 30
    g8, _ = quantize(edlc.load_onnx(model), samples)
    qdq = g8.to_onnx()
    for s in samples[:3]:
        got = m.run(s)["logits"]
        np.testing.assert_array_equal(got, run_graph(g8, s)[0])
        np.testing.assert_allclose(got, ort_exact(qdq, s)["logits"], rtol=1e-5, atol=1e-5)


def test_quantize_needs_calibration(rng):
    from edlc.errors import EdlcError, InputError

    model = small_cnn(rng)
    with pytest.raises(InputError, match="needs calibration"):
        edlc.compile(model, quantize="int8")
    with pytest.raises(InputError, match="only used with"):
        edlc.compile(model, calibration=[{"x": np.zeros((1, 1, 16, 16), np.float32)}])
    with pytest.raises(InputError, match="takes no calibration"):
        edlc.compile(model, quantize="fp16", calibration=[{"x": np.zeros((1, 1, 16, 16), np.float32)}])
    with pytest.raises(EdlcError, match="int4"):
        edlc.compile(model, quantize="int4")
