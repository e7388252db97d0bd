"""edlc.qconv2d / edlc.qmatmul: shape rule, numpy reference, and the QDQ decomposition that
onnxruntime runs, which must agree with the reference."""

import numpy as np
import pytest

from edlc.ir.interpreter import run_graph
from tests.passes.quantize.helpers import int8_input, int8_op_graph, ort_exact

CASES = [
    ("qconv2d", (2, 8, 9, 9), (16, 8, 3, 3), {"pads": [1, 1, 1, 1], "strides": [2, 1]}, True, "uint8"),
    ("qconv2d", (1, 8, 7, 7), (8, 1, 3, 3), {"pads": [1, 1, 1, 1], "group": 8, "clip_min": 0.0, "clip_max": 6.0}, True, "uint8"),
    ("qconv2d", (1, 4, 8, 8), (6, 2, 3, 3), {"group": 2, "dilations": [2, 2]}, False, "uint8"),
    ("qconv2d", (1, 4, 6, 6), (5, 4, 1, 1), {"clip_min": 0.0}, True, "int8"),
    ("qmatmul", (3, 5, 32), (32, 12), {}, True, "uint8"),
    ("qmatmul", (4, 32), (32, 10), {"clip_min": 0.0}, False, "int8"),
]


@pytest.mark.parametrize("op,x_shape,w_shape,attrs,quantized,act", CASES)
def test_reference_matches_onnxruntime_on_the_qdq_form(rng, op, x_shape, w_shape, attrs, quantized, act):
    g = int8_op_graph(rng, op, x_shape, w_shape, attrs=attrs, quantized_out=quantized, act=act)
    out = g.outputs[0]
    assert out.type.dtype == (act if quantized else "float32")
    x = int8_input(rng, x_shape, act)
    (ref,) = run_graph(g, {"x": x})
    assert ref.shape == out.type.shape and str(ref.dtype) == out.type.dtype
    model = g.to_onnx(decompose=True)
    assert all(n.domain in ("", "ai.onnx") for n in model.graph.node)  # standard ONNX only
    assert {n.op_type for n in model.graph.node} >= {"DequantizeLinear"}
    got = ort_exact(model, {"x": x})[out.name]
    if quantized:
        diff = np.abs(ref.astype(np.int64) - got.astype(np.int64))
        assert diff.max() <= 1 and (diff > 0).mean() < 0.01  # float rounding may flip a tie
    else:
        np.testing.assert_allclose(ref, got, rtol=1e-5, atol=1e-4 * np.abs(ref).max())


def test_qconv2d_reference_is_exact_integer_arithmetic(rng):
    """acc = sum((x - x_zp) * w) + bias, checked against a direct int64 loop."""
    g = int8_op_graph(rng, "qconv2d", (1, 3, 5, 5), (4, 3, 3, 3), quantized_out=False)
    node = g.nodes[0]
    x = int8_input(rng, (1, 3, 5, 5))
    (ref,) = run_graph(g, {"x": x})
    c = [v.const if v is not None else None for v in node.inputs]
    xc = x.astype(np.int64) - int(c[2])
    w = c[3].astype(np.int64)
    acc = np.zeros((1, 4, 3, 3), np.int64)
    for o in range(4):
        for i in range(3):
            for j in range(3):
                acc[0, o, i, j] = np.sum(xc[0, :, i:i + 3, j:j + 3] * w[o]) + c[8][o]
    want = acc.astype(np.float32) * (np.float32(c[1]) * c[4]).astype(np.float32).reshape(1, 4, 1, 1)
    np.testing.assert_array_equal(ref, want)
