"""The `edlc` command as users type it: exit codes, one-line errors, nothing half-written."""

import subprocess
import sys

import numpy as np
import onnx
import pytest

from edlc.cli import main
from edlc.testing.zoo import resnet18
from tests.conftest import ort_run, parse


@pytest.fixture(scope="module")
def small_resnet(tmp_path_factory):
    path = tmp_path_factory.mktemp("m") / "resnet.onnx"
    onnx.save(resnet18(batch="N", image=32), path)
    return path


def test_compile_run_inspect(small_resnet, tmp_path, capsys):
    out = tmp_path / "art"
    assert main(["compile", str(small_resnet), "--target", "x86", "--input-shape", "input=2x3x32x32",
                 "-o", str(out)]) == 0
    assert (out / "manifest.json").is_file() and (out / "model.so").is_file()
    x = np.random.default_rng(0).standard_normal((2, 3, 32, 32)).astype(np.float32)
    np.savez(tmp_path / "in.npz", input=x)
    assert main(["run", str(out), "--inputs", str(tmp_path / "in.npz"), "--output", str(tmp_path / "o.npz")]) == 0
    got = np.load(tmp_path / "o.npz")["logits"]
    want = ort_run(onnx.load(small_resnet), {"input": x})["logits"]
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    assert main(["run", str(out)]) == 0  # random inputs
    assert "random inputs" in capsys.readouterr().out
    assert main(["inspect", str(small_resnet), "--input-shape", "input=1x3x32x32"]) == 0
    text = capsys.readouterr().out
    assert "parameters: 11,699,112" in text and "Conv" in text and "FLOPs:" in text and "unsupported: none" in text


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "edlc.cli", *args], capture_output=True, text=True, timeout=300)


def test_corrupt_model_exits_2_with_one_line_and_no_output(tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"definitely not protobuf \xff\xfe")
    r = _cli("compile", str(bad), "-o", str(tmp_path / "out"))
    assert r.returncode == 2
    errors = [line for line in r.stderr.splitlines() if line.startswith("edlc: error:")]
    assert len(errors) == 1 and "bad.onnx" in errors[0]
    assert "Traceback" not in r.stderr
    assert not (tmp_path / "out").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["bad.onnx"]


def test_unsupported_ops_are_listed_at_once(tmp_path):
    m = parse("""
    <ir_version: 8, opset_import: ["" : 17, "com.example" : 1]>
    g (float[4] x) => (float[4] y) {
        a = com.example.Frobnicate(x)
        b = com.example.Twiddle(a)
        y = Relu(b)
    }""")
    path = tmp_path / "m.onnx"
    onnx.save(m, path)
    r = _cli("compile", str(path), "-o", str(tmp_path / "out"))
    assert r.returncode == 2
    assert "2 unsupported node(s)" in r.stderr and "Frobnicate" in r.stderr and "Twiddle" in r.stderr
    assert "com.example" in r.stderr
    assert not (tmp_path / "out").exists()


def test_usage_errors_exit_2(tmp_path, capsys):
    assert main(["compile"]) == 2
    assert main(["compile", "x.onnx", "-o", str(tmp_path / "o"), "--target", "nope"]) == 2
    assert main(["compile", "x.onnx", "-o", str(tmp_path / "o"), "--input-shape", "x=1xq"]) == 2
    assert main(["run", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "unknown target 'nope'" in err and "NAME=DIMS" in err and "not an edlc artifact" in err


def test_refuses_to_overwrite_a_foreign_directory(small_resnet, tmp_path):
    out = tmp_path / "precious"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    assert main(["compile", str(small_resnet), "--input-shape", "input=1x3x32x32", "-o", str(out)]) == 2
    assert (out / "notes.txt").read_text() == "keep me"


def test_targets_and_passes_list(capsys):
    assert main(["targets"]) == 0 and "x86" in capsys.readouterr().out
    assert main(["passes"]) == 0 and "fold-constants" in capsys.readouterr().out


def test_optimize_writes_onnx_that_onnxruntime_runs(small_resnet, tmp_path, capsys):
    out = tmp_path / "opt.onnx"
    assert main(["optimize", str(small_resnet), "--input-shape", "input=1x3x32x32", "-o", str(out),
                 "--time-passes"]) == 0
    assert "fold-constants" in capsys.readouterr().out
    x = np.random.default_rng(1).standard_normal((1, 3, 32, 32)).astype(np.float32)
    np.testing.assert_allclose(ort_run(onnx.load(out), {"input": x})["logits"],
                               ort_run(onnx.load(small_resnet), {"input": x})["logits"], rtol=1e-5, atol=1e-5)


def test_later_stage_options_are_refused_clearly(small_resnet, tmp_path, capsys):
    base = ["compile", str(small_resnet), "-o", str(tmp_path / "o")]
    assert main([*base, "--quantize", "fp16", "--calib", str(tmp_path / "c.npz")]) == 2
    assert main([*base, "--aot"]) == 2
    assert main([*base, "--arch", "sm_90"]) == 2
    err = capsys.readouterr().err
    assert "quantize='fp16' takes no calibration data" in err and "--aot" in err and "does not take option(s) arch" in err
    assert not (tmp_path / "o").exists()
