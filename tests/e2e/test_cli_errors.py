"""Bad input and faults through the `edlc` command: one line and exit 2 for what the user
caused, exit 1 with a pointer to --debug for edlc's own bugs, nothing half-written when a
compile is killed, and run-time inputs checked against what the model expects."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import onnx
import pytest
from onnx import helper

import edlc.cli
from edlc.cli import main
from edlc.testing.fuzz.seeds import convnet
from tests.conftest import tensor_info


def _error_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("edlc: error:")]


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("m") / "convnet.onnx"
    onnx.save(convnet(), path)
    return path


@pytest.fixture(scope="module")
def artifact(model_path, tmp_path_factory):
    out = tmp_path_factory.mktemp("a") / "art"
    assert main(["compile", str(model_path), "-o", str(out)]) == 0
    return out


def _save(tmp_path, model, name="m.onnx"):
    path = tmp_path / name
    path.write_bytes(model.SerializeToString())
    return path


def _cycle():
    nodes = [helper.make_node("Add", ["x", "b"], ["a"], name="add"), helper.make_node("Relu", ["a"], ["b"], name="relu")]
    return helper.make_model(helper.make_graph(nodes, "g", [tensor_info("x", [2])], [tensor_info("b", [2])]),
                             opset_imports=[helper.make_opsetid("", 17)])


def _huge():
    g = helper.make_graph([helper.make_node("Relu", ["x"], ["y"], name="relu")], "g",
                          [tensor_info("x", [10**9, 10**9])], [tensor_info("y", ["a", "b"])])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


@pytest.mark.parametrize("make, expected", [
    (_cycle, "the graph has a cycle: node 'add' (Add) -> node 'relu' (Relu) -> node 'add' (Add)"),
    (_huge, "input 'x' would take"),
])
def test_malformed_models_get_one_line_naming_the_node(tmp_path, capsys, make, expected):
    path = _save(tmp_path, make())
    assert main(["compile", str(path), "-o", str(tmp_path / "out")]) == 2
    (line,) = _error_lines(capsys.readouterr().err)
    assert str(path) in line and expected in line
    assert not (tmp_path / "out").exists()


def test_debug_shows_the_traceback_of_a_user_error(tmp_path, capsys):
    path = _save(tmp_path, _cycle())
    assert main(["--debug", "inspect", str(path)]) == 2
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err and "ModelError" in err
    assert len(_error_lines(err)) == 1


def test_internal_errors_exit_1_and_point_at_debug(monkeypatch, capsys):
    def broken(args):
        raise RuntimeError("something inside\nwith a second line")

    monkeypatch.setattr(edlc.cli, "cmd_targets", broken)
    assert main(["targets"]) == 1
    err = capsys.readouterr().err
    assert err.strip() == ("edlc: internal error: RuntimeError: something inside "
                           "(rerun with --debug for the traceback)")
    assert main(["targets", "--debug"]) == 1
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err and "rerun with --debug" not in err


# ---- a killed compile -------------------------------------------------------------------------
def _start_compile(model_path, out):
    return subprocess.Popen([sys.executable, "-m", "edlc.cli", "compile", str(model_path), "-o", str(out)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def _leftovers(out):
    return sorted(p.name for p in out.parent.iterdir() if p.name.startswith(f".{out.name}."))


def test_a_compile_killed_while_building_leaves_nothing(model_path, tmp_path):
    out = tmp_path / "art"
    proc = _start_compile(model_path, out)
    try:
        assert "compiling" in proc.stderr.readline()  # started; TVM's build takes seconds
        time.sleep(1.0)
        assert proc.poll() is None, "the compile finished before it could be killed"
    finally:
        proc.kill()
        proc.wait()
        proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL
    assert not out.exists()
    assert all(".tmp-" in name for name in _leftovers(out))  # at most a temporary, never OUT


def test_a_compile_killed_while_writing_leaves_no_half_artifact(model_path, tmp_path):
    out = tmp_path / "art"
    proc = _start_compile(model_path, out)
    try:
        deadline = time.monotonic() + 240
        while not _leftovers(out) and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.005)
        assert _leftovers(out), "the artifact was never being written"
    finally:
        proc.kill()
        proc.wait()
        proc.stderr.close()
    assert not out.exists()
    (stale,) = _leftovers(out)
    assert stale.startswith(".art.tmp-")
    # the next compile replaces the killed one's leftovers with a complete artifact
    assert main(["compile", str(model_path), "-o", str(out)]) == 0
    assert _leftovers(out) == []
    assert json.loads((out / "manifest.json").read_text())["files"]


# ---- run-time inputs ---------------------------------------------------------------------------
@pytest.mark.parametrize("arrays, expected", [
    ({"z": np.zeros((1, 3, 8, 8), np.float32)}, "unknown input(s) ['z'], missing ['x']"),
    ({"x": np.zeros((1, 3, 8), np.float32)}, "input 'x': shape [1, 3, 8]"),
    ({"x": np.zeros((1, 3, 8, 8), np.float64)}, "input 'x': dtype float64"),
])
def test_wrong_inputs_list_what_the_model_expects(artifact, tmp_path, capsys, arrays, expected):
    np.savez(tmp_path / "in.npz", **arrays)
    assert main(["run", str(artifact), "--inputs", str(tmp_path / "in.npz")]) == 2
    (line,) = _error_lines(capsys.readouterr().err)
    assert expected in line and "x: float32[1, 3, 8, 8]" in line


def test_unnamed_inputs_and_unwritable_outputs(artifact, tmp_path, capsys):
    np.save(tmp_path / "in.npy", np.zeros((1, 3, 8, 8), np.float32))
    assert main(["run", str(artifact), "--inputs", str(tmp_path / "in.npy")]) == 2
    assert "holds one unnamed array" in capsys.readouterr().err
    (tmp_path / "dir.npz").mkdir()
    assert main(["run", str(artifact), "--output", str(tmp_path / "dir.npz")]) == 2
    assert "dir.npz: is a directory" in _error_lines(capsys.readouterr().err)[0]


@pytest.mark.parametrize("damage, expected", [
    (lambda d: (d / "manifest.json").write_text("{\"format\": 1}"), "malformed field(s) target, inputs, outputs"),
    (lambda d: (d / "manifest.json").write_text("[1, 2"), "unreadable manifest"),
    (lambda d: (d / "params.npz").write_bytes(b"PK\x03\x04 truncated"), "unreadable weights"),
    (lambda d: (d / "model.so").write_bytes(b"\x7fELF truncated"), "cannot load the built model"),
])
def test_damaged_artifacts_are_reported(artifact, tmp_path, capsys, damage, expected):
    import shutil

    copy = tmp_path / "art"
    shutil.copytree(artifact, copy)
    damage(copy)
    assert main(["run", str(copy)]) == 2
    (line,) = _error_lines(capsys.readouterr().err)
    assert expected in line and str(copy) in line


def test_no_temporary_files_are_left_by_a_run(artifact, tmp_path):
    assert main(["run", str(artifact), "--output", str(tmp_path / "o.npz")]) == 0
    assert sorted(os.listdir(tmp_path)) == ["o.npz"]
