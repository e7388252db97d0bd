"""Quantization parameters and arithmetic (ONNX QuantizeLinear semantics)."""

import numpy as np

from edlc.passes.quantize.params import (
    activation_params,
    dequantize,
    quantize,
    quantize_bias,
    quantize_weight,
    sqnr,
)


def test_activation_params_hold_zero_exactly():
    p = activation_params(0.5, 3.0)  # widened to [0, 3]: 0 is representable
    assert p.dtype == "uint8" and int(p.zero_point) == 0
    p = activation_params(-1.0, 3.0)
    assert p.dequantize(p.zero_point) == 0.0
    assert abs(float(p.scale) - 4.0 / 255) < 1e-7
    s = activation_params(-2.0, 1.0, "int8")
    assert s.dtype == "int8" and int(s.zero_point) == 0 and abs(float(s.scale) - 2.0 / 127) < 1e-7


def test_quantize_rounds_half_to_even_and_saturates():
    q = quantize(np.array([0.5, 1.5, 2.5, -0.5, 300.0, -300.0], np.float32), np.float32(1.0), np.uint8(0))
    np.testing.assert_array_equal(q, [0, 2, 2, 0, 255, 0])
    q = quantize(np.array([1.5, 200.0, -200.0], np.float32), np.float32(1.0), np.int8(0))
    np.testing.assert_array_equal(q, [2, 127, -128])


def test_weights_are_symmetric_per_output_channel(rng):
    w = rng.standard_normal((4, 3, 3, 3)).astype(np.float32)
    w[2] *= 10
    q, p = quantize_weight(w, 0)
    assert q.dtype == np.int8 and p.scale.shape == (4,) and not p.zero_point.any()
    assert np.abs(q).max(axis=(1, 2, 3)).tolist() == [127] * 4
    assert sqnr(w, dequantize(q, p.scale, p.zero_point, 0)) > 38


def test_bias_is_int32_at_the_accumulator_scale():
    b = quantize_bias(np.array([1.0, -2.0], np.float32), np.float32(0.1), np.array([0.5, 0.25], np.float32))
    np.testing.assert_array_equal(b, [20, -80])
    assert b.dtype == np.int32


def test_sqnr():
    x = np.ones(100)
    assert sqnr(x, x) == float("inf")
    assert abs(sqnr(x, x * 1.1) - 20.0) < 1e-9


def test_twin_weights_fit_the_twin_kernels(rng):
    """weights="twins": a matmul weight's four |q| that one int16 lane of the twin kernel adds
    (edlc.lower.int8_packed.u8_twins_fit) sum to 128 at most, also for heavy-tailed weights;
    paired weights do not in general; the twin scale is at most about twice the paired one."""
    from edlc.lower.int8_packed import u8_twins_fit
    from edlc.passes.quantize.params import quantize_weight, twin_sums

    for _ in range(5):
        w = (rng.standard_t(3, (256, 64)) * 0.05).astype(np.float32)
        qt, pt = quantize_weight(w, 1, 0, twins=True)
        qp, pp = quantize_weight(w, 1, 0)
        assert u8_twins_fit(qt) and twin_sums(qt).max() <= 128
        assert not u8_twins_fit(qp)
        assert np.all(pt.scale >= pp.scale) and np.all(pt.scale <= 2.1 * pp.scale)
