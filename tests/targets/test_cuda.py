"""Target cuda: kernels scheduled by dlight, compiled by nvcc to a cubin, which model.so embeds.

Building needs nvcc but no GPU; the tests marked `requires_gpu` run the models on a local GPU
and compare them with onnxruntime on the host (rtol/atol 1e-3)."""

import json
import struct

import numpy as np
import onnx
import pytest
from onnx import helper

import edlc
from edlc.cli import main
from edlc.errors import LoweringError, TargetError
from edlc.target import available_targets, get_target
from edlc.targets import cuda
from edlc.testing.zoo import SHAPES, ZOO, random_inputs
from tests.conftest import assert_matches_ort, make_model, parse, tensor_info


def _have_nvcc() -> bool:
    try:
        return bool(cuda.find_nvcc())
    except TargetError:
        return False


pytestmark = pytest.mark.skipif(not _have_nvcc(), reason="needs nvcc (the CUDA toolkit)")

GPU = cuda.gpu_present()
requires_gpu = pytest.mark.skipif(not GPU, reason="no CUDA GPU on this machine")
no_gpu = pytest.mark.skipif(GPU, reason="checks what happens without a GPU")

RTOL = ATOL = 1e-3


def conv_matmul(seed: int = 0) -> onnx.ModelProto:
    """Conv + ReLU, then Flatten and MatMul + bias: a conv and a matmul kernel, small."""
    rng = np.random.default_rng(seed)
    inits = {"w": (rng.standard_normal((4, 3, 3, 3)) * 0.3).astype(np.float32),
             "m": (rng.standard_normal((256, 10)) * 0.1).astype(np.float32),
             "b": rng.standard_normal(10).astype(np.float32)}
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["r"]),
             helper.make_node("Flatten", ["r"], ["f"]),
             helper.make_node("MatMul", ["f", "m"], ["mm"]),
             helper.make_node("Add", ["mm", "b"], ["y"])]
    return make_model(nodes, [tensor_info("x", [1, 3, 8, 8])], [tensor_info("y", [1, 10])], inits)


def x_input(seed: int = 0) -> dict[str, np.ndarray]:
    return {"x": np.random.default_rng(seed).standard_normal((1, 3, 8, 8)).astype(np.float32)}


def test_cuda_target_and_its_arch(monkeypatch):
    assert "cuda" in available_targets()
    t = get_target("cuda", arch="sm_90")
    assert t.tvm["kind"] == "cuda" and t.tvm["arch"] == "sm_90" and t.device == "cuda"
    assert t.host == {"kind": "llvm"} and t.runner == "local"
    assert str(t.tvm_target().attrs["arch"]) == "sm_90"
    for arch in cuda.ARCHS:
        assert get_target("cuda", arch=arch).tvm["arch"] == arch
    monkeypatch.setattr(cuda, "local_gpu_arch", lambda: None)
    assert get_target("cuda").tvm["arch"] == "sm_80"  # no GPU here: the default
    monkeypatch.setattr(cuda, "local_gpu_arch", lambda: "sm_86")
    assert get_target("cuda").tvm["arch"] == "sm_86"  # the local GPU's
    monkeypatch.setattr(cuda, "local_gpu_arch", lambda: "sm_75")
    with pytest.raises(TargetError, match="GPU is sm_75.*--arch"):
        get_target("cuda")
    assert get_target("cuda", arch="sm_89").tvm["arch"] == "sm_89"
    with pytest.raises(TargetError, match="sm_70.*sm_80, sm_86, sm_89, sm_90"):
        get_target("cuda", arch="sm_70")
    with pytest.raises(TargetError, match="does not take option"):
        get_target("x86", arch="sm_90")


