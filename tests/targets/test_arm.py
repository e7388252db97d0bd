"""Target arm: aarch64 Linux, cross-built here and run under qemu-aarch64 through the bundle's
own `run-model` program, checked against onnxruntime on the host."""

import json
import shutil
import subprocess

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

import edlc
from edlc.cli import main
from edlc.errors import TargetError
from edlc.target import available_targets, get_target
from edlc.testing import zoo
from tests.conftest import assert_matches_ort, make_model, ort_run, parse, tensor_info
from tests.targets.test_x86 import CONV

pytestmark = pytest.mark.skipif(
    not (shutil.which("qemu-aarch64") and shutil.which("aarch64-linux-gnu-g++")),
    reason="needs qemu-user and g++-aarch64-linux-gnu (scripts/setup.sh installs them)")

ELF_AARCH64 = 183  # e_machine of an aarch64 ELF


def _is_aarch64_elf(path) -> bool:
    head = path.read_bytes()[:20]
    return head[:4] == b"\x7fELF" and head[4] == 2 and int.from_bytes(head[18:20], "little") == ELF_AARCH64


def test_arm_target_and_its_options():
    assert "arm" in available_targets()
    t = get_target("arm")
    assert t.tvm == {"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mcpu": "cortex-a72",
                     "mattr": ["+neon"], "num-cores": 4}
    assert (t.cc, t.runner) == ("aarch64-linux-gnu-gcc", "qemu-aarch64")
    t = get_target("arm", mcpu="neoverse-n1", mattr="+dotprod,i8mm,+fp16")
    assert t.tvm["mcpu"] == "neoverse-n1"
    assert t.tvm["mattr"] == ["+neon", "+dotprod", "+i8mm", "+fullfp16"]  # LLVM's name for +fp16
    assert t.features == {"neon": True, "dotprod": True, "i8mm": True, "fp16": True}
    # the CPU's own features count without --mattr (cortex-a76 has dotprod, cortex-a72 not)
    assert get_target("arm", mcpu="cortex-a76").features["dotprod"]
    assert not get_target("arm").features["dotprod"]
    assert get_target("arm", mattr="+dotprod").features["dotprod"]
    for mcpu in ("cortex-a53", "cortex-a76"):
        assert get_target("arm", mcpu=mcpu).tvm["mcpu"] == mcpu
    with pytest.raises(TargetError, match="cortex-a9"):
        get_target("arm", mcpu="cortex-a9")
    with pytest.raises(TargetError, match="sve"):
        get_target("arm", mattr="+sve")


def test_qemu_emulates_the_boards_cpu_unless_mattr_asks_for_more():
    from edlc.targets.arm import qemu_cpu

    def cpu(mcpu, mattr=""):
        return qemu_cpu(get_target("arm", mcpu=mcpu, mattr=mattr).tvm)

    assert cpu("cortex-a72") == "cortex-a72" and cpu("cortex-a53") == "cortex-a53"
    assert cpu("cortex-a76", "+dotprod,+fp16") == "cortex-a76"
    assert cpu("cortex-a72", "+dotprod") == "max"  # no such board: QEMU's richest CPU
    assert cpu("neoverse-n1", "+i8mm") == "max"
    assert qemu_cpu({"mcpu": "cortex-x9", "mattr": ["+neon"]}) == "max"


