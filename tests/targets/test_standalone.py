"""arm --aot: the microcontrollers' ahead-of-time C path linked into one static aarch64 Linux
program (no TVM runtime), run under qemu-aarch64 and checked against onnxruntime."""

import json
import shutil
import subprocess

import numpy as np
import onnx
import pytest

import edlc
from edlc.cli import main
from edlc.errors import ArtifactError
from edlc.targets.mcu.elf import symbols
from edlc.testing import zoo
from tests.conftest import assert_matches_ort, ort_run, parse
from tests.targets.test_x86 import CONV

pytestmark = pytest.mark.skipif(
    not (shutil.which("qemu-aarch64") and shutil.which("aarch64-linux-gnu-gcc")),
    reason="needs qemu-user and gcc-aarch64-linux-gnu (scripts/setup.sh installs them)")

PT_INTERP = 3


def _is_static_aarch64(path) -> bool:
    """An aarch64 ELF executable with no program interpreter (nothing loaded at run time)."""
    data = path.read_bytes()
    if data[:4] != b"\x7fELF" or data[4] != 2 or int.from_bytes(data[18:20], "little") != 183:
        return False
    phoff, phentsize, phnum = (int.from_bytes(data[0x20:0x28], "little"),
                               int.from_bytes(data[0x36:0x38], "little"),
                               int.from_bytes(data[0x38:0x3A], "little"))
    types = [int.from_bytes(data[phoff + i * phentsize:phoff + i * phentsize + 4], "little")
             for i in range(phnum)]
    return PT_INTERP not in types


def test_conv_program_runs_under_qemu_exports_and_loads_back(tmp_path, rng):
    model = parse(CONV)
    m = edlc.compile(model, target="arm", aot=True)
    assert m.target.runner == "qemu-aarch64-static" and m.target.tvm["num-cores"] == 1
    x = rng.standard_normal((1, 3, 8, 8)).astype(np.float32)
    run = m.run_firmware({"x": x}, count=True)
    np.testing.assert_allclose(run.outputs["y"], ort_run(model, {"x": x})["y"], rtol=1e-4, atol=1e-5)
    assert run.instructions == m.run_firmware({"x": x}, count=True).instructions > 1000
    assert 0 < run.stack_bytes < 4096

    out = m.export(tmp_path / "prog")
    files = {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()}
    assert files == {"manifest.json", "memory.json", "Makefile", "run-model", "lib/edlc_g.h",
                     "lib/edlc_g.c", "lib/edlc_g_weights.S", "lib/edlc_g_weights.bin",
                     "lib/edlc_g_kernels.o", "src/main.c", "src/harness.c", "src/harness.h"}
    assert _is_static_aarch64(out / "run-model")
    assert "edlc_mark_begin" in symbols((out / "run-model").read_bytes())
    kernels = (out / "lib/edlc_g_kernels.o").read_bytes()
    assert b"TVMBackendParallelLaunch" not in kernels  # single-threaded: no thread pool
    assert (out / "lib/edlc_g_weights.bin").stat().st_size == 4 * 3 * 3 * 3 * 4
    memory = json.loads((out / "memory.json").read_text())
    assert memory["program"]["file"] == (out / "run-model").stat().st_size
    assert memory["arena"]["size"] == memory["arena"]["lower_bound"]
    # as on a board: the program alone, in a directory holding the inputs
    work = tmp_path / "work"
    work.mkdir()
    (work / "input0.bin").write_bytes(x.tobytes())
    r = subprocess.run(["qemu-aarch64", str(out / "run-model")], cwd=work, capture_output=True,
                       text=True)
    assert r.returncode == 0 and "edlc: rc=0" in r.stdout, r.stdout + r.stderr
    y = np.frombuffer((work / "output0.bin").read_bytes(), np.float32).reshape(1, 4, 8, 8)
    np.testing.assert_array_equal(y, run.outputs["y"])
    (work / "input0.bin").write_bytes(x.tobytes()[:-4])  # a short input file: exit status 2
    r = subprocess.run(["qemu-aarch64", str(out / "run-model")], cwd=work, capture_output=True,
                       text=True)
    assert r.returncode == 2 and "cannot read input0.bin" in r.stdout
    np.testing.assert_array_equal(edlc.load(out).run({"x": x})["y"], run.outputs["y"])
    (out / "run-model").unlink()
    with pytest.raises(ArtifactError, match="run-model is missing"):
        edlc.load(out).run({"x": x})


