"""Microcontroller targets: AOT firmware projects, run on QEMU's Cortex-M boards (semihosting),
checked against onnxruntime on the host; memory plans checked against the liveness bound."""

import json
import shutil
import subprocess

import numpy as np
import pytest

import edlc
from edlc.cli import main
from edlc.errors import TargetError
from edlc.target import available_targets, get_target
from edlc.testing import tiny
from tests.conftest import ort_run, parse
from tests.targets.test_x86 import CONV

pytestmark = pytest.mark.skipif(
    not (shutil.which("qemu-system-arm") and shutil.which("arm-none-eabi-gcc")),
    reason="needs qemu-system-arm and gcc-arm-none-eabi (scripts/setup.sh installs them)")


def _check(model, run, inputs, rtol=1e-4, atol=1e-5):
    want = ort_run(model, inputs)
    assert list(run.outputs) == list(want)
    for name in want:
        assert run.outputs[name].shape == want[name].shape and run.outputs[name].dtype == want[name].dtype
        np.testing.assert_allclose(run.outputs[name], want[name], rtol=rtol, atol=atol, err_msg=name)


def test_targets_and_options():
    names = available_targets()
    for t in ("cortex-m0plus", "cortex-m4", "cortex-m7", "cortex-m55", "c"):
        assert t in names
    m4 = get_target("cortex-m4")
    assert m4.tvm == {"kind": "llvm", "mtriple": "thumbv7em-none-eabihf", "mcpu": "cortex-m4",
                      "mattr": ["+dsp", "+vfp4d16sp"], "mfloat-abi": "hard", "opt-level": 2}
    assert (m4.runner, m4.mcu["machine"], m4.features["fpu"]) == ("qemu-system-arm", "mps2-an386", True)
    assert get_target("cortex-m7").mcu["machine"] == "mps2-an500"
    assert "+mve.fp" in get_target("cortex-m55").tvm["mattr"]
    assert get_target("cortex-m0plus").tvm["mfloat-abi"] == "soft"
    assert get_target("cortex-m4", mattr="+fp16").tvm["mattr"][-1] == "+fp16"
    c = get_target("c", mcpu="cortex-m7")
    assert c.tvm == {"kind": "c"} and c.mcu["cpu"] == "cortex-m7"
    with pytest.raises(TargetError, match="cortex-m3"):
        get_target("c", mcpu="cortex-m3")


@pytest.fixture(scope="module")
def conv_m4():
    model = parse(CONV)
    return model, edlc.compile(model, target="cortex-m4")


