"""`edlc bench` and edlc.bench: figures present and positive (never timings themselves)."""

import json
import os
import re

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edlc.bench import bench, format_report, machine_peak_gflops
from edlc.cli import main


def _tiny_model() -> onnx.ModelProto:
    """Conv + Relu + MatMul-free head: has FLOPs worth counting, compiles in a second."""
    w = numpy_helper.from_array(
        np.random.default_rng(0).standard_normal((8, 3, 3, 3)).astype(np.float32), "w")
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["r"]),
             helper.make_node("Sigmoid", ["r"], ["y"])]
    graph = helper.make_graph(
        nodes, "tiny", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 16, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 8, 16, 16])], [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.checker.check_model(model)
    return model


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    d = tmp_path_factory.mktemp("bench")
    path = d / "tiny.onnx"
    onnx.save(_tiny_model(), path)
    art = d / "art"
    assert main(["compile", str(path), "--input-shape", "x=2x3x16x16", "-o", str(art)]) == 0
    return path, art


FAST = ["--repeat", "3", "--warmup", "1"]


def _figures_ok(f: dict, batch: int = 2) -> None:
    assert f["repeat"] == 3 and len(f["times_ms"]) == 3 and f["batch"] == batch
    assert 0 < f["min_ms"] <= f["median_ms"] <= f["p90_ms"]
    assert f["throughput"] > 0 and f["threads"] >= 1
    assert f["peak_memory_mb"] is not None and f["peak_memory_mb"] >= 0


def test_bench_model_file(tiny, tmp_path, capsys):
    path, _ = tiny
    out = tmp_path / "b.json"
    assert main(["bench", str(path), "--input-shape", "x=2x3x16x16", *FAST, "--json", str(out)]) == 0
    text = capsys.readouterr().out
    for needle in ("latency median ms", "latency p90 ms", "latency min ms", "throughput inf/s",
                   "peak memory MB", "GFLOP/s", "% of machine peak", "an estimate", "VmHWM"):
        assert needle in text, needle
    d = json.loads(out.read_text())
    assert d["kind"] == "model" and d["target"] == "x86" and d["opt_level"] == 2
    assert d["model_flops"] == 2 * 2 * 8 * 16 * 16 * 27 + 2 * 2 * 8 * 16 * 16  # conv + relu, sigmoid
    _figures_ok(d["edlc"])
    assert d["edlc"]["gflops"] > 0 and d["edlc"]["peak_fraction"] > 0
    assert d["peak"]["gflops"] > 0 and d["onnxruntime"] is None and d["profile"] is None


def test_bench_artifact_dir(tiny, capsys):
    path, art = tiny
    assert main(["bench", str(art), *FAST]) == 0
    text = capsys.readouterr().out
    assert "artifact for x86" in text and "latency median ms" in text
    assert "model FLOPs: n/a" in text  # no flops in the manifest, no --model
    assert main(["bench", str(art), *FAST, "--model", str(path)]) == 0
    assert "model FLOPs: 0.0" in capsys.readouterr().out


def test_compare_onnxruntime_prints_both_and_a_ratio(tiny, tmp_path, capsys):
    path, art = tiny
    out = tmp_path / "c.json"
    assert main(["bench", str(path), "--input-shape", "x=2x3x16x16", *FAST, "--threads", "1",
                 "--compare", "onnxruntime", "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert re.search(r"^\s+edlc\s+onnxruntime$", text, re.M), text
    assert "outputs: match" in text and re.search(r"edlc / onnxruntime: [\d.]+x", text)
    d = json.loads(out.read_text())
    _figures_ok(d["onnxruntime"])
    assert d["edlc"]["threads"] == 1 and d["onnxruntime"]["threads"] == 1
    assert d["outputs_match"] is True and d["max_abs_diff"] < 1e-3 and d["ratio"] > 0
    # an artifact compares through --model
    assert main(["bench", str(art), *FAST, "--compare", "onnxruntime", "--model", str(path)]) == 0
    assert "outputs: match" in capsys.readouterr().out


def test_profile_table_shares_sum_to_100(tiny, capsys):
    path, _ = tiny
    assert main(["bench", str(path), "--input-shape", "x=2x3x16x16", *FAST, "--profile"]) == 0
    text = capsys.readouterr().out
    table = text.split("profile (edlc")[1].splitlines()[1:]
    assert table[0].split() == ["kernel", "calls", "time", "ms", "share", "%", "GFLOP/s"]
    rows = [line.split() for line in table[1:] if line.strip()]
    assert any(r[0].startswith("fused_") or not r[0].startswith("vm.") for r in rows)
    assert sum(float(r[3]) for r in rows) == pytest.approx(100, abs=0.5)
    kernels = [r for r in rows if not r[0].startswith("vm.")]
    assert kernels and all(len(r) == 5 and float(r[4]) > 0 for r in kernels)  # GFLOP/s computed


def test_python_api_and_module_profile(tiny):
    import edlc

    path, art = tiny
    x = np.random.default_rng(1).standard_normal((2, 3, 16, 16)).astype(np.float32)
    r = bench(art, model=path, repeat=2, warmup=0, inputs={"x": x}, profile=True,
              compare="onnxruntime")
    assert r.outputs_match and r.edlc.median_ms > 0 and r.onnxruntime.median_ms > 0
    assert r.profile and sum(k.share for k in r.profile) == pytest.approx(100)
    assert "profile (edlc" in format_report(r)
    rows = edlc.load(art).profile({"x": x}, repeat=2)
    assert rows and all(row.calls % 2 == 0 and row.seconds >= 0 for row in rows)
    assert any(not row.builtin for row in rows)


def test_machine_peak_estimate():
    peak = machine_peak_gflops()
    assert peak.cores >= 1 and peak.flops_per_cycle >= 4
    if os.path.exists("/proc/cpuinfo"):
        assert peak.gflops and peak.gflops > 0 and "estimate" in peak.describe()


@pytest.mark.parametrize("args, needle", [
    (["does/not/exist.onnx"], "no such file or directory"),
    (["{art}", "--compare", "onnxruntime"], "--model FILE"),
    (["{art}", "-O", "3"], "apply only to an ONNX model"),
    (["{model}", "--records", "{tmp}"], "records"),  # not available yet, or not a records dir
    (["{model}", "--repeat", "0"], "--repeat must be at least 1"),
    (["{model}", "--inputs", "{tmp}/none.npz"], "cannot read inputs"),
    (["{tmp}"], "not an edlc artifact"),
])
def test_bad_input_exits_2_with_one_line(tiny, tmp_path, capsys, args, needle):
    path, art = tiny
    args = [a.format(art=art, model=path, tmp=tmp_path) for a in args]
    assert main(["bench", *args]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if not line.startswith("edlc: ")
           or line.startswith("edlc: error:")]
    assert len(err) == 1 and err[0].startswith("edlc: error:") and needle in err[0], err


def test_outputs_that_differ_exit_1(tiny, capsys, monkeypatch):
    import edlc.bench

    path, _ = tiny
    monkeypatch.setattr(edlc.bench, "compare_outputs", lambda got, want: (0.5, False))
    assert main(["bench", str(path), "--input-shape", "x=2x3x16x16", *FAST,
                 "--compare", "onnxruntime"]) == 1
    captured = capsys.readouterr()
    assert "outputs: DIFFER" in captured.out and "outputs differ" in captured.err
