"""Calibration: range estimators and calibration data loading."""

import numpy as np
import pytest
from onnx import helper

import edlc
from edlc.errors import InputError
from edlc.passes.quantize.calibrate import (
    calibrate,
    entropy_threshold,
    input_means,
    load_calibration,
    percentile_range,
)
from tests.passes.quantize.helpers import samples_for, small_cnn


def test_percentile_clips_rare_outliers(rng):
    data = np.concatenate([rng.standard_normal(100_000), [80.0]])
    hist, edges = np.histogram(data, bins=2048, range=(-80, 80))
    lo, hi = percentile_range(hist, edges, 99.9, data.min(), data.max())
    assert -4.5 < lo < -2.5 and 2.5 < hi < 4.5


def test_entropy_threshold_cuts_a_long_tail(rng):
    data = np.abs(np.concatenate([rng.standard_normal(100_000), rng.uniform(10, 40, 20)]))
    hist, _ = np.histogram(data, bins=2048, range=(0, 40))
    t = entropy_threshold(hist, 128) * 40 / 2048
    assert 2.0 < t < 15.0


def test_methods_on_a_model(rng):
    model = small_cnn(rng)
    g = edlc.load_onnx(model)
    samples = samples_for(rng, (1, 1, 16, 16))
    values = ["x", "r1", "logits"]
    ranges = {m: calibrate(g, samples, values, m) for m in ("minmax", "percentile", "entropy")}
    lo, hi = ranges["minmax"]["r1"]
    assert lo == 0.0 and hi > 0
    for m in ("percentile", "entropy"):
        assert ranges[m]["r1"][0] == 0.0 and 0 < ranges[m]["r1"][1] <= hi
        assert ranges[m]["x"][0] >= ranges["minmax"]["x"][0]


def test_load_calibration_from_npz(rng, tmp_path):
    g = edlc.load_onnx(small_cnn(rng))
    batch = rng.standard_normal((5, 1, 16, 16)).astype(np.float32)
    np.savez(tmp_path / "a.npz", x=batch)  # a batch of rank 4: five batch-1 samples
    samples = load_calibration(tmp_path / "a.npz", g)
    assert len(samples) == 5 and samples[0]["x"].shape == (1, 1, 16, 16)
    np.savez(tmp_path / "b.npz", x=batch[:, None])  # [samples, 1, 1, 16, 16]
    assert len(load_calibration(str(tmp_path / "b.npz"), g)) == 5
    np.savez(tmp_path / "c.npz", y=batch)
    with pytest.raises(InputError, match="no array for input 'x'"):
        load_calibration(tmp_path / "c.npz", g)


def test_load_calibration_checks_samples(rng):
    g = edlc.load_onnx(small_cnn(rng))
    with pytest.raises(InputError, match="needs calibration data"):
        load_calibration(None, g)
    with pytest.raises(InputError, match="shape"):
        load_calibration([{"x": np.zeros((1, 1, 8, 8), np.float32)}], g)
    with pytest.raises(InputError, match="single dict"):
        load_calibration({"x": np.zeros((1, 1, 16, 16))}, g)
    (s,) = load_calibration([{"x": np.zeros((1, 1, 16, 16))}], g)
    assert s["x"].dtype == np.float32


@pytest.mark.parametrize("kind", ["conv", "matmul"])
def test_bias_correction_keeps_the_mean_output(rng, kind):
    """The corrected bias makes the int8 weight's mean output per channel on the calibration
    data the float weight's: input_means (windows of a padded, strided, grouped conv) times
    the weight error is exactly the shift to remove."""
    from edlc.passes.quantize.layers import find_layers
    from edlc.passes.quantize.rewrite import layer_weight
    from tests.conftest import make_model, ort_run, tensor_info

    if kind == "conv":
        shape, w = [1, 4, 7, 7], rng.standard_normal((6, 2, 3, 3)).astype(np.float32)
        node = helper.make_node("Conv", ["x", "w", "b"], ["y"], group=2, strides=[2, 2],
                                pads=[1, 0, 0, 1], name="layer")
        out, b = [1, 6, 3, 4], rng.standard_normal(6).astype(np.float32)
    else:
        shape, w = [2, 3, 5], rng.standard_normal((5, 4)).astype(np.float32)
        node = helper.make_node("MatMul", ["x", "w"], ["y"], name="layer")
        out, b = [2, 3, 4], None

    def model(weight, bias):
        inits = {"w": weight, **({"b": bias} if bias is not None else {})}
        return make_model([node], [tensor_info("x", shape)], [tensor_info("y", out)], inits)

    samples = [{"x": (np.abs(rng.standard_normal(shape)) + 0.5).astype(np.float32)} for _ in range(4)]
    g = edlc.load_onnx(model(w, b))
    (layer,), _ = find_layers(g)
    means = input_means(g, samples, [layer])[layer.name]
    wq, pw, bias = layer_weight(layer, means=means)
    _, _, plain = layer_weight(layer)
    wd = pw.dequantize(wq)
    axes = (0, 2, 3) if kind == "conv" else (0, 1)

    def mean_out(m):
        return np.mean([ort_run(m, s)["y"] for s in samples], axis=0).mean(axis=axes)

    want = mean_out(model(w, b))
    if kind == "matmul":  # a MatMul has no bias input: compare with the shift added after it
        got = mean_out(model(wd, None)) + bias
        before = mean_out(model(wd, None))
    else:
        got, before = mean_out(model(wd, bias.astype(np.float32))), mean_out(model(wd, plain))
    np.testing.assert_allclose(got, want, atol=1e-5)
    assert np.abs(before - want).max() > 10 * np.abs(got - want).max()