def test_conv_project_runs_in_qemu_and_loads_back(conv_m4, tmp_path, rng):
    model, m = conv_m4
    x = rng.standard_normal((1, 3, 8, 8)).astype(np.float32)
    first = m.run_firmware({"x": x}, count=True)
    _check(model, first, {"x": x})
    again = m.run_firmware({"x": x}, count=True)
    assert first.instructions == again.instructions > 1000  # deterministic count
    assert 0 < first.stack_bytes < 2048

    out = m.export(tmp_path / "fw")
    files = {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()}
    assert {"Makefile", "edlc_sections.ld", "memory.json", "manifest.json", "lib/edlc_g.h",
            "lib/edlc_g.c", "lib/edlc_g_weights.c", "lib/edlc_g_kernels.o", "test/main.c",
            "test/fw.ld"} <= files
    header = (out / "lib/edlc_g.h").read_text()
    assert "int edlc_g_run(const float* x, float* y);" in header
    assert "EDLC_G_ARENA_SIZE" in header
    lib = (out / "lib/edlc_g.c").read_text() + (out / "lib/edlc_g_weights.c").read_text()
    assert "malloc" not in lib and "printf" not in lib
    memory = json.loads((out / "memory.json").read_text())
    assert memory["arena"]["size"] == memory["arena"]["lower_bound"] == 0  # pad inlined, y is the caller's
    assert memory["flash"]["weights"] == 4 * 3 * 3 * 3 * 4  # one 16-byte aligned array
    assert set(memory["kernels"]) == {c["kernel"] for c in memory["calls"]}
    # the library alone builds with the project's Makefile
    r = subprocess.run(["make", "-s", "-C", str(out), "lib"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert (out / "build/libedlc_g.a").is_file()
    m2 = edlc.load(out)  # built elsewhere: runs through the runner
    np.testing.assert_array_equal(m2.run({"x": x})["y"], first.outputs["y"])


def test_cli_writes_a_firmware_project(tmp_path, capsys, rng):
    import onnx

    path = tmp_path / "conv.onnx"
    onnx.save(parse(CONV), path)
    assert main(["compile", str(path), "--target", "cortex-m0plus", "--aot",
                 "-o", str(tmp_path / "fw")]) == 0
    said = capsys.readouterr().out
    assert "arena" in said and "liveness lower bound" in said
    manifest = json.loads((tmp_path / "fw/manifest.json").read_text())
    assert manifest["target"]["mcu"]["cpu"] == "cortex-m0plus"
    x = rng.standard_normal((1, 3, 8, 8)).astype(np.float32)
    np.savez(tmp_path / "in.npz", x=x)
    assert main(["run", str(tmp_path / "fw"), "--inputs", str(tmp_path / "in.npz"),
                 "--output", str(tmp_path / "out.npz")]) == 0  # soft float, on an M3 board
    np.testing.assert_allclose(np.load(tmp_path / "out.npz")["y"],
                               ort_run(parse(CONV), {"x": x})["y"], rtol=1e-5, atol=1e-6)
    assert main(["compile", str(path), "--target", "x86", "--aot", "-o", str(tmp_path / "x")]) == 2


@pytest.mark.parametrize("target", ["c", "cortex-m55"])
def test_c_kernels_and_mve(target, rng):
    model = parse(CONV)
    m = edlc.compile(model, target=target)
    x = rng.standard_normal((1, 3, 8, 8)).astype(np.float32)
    _check(model, m.run_firmware({"x": x}), {"x": x})


TINY_INPUT = {"ds_cnn_kws": (1, 1, 49, 10), "resnet8": (1, 3, 32, 32),
              "mobilenet_v1_vww": (1, 3, 96, 96), "fc_autoencoder": (1, 640)}


@pytest.mark.parametrize("cpu", ["cortex-m4", "cortex-m7"])
@pytest.mark.parametrize("name", list(tiny.TINY))
def test_mlperf_tiny_models_match_onnxruntime(name, cpu):
    """Each MLPerf Tiny model: compiled once, run once in QEMU with instructions counted."""
    model = tiny.TINY[name]()
    m = edlc.compile(model, target=cpu)
    x = np.random.default_rng(1).standard_normal(TINY_INPUT[name]).astype(np.float32)
    run = m.run_firmware({"input": x}, count=True)
    _check(model, run, {"input": x})
    mem = m.memory
    assert mem["arena"]["size"] <= 1.10 * mem["arena"]["lower_bound"]
    assert mem["flash"]["weights"] >= 4 * sum(int(np.prod(i.dims)) for i in model.graph.initializer
                                              if len(i.dims) > 1)
    assert run.instructions > 0 and run.stack_bytes <= mem["ram"]["stack_estimate"] + 256
    print(f"{name} {cpu}: flash {mem['flash']['total']} RAM {mem['ram']['total']} arena "
          f"{mem['arena']['size']} (bound {mem['arena']['lower_bound']}) instructions "
          f"{run.instructions} stack {run.stack_bytes}")


def _step(graph, value) -> float:
    """One quantization step at `value`: the resolution of the last int8 layer before it (its
    output scale, or one accumulator unit, x_scale * w_scale, where it outputs float)."""
    from edlc.passes.quantize.ops import W_SCALE, X_SCALE, Y_SCALE

    node = value.producer
    while node.op not in ("qconv2d", "qmatmul"):
        node = node.inputs[0].producer
    if len(node.inputs) > Y_SCALE and node.inputs[Y_SCALE] is not None:
        return float(node.inputs[Y_SCALE].const)
    return float(node.inputs[X_SCALE].const) * float(np.max(node.inputs[W_SCALE].const))


@pytest.mark.parametrize("name,cpu", [(n, "cortex-m4") for n in tiny.TINY] +
                         [("ds_cnn_kws", "cortex-m7")])
def test_mlperf_tiny_int8_matches_the_qdq_model(name, cpu):
    """int8 firmware against onnxruntime running the QDQ model `edlc quantize` writes (basic
    optimizations: no fused u8s8 kernels), within one quantization step."""
    from edlc.passes.quantize import quantize
    from tests.passes.quantize.helpers import ort_exact

    model = tiny.TINY[name]()
    rng = np.random.default_rng(1)
    samples = [{"input": rng.standard_normal(TINY_INPUT[name]).astype(np.float32)}
               for _ in range(4)]
    m = edlc.compile(model, target=cpu, quantize="int8", calibration=samples)
    assert m.manifest["quantization"]["int8_layers"] == m.manifest["quantization"]["layers"]
    g8, _ = quantize(edlc.load_onnx(model), samples)
    run = m.run_firmware(samples[0], count=True)
    want = ort_exact(g8.to_onnx(), samples[0])
    for out in g8.outputs:
        step = _step(g8, out)
        err = np.abs(run.outputs[out.name] - want[out.name]).max()
        assert err <= step, (out.name, err, step)
    mem = m.memory
    fp32_bytes = 4 * sum(int(np.prod(i.dims)) for i in model.graph.initializer)
    assert mem["flash"]["weights"] < 0.4 * fp32_bytes  # int8 weights, int32 biases, scales
    print(f"{name} {cpu} int8: flash {mem['flash']['total']} RAM {mem['ram']['total']} arena "
          f"{mem['arena']['size']} instructions {run.instructions} stack {run.stack_bytes}")