def test_conv_relu_runs_under_qemu_and_exports_a_board_bundle(tmp_path, rng):
    model = parse(CONV)
    m = edlc.compile(model, target="arm")
    x = rng.standard_normal((1, 3, 8, 8)).astype(np.float32)
    assert_matches_ort(m, model, {"x": x})  # exports to a temporary bundle, runs it in qemu
    out = m.export(tmp_path / "art")
    names = {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()}
    assert names == {"manifest.json", "model.so", "params.npz", "run-model",
                     "lib/libtvm_runtime.so", "lib/libtvm_ffi.so"}
    for f in ("model.so", "run-model", "lib/libtvm_runtime.so", "lib/libtvm_ffi.so"):
        assert _is_aarch64_elf(out / f), f
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["target"]["name"] == "arm" and manifest["target"]["runner"] == "qemu-aarch64"
    assert set(manifest["files"]) == names - {"manifest.json"}
    m2 = edlc.load(out)
    assert m2.executable is None  # an aarch64 library is not loaded into this process
    y = m.run({"x": x})["y"]
    np.testing.assert_array_equal(m2.run({"x": x})["y"], y)
    # as on the board: ./run-model in the bundle, no Python
    np.savez(tmp_path / "in.npz", x=x)
    np.savez(tmp_path / "bad.npz", x=x[..., :4])
    qemu = ["qemu-aarch64", "-L", "/usr/aarch64-linux-gnu", "./run-model"]
    r = subprocess.run(qemu + ["--repeat", "2", str(tmp_path / "in.npz"), str(tmp_path / "o.npz")],
                       cwd=out, capture_output=True, text=True)
    assert r.returncode == 0 and "latency: median" in r.stdout, r.stderr
    np.testing.assert_array_equal(np.load(tmp_path / "o.npz")["y"], y)
    r = subprocess.run(qemu + [str(tmp_path / "bad.npz"), str(tmp_path / "o.npz")],
                       cwd=out, capture_output=True, text=True)
    assert r.returncode == 2 and "expected x: float32[1, 3, 8, 8]" in r.stderr
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_matmul_gelu_and_outputs_of_several_dtypes_and_ranks(rng):
    """MatMul + Add + exact GELU (erf form), a symbolic batch, float, int64 and 0-d outputs:
    run-model writes every output under its name, in the model's order."""
    w = (rng.standard_normal((32, 16)) * 0.2).astype(np.float32)
    b = rng.standard_normal(16).astype(np.float32)
    c = {"w": w, "b": b, "sqrt2": np.array(np.sqrt(2), np.float32),
         "one": np.array(1, np.float32), "half": np.array(0.5, np.float32)}
    nodes = [helper.make_node("MatMul", ["x", "w"], ["mm"]),
             helper.make_node("Add", ["mm", "b"], ["z"]),
             helper.make_node("Div", ["z", "sqrt2"], ["t"]),
             helper.make_node("Erf", ["t"], ["e"]),
             helper.make_node("Add", ["e", "one"], ["a"]),
             helper.make_node("Mul", ["z", "half"], ["h"]),
             helper.make_node("Mul", ["h", "a"], ["y"]),
             helper.make_node("ArgMax", ["y"], ["idx"], axis=1, keepdims=0),
             helper.make_node("ReduceSum", ["y"], ["total"], keepdims=0)]
    model = make_model(nodes, [tensor_info("x", ["N", 32])],
                   [tensor_info("y", ["N", 16]), tensor_info("idx", ["N"], TensorProto.INT64), tensor_info("total", [])], c)
    m = edlc.compile(model, target="arm")
    assert m.inputs[0]["shape"] == ["N", 32]  # run-model binds the symbolic dim from the input
    for n in (4, 1):
        x = rng.standard_normal((n, 32)).astype(np.float32)
        assert_matches_ort(m, model, {"x": x})


def test_resnet18_small_image_matches_onnxruntime():
    model = zoo.resnet18(image=32)
    m = edlc.compile(model, target="arm", target_options={"mcpu": "cortex-a76", "mattr": "+dotprod"})
    x = np.random.default_rng(1).standard_normal((1, 3, 32, 32)).astype(np.float32)
    assert_matches_ort(m, model, {"input": x})


def test_cli_compile_and_run(tmp_path, capsys):
    path = tmp_path / "m.onnx"
    onnx.save(parse(CONV), path)
    out = tmp_path / "out"
    assert main(["compile", str(path), "--target", "arm", "--mcpu", "cortex-a53", "-o", str(out)]) == 0
    assert _is_aarch64_elf(out / "run-model")
    x = np.random.default_rng(0).standard_normal((1, 3, 8, 8)).astype(np.float32)
    np.savez(tmp_path / "in.npz", x=x)
    assert main(["run", str(out), "--inputs", str(tmp_path / "in.npz"),
                 "--output", str(tmp_path / "o.npz")]) == 0
    np.testing.assert_allclose(np.load(tmp_path / "o.npz")["y"],
                               ort_run(parse(CONV), {"x": x})["y"], rtol=1e-4, atol=1e-4)
    capsys.readouterr()
    assert main(["run", str(out), "--repeat", "3"]) == 2  # timing under emulation: refused
    assert "run-model --repeat" in capsys.readouterr().err


