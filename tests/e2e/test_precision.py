"""`quantize="fp16" | "bf16"` end to end: zoo models against onnxruntime's float32 on x86, the
CLI and the artifact, and the other targets: aarch64 under qemu-aarch64, CUDA (built with nvcc;
no GPU needed) and Cortex-M firmware under qemu-system-arm."""

import json
import shutil

import ml_dtypes
import numpy as np
import onnx
import pytest

import edlc
from edlc.cli import main
from edlc.testing import zoo
from tests.conftest import ort_run

# dB against float32: rounding to float16 alone gives about 66 dB on O(1) values, bfloat16 42
SQNR_MIN = {"fp16": 45.0, "bf16": 30.0}
HALF = {"fp16": np.dtype(np.float16), "bf16": np.dtype(ml_dtypes.bfloat16)}
MODELS = {"resnet18": lambda: zoo.resnet18(image=32), "bert": lambda: zoo.bert_encoder(seq=16, layers=1)}

qemu_aarch64 = pytest.mark.skipif(
    not (shutil.which("qemu-aarch64") and shutil.which("aarch64-linux-gnu-g++")),
    reason="needs qemu-user and g++-aarch64-linux-gnu (scripts/setup.sh installs them)")


def sqnr(want: np.ndarray, got: np.ndarray) -> float:
    want, got = want.astype(np.float64), got.astype(np.float64)
    return 10 * float(np.log10((want ** 2).sum() / max(((want - got) ** 2).sum(), 1e-30)))


def float_bytes(model: onnx.ModelProto) -> int:
    """Bytes of the model's float32 initializers."""
    return sum(4 * int(np.prod(t.dims)) for t in model.graph.initializer
               if t.data_type == onnx.TensorProto.FLOAT)


def check(module, model, inputs, q: str) -> None:
    """Outputs float32 and within SQNR_MIN of onnxruntime's float32; weights half."""
    got, want = module.run(inputs), ort_run(model, inputs)
    for name, w in want.items():
        assert got[name].dtype == w.dtype == np.float32 and got[name].shape == w.shape
        assert sqnr(w, got[name]) >= SQNR_MIN[q], (name, sqnr(w, got[name]))
    half = sum(v.nbytes for v in module.params.values() if v.dtype == HALF[q])
    single = sum(v.nbytes for v in module.params.values() if v.dtype == np.float32)
    assert single < 0.02 * half  # what stays float32: normalization scales and shifts
    assert sum(v.nbytes for v in module.params.values()) < 0.55 * float_bytes(model)


@pytest.mark.parametrize("q", ["fp16", "bf16"])
@pytest.mark.parametrize("name", sorted(MODELS))
def test_zoo_model_on_x86(name, q):
    model = MODELS[name]()
    m = edlc.compile(model, target="x86", quantize=q)
    check(m, model, zoo.random_inputs(model, seed=1), q)
    summary = m.manifest["precision"]  # int constants (shapes, axes) keep their bytes
    assert summary["weight_bytes_after"] < 0.51 * summary["weight_bytes_before"]


@pytest.mark.parametrize("q", ["fp16", "bf16"])
def test_cli_compile_run_and_reload(q, tmp_path, capsys):
    model = MODELS["bert"]()
    onnx.save(model, tmp_path / "m.onnx")
    out = tmp_path / "out"
    assert main(["compile", str(tmp_path / "m.onnx"), "--quantize", q, "--time-passes", "-o", str(out)]) == 0
    printed = capsys.readouterr().out
    half = HALF[q].name
    assert f"nodes run in {half}" in printed and f"{half} " in printed  # the report, the pass
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["precision"]["dtype"] == half
    assert [s["dtype"] for s in manifest["inputs"] + manifest["outputs"]] == ["int64", "int64", "float32"]
    inputs = zoo.random_inputs(model, seed=2)
    np.savez(tmp_path / "in.npz", **inputs)
    assert main(["run", str(out), "--inputs", str(tmp_path / "in.npz"), "--output", str(tmp_path / "o.npz")]) == 0
    got = np.load(tmp_path / "o.npz")["last_hidden_state"]
    assert sqnr(ort_run(model, inputs)["last_hidden_state"], got) >= SQNR_MIN[q]
    check(edlc.load(out), model, inputs, q)  # params.npz gives the half weights back


