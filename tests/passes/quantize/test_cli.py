"""`edlc quantize` and `edlc compile --quantize int8 --calib`: QDQ ONNX that onnxruntime runs,
artifacts that run, the report, one-line errors."""

import json

import numpy as np
import onnx
from onnx import numpy_helper

from edlc.cli import main
from tests.passes.quantize.helpers import ort_exact, small_cnn


def _files(rng, tmp_path):
    model = tmp_path / "cnn.onnx"
    onnx.save(small_cnn(rng), model)
    calib = tmp_path / "calib.npz"
    np.savez(calib, x=rng.standard_normal((8, 1, 16, 16)).astype(np.float32))
    return model, calib


def test_quantize_writes_qdq_onnx_and_report(rng, tmp_path, capsys):
    model, calib = _files(rng, tmp_path)
    out, rep = tmp_path / "cnn.int8.onnx", tmp_path / "report.json"
    assert main(["quantize", str(model), "--calib", str(calib), "-o", str(out),
                 "--calib-method", "percentile", "--report", str(rep)]) == 0
    text = capsys.readouterr().out
    assert "SQNR" in text and "conv2" in text and "size:" in text
    report = json.loads(rep.read_text())
    assert report["method"] == "percentile" and report["sqnr_db"] > 25
    assert [layer["status"] for layer in report["layers"]] == ["int8"] * 3
    qdq = onnx.load(out)
    onnx.checker.check_model(qdq)
    x = rng.standard_normal((1, 1, 16, 16)).astype(np.float32)
    assert ort_exact(qdq, {"x": x})["logits"].shape == (1, 10)


def test_compile_with_quantize_int8(rng, tmp_path, capsys):
    model, calib = _files(rng, tmp_path)
    art = tmp_path / "art"
    assert main(["compile", str(model), "--quantize", "int8", "--calib", str(calib),
                 "--max-drop", "1", "-o", str(art)]) == 0
    manifest = json.loads((art / "manifest.json").read_text())
    assert manifest["quantization"]["int8_layers"] == 3
    assert main(["run", str(art)]) == 0


def test_errors_are_one_line(rng, tmp_path, capsys):
    model, calib = _files(rng, tmp_path)
    assert main(["compile", str(model), "--quantize", "int8", "-o", str(tmp_path / "a")]) == 2
    assert "needs calibration data" in capsys.readouterr().err
    assert main(["quantize", str(model), "--calib", str(tmp_path / "missing.npz"),
                 "-o", str(tmp_path / "q.onnx")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("edlc: error:") and "cannot read calibration data" in err
    assert not (tmp_path / "q.onnx").exists()


def test_weight_range_flag(rng, tmp_path, capsys):
    """--weights full: [-127, 127] per channel (the int16-pair kernels on AVX2); the default
    paired range keeps x86's uint8 x int8 pairs within int16; a bad value is a one-line error."""
    from edlc.lower.int8_packed import u8_pairs_fit
    from edlc.passes.quantize.params import conv_pair_axis

    model, calib = _files(rng, tmp_path)
    ranges = {}
    for weights in ("paired", "full"):
        out, rep = tmp_path / f"{weights}.onnx", tmp_path / f"{weights}.json"
        assert main(["quantize", str(model), "--calib", str(calib), "-o", str(out), "--weights", weights,
                     "--report", str(rep)]) == 0
        assert f"{weights} range" in capsys.readouterr().out
        assert json.loads(rep.read_text())["weights"] == weights
        w = [numpy_helper.to_array(t) for t in onnx.load(out).graph.initializer if t.name.endswith("weight_int8")]
        ranges[weights] = [u8_pairs_fit(a, conv_pair_axis(a.shape) if a.ndim == 4 else 0) for a in w]
    assert all(ranges["paired"]) and not all(ranges["full"])
    assert main(["quantize", str(model), "--calib", str(calib), "-o", str(tmp_path / "x.onnx"),
                 "--weights", "7bit"]) == 2
    assert "invalid choice" in capsys.readouterr().err