def test_cli_bad_mcpu_exits_2(tmp_path, capsys):
    path = tmp_path / "m.onnx"
    onnx.save(parse(CONV), path)
    assert main(["compile", str(path), "--target", "arm", "--mcpu", "cortex-a9",
                 "-o", str(tmp_path / "out")]) == 2
    errors = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("edlc: error:")]
    assert len(errors) == 1 and "cortex-a9" in errors[0] and "cortex-a72" in errors[0]
    assert not (tmp_path / "out").exists()


def test_missing_qemu_and_failing_runner_are_edlc_errors(tmp_path, monkeypatch, capsys):
    import edlc.targets.arm as arm

    m = edlc.compile(parse(CONV), target="arm")
    out = m.export(tmp_path / "art")
    x = {"x": np.zeros((1, 3, 8, 8), np.float32)}
    monkeypatch.setattr(arm, "QEMU", "qemu-aarch64-not-installed")
    with pytest.raises(TargetError, match="qemu-aarch64-not-installed is not installed"):
        m.run(x)
    monkeypatch.undo()
    (out / "model.so").write_bytes(b"not an ELF file")  # the board program fails
    with pytest.raises(TargetError, match="run-model failed under qemu-aarch64.*exit status 1"):
        edlc.load(out).run(x)
    assert main(["run", str(out)]) == 2
    err = capsys.readouterr().err
    assert "edlc: error: run-model failed" in err and "Traceback" not in err


def test_runtime_not_cached_and_offline_is_a_clear_error(tmp_path, monkeypatch):
    from edlc.targets import arm_runtime

    monkeypatch.setenv("EDLC_CACHE_DIR", str(tmp_path / "cache"))
    with pytest.raises(TargetError, match="not in .*scripts/setup.sh"):
        arm_runtime.ensure_runtime(download=False)
    pip_output = "ERROR: Could not find a version that satisfies the requirement apache-tvm\n"
    monkeypatch.setattr(arm_runtime, "_pip",
                        lambda cmd: subprocess.CompletedProcess(cmd, 1, "", pip_output))
    with pytest.raises(TargetError, match="could not download the aarch64 wheels.*setup.sh"):
        arm_runtime.ensure_runtime()
    assert not list((tmp_path / "cache" / "aarch64").iterdir())  # nothing half-written


@pytest.mark.parametrize("spec", ["block:4x4:0.8", "2:4"])
def test_sparse_kernels_under_qemu_equal_dense(rng, spec):
    """Block-sparse and N:M kernels built for aarch64 compute what the dense layer with the same
    pruned weights computes."""
    from edlc.driver import import_model
    from edlc.passes.sparsity import densify, sparsify
    from tests.passes.sparsity.test_weights import _layer

    w = rng.standard_normal((64, 96)).astype(np.float32)
    sparse, _ = sparsify(import_model(_layer(w, 2)), spec)
    assert sparse.nodes[0].domain == "edlc"
    x = {"x": rng.standard_normal((2, 64)).astype(np.float32)}
    want = ort_run(densify(sparse.copy()).to_onnx(), x)["y"]
    got = edlc.compile(sparse, target="arm").run(x)["y"]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_int8_cnn_under_qemu_matches_the_int8_reference(rng):
    """The int8 model built for aarch64 computes what the int8 graph's reference does (within
    one output quantization step: aarch64 may fuse the requantize multiply-add)."""
    from edlc.ir.interpreter import run_graph
    from edlc.passes.quantize import quantize
    from tests.passes.quantize.helpers import samples_for, small_cnn

    model = small_cnn(rng)
    calibration = samples_for(rng, (1, 1, 16, 16))
    arm = edlc.compile(model, target="arm", quantize="int8", calibration=calibration)
    x = samples_for(rng, (1, 1, 16, 16), 1)[0]
    graph, _ = quantize(edlc.load_onnx(model), calibration)
    (want,) = run_graph(graph, x)
    got = arm.run(x)["logits"]
    step = float(np.abs(want).max()) / 127
    np.testing.assert_allclose(got, want, rtol=0, atol=step)


