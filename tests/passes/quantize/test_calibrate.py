"""Calibration: range estimators and calibration data loading."""

import numpy as np
import pytest

import edlc
from edlc.errors import InputError
from edlc.passes.quantize.calibrate import (
    calibrate,
    entropy_threshold,
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