@pytest.mark.parametrize("arch,opt_level", [("sm_80", 2), ("sm_90", 3)])  # -O3: NHWC layout
def test_conv_matmul_builds_a_cubin_for_the_arch(arch, opt_level, tmp_path):
    model = conv_matmul()
    m = edlc.compile(model, target="cuda", opt_level=opt_level, arch=arch)
    cubin = f"kernels.{arch}.cubin"
    assert cuda.cubin_arch(m.device_files[cubin]) == arch
    out = m.export(tmp_path / "art")
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["manifest.json", "model.so", "params.npz", cubin, "kernels.cu"])
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["target"]["tvm"]["arch"] == arch and manifest["target"]["name"] == "cuda"
    assert manifest["files"] == ["model.so", "params.npz", cubin, "kernels.cu"]
    assert manifest["kernels"] >= 2
    data = (out / cubin).read_bytes()
    assert cuda.cubin_arch(data) == arch
    library = (out / "model.so").read_bytes()
    assert data in library and b"__global__" not in library  # the cubin, not the source
    assert b"__global__" in (out / "kernels.cu").read_bytes()
    if GPU:
        assert_matches_ort(edlc.load(out), model, x_input(), rtol=RTOL, atol=ATOL)
    else:
        m2 = edlc.load(out)
        assert m2.executable is None
        for module in (m, m2):
            with pytest.raises(TargetError, match="no CUDA device is present"):
                module.run(x_input())


@no_gpu
def test_model_so_holds_the_cubin_in_tvms_layout(tmp_path):
    """TVM's own loader reads model.so: the CUDA module it hands to the (GPU-only) CUDA loader
    has format "cubin", the cubin as code and the function table the build made."""
    import tvm
    import tvm_ffi

    m = edlc.compile(conv_matmul(), target="cuda", target_options={"arch": "sm_80"})
    blob = bytes(tvm_ffi.get_global_func("runtime.ModulePackImportsToTensor")(
        m.executable.mod).numpy())
    assert cuda.pack_imports(*cuda.unpack_imports(blob)) == blob
    built = dict(cuda.unpack_imports(blob)[1])[b"cuda"]
    source = m.device_files["kernels.cu"]
    assert built.endswith(struct.pack("<Q", len(source)) + source)
    table = built[8 + 4:len(built) - 8 - len(source)]  # between <"cuda"> and <source>
    cubin = m.device_files["kernels.sm_80.cubin"]
    with cuda.nvcc_callback("sm_80"):  # what TVM calls while building on a GPU machine
        compiled = tvm_ffi.get_global_func("tvm_callback_cuda_compile")(source.decode())
    assert bytes(compiled) == cubin
    out = m.export(tmp_path / "art")
    seen = []

    def loader(data):
        seen.append(bytes(data))
        return tvm_ffi.get_global_func("runtime.SourceModuleCreate")("", "cu")

    tvm_ffi.register_global_func("ffi.Module.load_from_bytes.cuda", loader)
    try:
        lib = tvm.runtime.load_module(str(out / "model.so"))
    finally:
        tvm_ffi.remove_global_func("ffi.Module.load_from_bytes.cuda")
    assert lib.kind == "relax.VMExecutable" and [i.kind for i in lib.imports] == ["library"]
    assert seen == [struct.pack("<Q", 5) + b"cubin" + table + struct.pack("<Q", len(cubin)) + cubin]


@pytest.mark.parametrize("arch", ["sm_80", "sm_90"])
@pytest.mark.parametrize("name", sorted(SHAPES))
def test_zoo_model_builds(name, arch):
    model = ZOO[name]()
    m = edlc.compile(model, target="cuda", input_shapes=SHAPES[name],
                     target_options={"arch": arch})
    assert cuda.cubin_arch(m.device_files[f"kernels.{arch}.cubin"]) == arch
    if GPU:
        assert_matches_ort(m, model, random_inputs(model, shapes=SHAPES[name]), rtol=RTOL,
                           atol=ATOL)