def test_cli_refuses_calibration_and_keeps_layers_with_exclude(tmp_path, capsys):
    model = MODELS["resnet18"]()
    onnx.save(model, tmp_path / "m.onnx")
    np.savez(tmp_path / "c.npz", input=np.zeros((2, 3, 32, 32), np.float32))
    base = ["compile", str(tmp_path / "m.onnx"), "--quantize", "fp16"]
    assert main([*base, "--calib", str(tmp_path / "c.npz"), "-o", str(tmp_path / "a")]) == 2
    assert "takes no calibration data" in capsys.readouterr().err
    first = next(n.name for n in model.graph.node if n.op_type == "Conv")
    assert main([*base, "--exclude", first, "-o", str(tmp_path / "b")]) == 0
    assert json.loads((tmp_path / "b" / "manifest.json").read_text())["precision"]["kept_float32"] == {"Conv": 1}


@qemu_aarch64
@pytest.mark.parametrize(("q", "mcpu"), [("fp16", "cortex-a76"), ("bf16", "cortex-a72")])
def test_arm_bundle_under_qemu(q, mcpu):
    """cortex-a76 has float16 arithmetic (+fp16): the elementwise ops run in it; cortex-a72
    converts to float32 and back."""
    model = MODELS["bert"]()
    m = edlc.compile(model, target="arm", target_options={"mcpu": mcpu}, quantize=q)
    check(m, model, zoo.random_inputs(model, seed=3), q)


@qemu_aarch64
def test_arm_static_program_under_qemu():
    model = MODELS["resnet18"]()
    inputs = zoo.random_inputs(model, seed=4)
    m = edlc.compile(model, target="arm", aot=True, target_options={"mcpu": "cortex-a76"}, quantize="fp16")
    run = m.run_firmware(inputs, count=True)
    want = ort_run(model, inputs)["logits"]
    assert run.outputs["logits"].dtype == np.float32 and sqnr(want, run.outputs["logits"]) >= SQNR_MIN["fp16"]
    assert run.instructions > 0


@qemu_aarch64
def test_arm_float16_sums_on_a_cpu_with_float16_arithmetic():
    """cortex-a76 (+fp16): convs and matmuls summed in float16, 8 lanes a vector, run fewer
    instructions than summed in float32, at a cost in accuracy."""
    model = MODELS["bert"]()
    inputs = zoo.random_inputs(model, seed=6)
    want = ort_run(model, inputs)["last_hidden_state"]
    runs = {}
    for acc in ("float32", "float16"):
        m = edlc.compile(model, target="arm", aot=True, target_options={"mcpu": "cortex-a76"},
                         quantize="fp16", quantize_options={"accumulate": acc})
        runs[acc] = m.run_firmware(inputs, count=True)
        assert m.manifest["precision"]["accumulate"] == acc
    assert sqnr(want, runs["float16"].outputs["last_hidden_state"]) >= 40
    assert runs["float16"].instructions < 0.6 * runs["float32"].instructions


def test_cuda_builds_half_kernels():
    from edlc.errors import TargetError
    from edlc.targets import cuda

    try:
        cuda.find_nvcc()
    except TargetError:
        pytest.skip("needs nvcc (the CUDA toolkit)")
    model = MODELS["bert"]()
    for q, ctype in (("fp16", b"half"), ("bf16", b"nv_bfloat16")):
        m = edlc.compile(model, target="cuda", arch="sm_80", quantize=q)
        assert ctype in m.device_files["kernels.cu"]
        assert cuda.cubin_arch(m.device_files["kernels.sm_80.cubin"]) == "sm_80"
        assert sum(v.nbytes for v in m.params.values() if v.dtype == HALF[q]) > \
            50 * sum(v.nbytes for v in m.params.values() if v.dtype == np.float32)
        if cuda.gpu_present():
            check(m, model, zoo.random_inputs(model, seed=5), q)


@pytest.mark.skipif(not (shutil.which("qemu-system-arm") and shutil.which("arm-none-eabi-gcc")),
                    reason="needs qemu-system-arm and gcc-arm-none-eabi (scripts/setup.sh installs them)")
def test_cortex_m4_firmware_halves_the_weights_in_flash():
    from tests.targets.test_cuda import conv_matmul, x_input

    model, inputs = conv_matmul(), x_input()
    fp32 = edlc.compile(model, target="cortex-m4")
    m = edlc.compile(model, target="cortex-m4", quantize="fp16")
    run = m.run_firmware(inputs)
    assert sqnr(ort_run(model, inputs)["y"], run.outputs["y"]) >= SQNR_MIN["fp16"]
    assert m.memory["flash"]["weights"] * 2 <= fp32.memory["flash"]["weights"] + 64