def _disassembly(path) -> str:
    proc = subprocess.run(["aarch64-linux-gnu-objdump", "-d", str(path)], capture_output=True,
                          text=True, check=True)
    return proc.stdout


def _dot_instructions(path) -> int:
    """How many sdot/udot instructions (the dot-product extension's) the code holds."""
    return sum(1 for ln in _disassembly(path).splitlines()
               if ln.split("\t")[2:3] and ln.split("\t")[2].strip() in ("sdot", "udot"))


# output channels not a multiple of 16, input channels not of 4 (zero-padded quads), padding
# at the zero point, strides, a batched matmul; uint8 and int8 activations
INT8_OPS = [
    ("qconv2d", (1, 13, 9, 9), (20, 13, 3, 3), {"pads": [1, 1, 1, 1], "clip_min": 0.0}, "uint8"),
    ("qconv2d", (1, 16, 10, 10), (24, 16, 1, 1), {"strides": [2, 2]}, "int8"),
    ("qmatmul", (2, 3, 37), (37, 20), {}, "uint8"),
]


@pytest.mark.parametrize("op,x_shape,w_shape,attrs,act", INT8_OPS, ids=["conv3x3-u8", "conv1x1s2-s8", "matmul-u8"])
def test_int8_kernels_use_sdot_with_dotprod_and_stay_exact(tmp_path, rng, op, x_shape, w_shape, attrs, act):
    """With +dotprod the int8 accumulators are sdot instructions (int8 quads; uint8 activations
    shifted by 128 and corrected by a per-channel constant): bit-exact under qemu-aarch64 with
    the int8 graph's reference."""
    from edlc.ir.interpreter import run_graph
    from tests.passes.quantize.helpers import int8_input, int8_op_graph

    g = int8_op_graph(rng, op, x_shape, w_shape, attrs=attrs, act=act)
    x = {"x": int8_input(rng, x_shape, act)}
    m = edlc.compile(g, target="arm", passes=[], target_options={"mattr": "+dotprod"})
    out = m.export(tmp_path / "art")
    assert _dot_instructions(out / "model.so") >= 4  # one 16-channel block is four sdots
    np.testing.assert_array_equal(m.run(x)[g.outputs[0].name], run_graph(g, x)[0])