def test_tuning_records_apply_on_cuda(tmp_path):
    """A MetaSchedule record for a CUDA kernel is applied as on x86 (here: dlight's fallback
    schedule written as a record; real ones come from tuning on a GPU)."""
    from tvm.s_tir import dlight as dl
    from tvm.s_tir import meta_schedule as ms

    from edlc.tune import extract

    model = conv_matmul(seed=1)
    target = get_target("cuda", arch="sm_80")
    _, tvm_target, tasks = extract(model, target)
    (tmp_path / "rec").mkdir()
    db = ms.database.JSONDatabase(work_dir=str(tmp_path / "rec"))
    conv = next(t for t in tasks if "Conv" in t.task_name)
    func = conv.dispatched[0]["main"]
    with tvm_target:
        sch = dl.gpu.Fallback().apply(func, tvm_target, False)
    db.commit_tuning_record(ms.database.TuningRecord(
        sch.trace, db.commit_workload(conv.dispatched[0]), [1e-5], tvm_target,
        ms.arg_info.ArgInfo.from_prim_func(func)))
    m = edlc.compile(model, target=target, records=tmp_path / "rec")
    assert m.manifest["tuning"]["kernels_with_record"] == [conv.task_name]
    assert cuda.cubin_arch(m.device_files["kernels.sm_80.cubin"]) == "sm_80"


def test_cli_compile_arch_and_run(tmp_path, capsys):
    path = tmp_path / "m.onnx"
    onnx.save(conv_matmul(seed=2), path)
    out = tmp_path / "out"
    assert main(["compile", str(path), "--target", "cuda", "--arch", "sm_90", "-o", str(out)]) == 0
    assert cuda.cubin_arch((out / "kernels.sm_90.cubin").read_bytes()) == "sm_90"
    capsys.readouterr()
    assert main(["compile", str(path), "--target", "cuda", "--arch", "sm_75",
                 "-o", str(tmp_path / "bad")]) == 2
    errors = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("edlc: error:")]
    assert len(errors) == 1 and "sm_75" in errors[0] and not (tmp_path / "bad").exists()
    if GPU:
        assert main(["run", str(out)]) == 0
    else:
        assert main(["run", str(out)]) == 2
        errors = capsys.readouterr().err.splitlines()
        assert errors == [e for e in errors if e.startswith("edlc: error: no CUDA device is present")]
        assert len(errors) == 1


def test_nvcc_errors_are_edlc_errors(monkeypatch):
    with pytest.raises(LoweringError, match="nvcc failed .* sm_80: .*error"):
        cuda.compile_cubin("this is not CUDA", "sm_80")
    monkeypatch.setattr(cuda.shutil, "which", lambda name: None)
    monkeypatch.setattr(cuda.os, "access", lambda path, mode: False)
    sigmoid = parse("""<ir_version: 8, opset_import: ["" : 17]>
                       g (float[2, 5] x) => (float[2, 5] y) { y = Sigmoid(x) }""")
    with pytest.raises(TargetError, match="nvcc, which is not on PATH"):  # a kernel not cached
        edlc.compile(sigmoid, target="cuda", target_options={"arch": "sm_80"})


# ---- on a GPU ------------------------------------------------------------------------------------
@requires_gpu
def test_gpu_time_profile_and_arch_check(tmp_path):
    model = conv_matmul(seed=4)
    m = edlc.compile(model, target="cuda")  # the local GPU's arch
    assert_matches_ort(m, model, x_input(), rtol=RTOL, atol=ATOL)
    assert len(m.time(x_input(), repeat=3, warmup=1)) == 3
    rows = m.profile(x_input(), repeat=2)
    assert any(not r.builtin for r in rows)
    major = int(cuda.local_gpu_arch()[3:-1])
    other = "sm_90" if major == 8 else "sm_80"
    wrong = edlc.compile(model, target="cuda", target_options={"arch": other})
    with pytest.raises(TargetError, match="compile it with --arch"):
        wrong.run(x_input())


@requires_gpu
def test_gpu_bench_compares_with_onnxruntime(tmp_path):
    from edlc.bench import bench, format_report

    path = tmp_path / "m.onnx"
    onnx.save(conv_matmul(seed=5), path)
    report = bench(str(path), target="cuda", compare="onnxruntime", repeat=3, warmup=1)
    assert report.outputs_match, format_report(report)
    assert report.onnxruntime is not None and report.ratio