def test_cli_compile_aot_and_run(tmp_path, capsys, rng):
    path = tmp_path / "conv.onnx"
    onnx.save(parse(CONV), path)
    assert main(["compile", str(path), "--target", "arm", "--aot", "-o", str(tmp_path / "p")]) == 0
    assert "program" in capsys.readouterr().out
    x = rng.standard_normal((1, 3, 8, 8)).astype(np.float32)
    np.savez(tmp_path / "in.npz", x=x)
    assert main(["run", str(tmp_path / "p"), "--inputs", str(tmp_path / "in.npz"),
                 "--output", str(tmp_path / "out.npz")]) == 0
    np.testing.assert_allclose(np.load(tmp_path / "out.npz")["y"],
                               ort_run(parse(CONV), {"x": x})["y"], rtol=1e-4, atol=1e-5)
    assert main(["compile", str(path), "--target", "x86", "--aot", "-o", str(tmp_path / "x")]) == 2
    assert "no ahead-of-time" in capsys.readouterr().err


ZOO = {"resnet18": lambda: zoo.resnet18(image=32),
       "mobilenet_v2": lambda: zoo.mobilenet_v2(image=32),
       "bert_encoder": lambda: zoo.bert_encoder(seq=16, layers=1)}


@pytest.mark.parametrize("name", list(ZOO))
def test_zoo_model_static_program_matches_onnxruntime(name):
    model = ZOO[name]()
    m = edlc.compile(model, target="arm", aot=True)
    assert_matches_ort(m, model, zoo.random_inputs(model, seed=1))
    program = m.memory["program"]
    assert program["code"] >= m.memory["flash"]["weights"]  # the weights are in the binary
    print(f"{name}: run-model {program['file']:,} B (code+rodata {program['code']:,}, weights "
          f"{m.memory['flash']['weights']:,}, kernels {m.memory['flash']['kernels']:,}), "
          f"arena {m.memory['arena']['size']:,} B")


def test_int8_program_with_dotprod_uses_sdot_and_runs_fewer_instructions(tmp_path, rng):
    """The quantized CNN as a static program: with cortex-a76's dotprod the kernels hold sdot
    and one inference executes under half the instructions of the cortex-a72 build (QEMU's
    deterministic count; each runs on QEMU's model of its CPU); both match onnxruntime running
    the QDQ model within one output quantization step."""
    from edlc.passes.quantize import quantize
    from edlc.passes.quantize.ops import W_SCALE, X_SCALE
    from tests.passes.quantize.helpers import ort_exact, samples_for, small_cnn

    model = small_cnn(rng)
    calibration = samples_for(rng, (1, 1, 16, 16))
    x = samples_for(rng, (1, 1, 16, 16), 1)[0]
    g8, _ = quantize(edlc.load_onnx(model), calibration)
    want = ort_exact(g8.to_onnx(), x)["logits"]
    fc = g8.outputs[0].producer
    step = float(fc.inputs[X_SCALE].const) * float(np.max(fc.inputs[W_SCALE].const))
    counts, dots = {}, {}
    for mcpu in ("cortex-a76", "cortex-a72"):
        m = edlc.compile(model, target="arm", aot=True, target_options={"mcpu": mcpu},
                         quantize="int8", calibration=calibration)
        run = m.run_firmware(x, count=True)
        np.testing.assert_allclose(run.outputs["logits"], want, rtol=0, atol=step, err_msg=mcpu)
        counts[mcpu] = run.instructions
        (kernels,) = (m.export(tmp_path / mcpu) / "lib").glob("*_kernels.o")
        dots[mcpu] = _count_sdot(kernels)
    assert dots["cortex-a76"] > 0 and dots["cortex-a72"] == 0
    assert counts["cortex-a76"] < 0.5 * counts["cortex-a72"], counts
    print(f"small CNN int8, instructions per inference: {counts}")


def _count_sdot(path) -> int:
    asm = subprocess.run(["aarch64-linux-gnu-objdump", "-d", str(path)], capture_output=True,
                         text=True, check=True).stdout
    return sum(1 for ln in asm.splitlines() if ln.split("\t")[2:3] and ln.split("\t")[2].strip() == "sdot")