def test_int8_without_dotprod_has_no_sdot_and_runs_on_a_cortex_a72(tmp_path, rng):
    """Without dotprod the int8 kernels keep the int16-pair form, exact, and run on QEMU's
    cortex-a72 (which has no sdot: the same library built with +dotprod dies there)."""
    from edlc.ir.interpreter import run_graph
    from tests.passes.quantize.helpers import int8_input, int8_op_graph

    op, x_shape, w_shape, attrs, act = INT8_OPS[0]
    g = int8_op_graph(rng, op, x_shape, w_shape, attrs=attrs, act=act)
    x = {"x": int8_input(rng, x_shape, act)}
    want = run_graph(g, x)[0]
    plain = edlc.compile(g, target="arm", passes=[]).export(tmp_path / "a72")
    assert _dot_instructions(plain / "model.so") == 0
    np.testing.assert_array_equal(edlc.load(plain).run(x)[g.outputs[0].name], want)
    dot = edlc.compile(g, target="arm", passes=[], target_options={"mattr": "+dotprod"})
    out = dot.export(tmp_path / "dot")
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["target"]["tvm"]["mattr"] = ["+neon"]  # as if the board were the plain cortex-a72
    (out / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(TargetError, match="SIGILL"):
        edlc.load(out).run(x)


@pytest.mark.parametrize("mcpu,dot", [("cortex-a76", True), ("cortex-a72", False)])
def test_int8_cnn_matches_onnxruntime_with_and_without_dotprod(tmp_path, rng, mcpu, dot):
    """The quantized CNN against onnxruntime running the QDQ model `edlc quantize` writes
    (unfused: its exact form), within one output quantization step; cortex-a76 has dotprod
    without --mattr, and its library uses it."""
    from edlc.passes.quantize import quantize
    from edlc.passes.quantize.ops import W_SCALE, X_SCALE
    from tests.passes.quantize.helpers import ort_exact, samples_for, small_cnn

    model = small_cnn(rng)
    calibration = samples_for(rng, (1, 1, 16, 16))
    x = samples_for(rng, (1, 1, 16, 16), 1)[0]
    m = edlc.compile(model, target="arm", target_options={"mcpu": mcpu}, quantize="int8",
                     calibration=calibration)
    assert m.manifest["target"]["features"]["dotprod"] is dot
    g8, _ = quantize(edlc.load_onnx(model), calibration)
    want = ort_exact(g8.to_onnx(), x)["logits"]
    got = m.run(x)["logits"]
    fc = g8.outputs[0].producer  # the float-output qmatmul: one step is x_scale * w_scale
    step = float(fc.inputs[X_SCALE].const) * float(np.max(fc.inputs[W_SCALE].const))
    np.testing.assert_allclose(got, want, rtol=0, atol=step)
    assert (_dot_instructions(m.export(tmp_path / "art") / "model.so") > 0) is dot


def test_tune_cross_builds_aarch64_candidates(tmp_path):
    """`edlc tune --target arm` links each candidate with aarch64-linux-gnu-gcc into a shared
    object the board's RPC server loads (no compiler needed there)."""
    from tvm.s_tir import meta_schedule as ms

    from edlc.tune import candidate_builder, extract

    _, tvm_target, tasks = extract(parse(CONV), "arm")
    assert tasks and str(tvm_target.attrs["mtriple"]) == "aarch64-linux-gnu"
    (result,) = candidate_builder("aarch64-linux-gnu-gcc").build(
        [ms.builder.BuilderInput(tasks[0].dispatched[0], tvm_target)])
    assert result.error_msg is None, result.error_msg
    artifact = tmp_path / "candidate.so"
    shutil.move(result.artifact_path, artifact)
    assert _is_aarch64_elf(artifact)
    assert int.from_bytes(artifact.read_bytes()[16:18], "little") == 3  # ET_DYN: a shared object


def test_tune_arm_is_measured_on_the_board_and_says_so(tmp_path, capsys):
    """Tuning arm needs the board (an RPC tracker): not QEMU, whose timings are not the board's.
    An unreachable tracker, or one without a server under the key, is a one-line error in
    seconds, before any task is extracted."""
    import socket
    import sys
    import time

    onnx.save(parse(CONV), tmp_path / "m.onnx")
    tune = ["tune", str(tmp_path / "m.onnx"), "--target", "arm", "--trials", "2",
            "--records", str(tmp_path / "rec")]

    def error(*extra) -> str:
        assert main(tune + list(extra)) == 2
        lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("edlc: error:")]
        assert len(lines) == 1
        return lines[0]

    assert "--rpc-tracker HOST:PORT --rpc-key KEY" in error()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    start = time.monotonic()
    assert f"cannot reach the RPC tracker at 127.0.0.1:{port}" in error(
        "--rpc-tracker", f"127.0.0.1:{port}", "--rpc-key", "rpi4")
    assert time.monotonic() - start < 30
    tracker = subprocess.Popen([sys.executable, "-m", "tvm.exec.rpc_tracker", "--host", "127.0.0.1",
                                "--port", str(port), "--port-end", str(port + 1)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while True:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            assert time.monotonic() < deadline, "the tracker did not start"
            time.sleep(0.2)
        message = error("--rpc-tracker", f"127.0.0.1:{port}", "--rpc-key", "rpi4")
        assert "no RPC server has registered" in message and "'rpi4'" in message
    finally:
        tracker.kill()
        tracker.wait()
    assert not (tmp_path / "rec").exists()
