"""ARM figures for the zoo models: artifact sizes, and instructions per inference under QEMU
of fp32 against int8 (with and without the dot-product extension).

    python benchmarks/arm_instructions.py [--models resnet18,mobilenet_v2,bert] [--calib 4]

Small inputs, as the ARM tests use: ResNet-18 and MobileNetV2 at 1x3x32x32, BERT one layer
(hidden 256, 4 heads) at sequence 16. Per model it builds

- the `--target arm` bundle (cortex-a76) and sums its files: model.so + params.npz, and the
  whole bundle with run-model and the TVM runtime in lib/;
- the standalone `--aot` program (one static binary, weights inside) for fp32 on cortex-a76,
  int8 on cortex-a72 (no dotprod: int16-pair loops) and int8 on cortex-a76 (dotprod: sdot);

and runs each program once under qemu-aarch64 with the instruction-count plugin. The counts
are deterministic (identical on every run, whatever the load on this machine); they are
instructions, not time: QEMU says nothing of a board's cycles, caches or memory bandwidth.
Each output is checked against onnxruntime (fp32: the model; int8: the QDQ model `edlc
quantize` writes, unfused) and the max |diff| printed.
"""

from __future__ import annotations

import argparse
import subprocess
import tempfile
from pathlib import Path

import numpy as np

import edlc
from edlc.passes.quantize import quantize
from edlc.testing import zoo
from edlc.testing.reference import ort_outputs

MODELS = {
    "resnet18": ("1x3x32x32", lambda: zoo.resnet18(image=32)),
    "mobilenet_v2": ("1x3x32x32", lambda: zoo.mobilenet_v2(image=32)),
    "bert": ("seq 16, 1 layer", lambda: zoo.bert_encoder(seq=16, layers=1)),
}
FP32_CPU, PLAIN_CPU, DOT_CPU = "cortex-a76", "cortex-a72", "cortex-a76"


def max_diff(got: dict[str, np.ndarray], want: dict[str, np.ndarray]) -> float:
    return max(float(np.abs(got[k].astype(np.float64) - want[k]).max()) for k in want)


def dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def sdot_count(path: Path) -> int:
    asm = subprocess.run(["aarch64-linux-gnu-objdump", "-d", str(path)], capture_output=True,
                         text=True, check=True).stdout
    return sum(1 for ln in asm.splitlines() if ln.split("\t")[2:3] and ln.split("\t")[2].strip() == "sdot")


def measure(name: str, calib: int, work: Path) -> dict[str, object]:
    shape, make = MODELS[name]
    model = make()
    samples = [zoo.random_inputs(model, seed=i) for i in range(calib)]
    inputs = samples[0]
    g8, _ = quantize(edlc.load_onnx(model), samples)
    want = {"fp32": ort_outputs(model, inputs), "int8": ort_outputs(g8.to_onnx(), inputs, basic=True)}
    row: dict[str, object] = {"model": name, "input": shape}

    bundle = edlc.compile(model, target="arm", target_options={"mcpu": FP32_CPU}).export(work / f"{name}-bundle")
    row["bundle_model"] = (bundle / "model.so").stat().st_size + (bundle / "params.npz").stat().st_size
    row["bundle_total"] = dir_bytes(bundle)
    bundle8 = edlc.compile(model, target="arm", target_options={"mcpu": DOT_CPU}, quantize="int8",
                           calibration=samples).export(work / f"{name}-bundle-int8")
    row["bundle8_model"] = (bundle8 / "model.so").stat().st_size + (bundle8 / "params.npz").stat().st_size

    for key, mcpu, q in (("fp32", FP32_CPU, None), ("int8", PLAIN_CPU, "int8"), ("int8dot", DOT_CPU, "int8")):
        m = edlc.compile(model, target="arm", aot=True, target_options={"mcpu": mcpu}, quantize=q,
                         calibration=samples if q else None)
        out = m.export(work / f"{name}-{key}")
        run = m.run_firmware(inputs, count=True)
        row[f"{key}_insns"] = run.instructions
        row[f"{key}_program"] = (out / "run-model").stat().st_size
        row[f"{key}_diff"] = max_diff(run.outputs, want["fp32" if q is None else "int8"])
        (kernels,) = (out / "lib").glob("*_kernels.o")
        row[f"{key}_sdot"] = sdot_count(kernels)
        if q is not None:
            summary = m.manifest["quantization"]
            row["int8_layers"] = f"{summary['int8_layers']}/{summary['layers']}"
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--calib", type=int, default=4, help="random calibration inputs")
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="edlc-arm-bench-") as tmp:
        for name in args.models.split(","):
            rows.append(measure(name, args.calib, Path(tmp)))
            print(f"{name}: done", flush=True)
    mb = 1 / 1e6
    print("\nsizes (MB); bundle = model.so + params.npz (whole bundle, with run-model and the TVM "
          "runtime); program = the static --aot run-model (weights inside)")
    print(f"{'model':13} {'input':16} {'bundle fp32':>20} {'bundle int8':>12} {'program fp32':>13} "
          f"{'program int8':>13}")
    for r in rows:
        print(f"{r['model']:13} {r['input']:16} {r['bundle_model'] * mb:8.2f} ({r['bundle_total'] * mb:6.2f} all) "
              f"{r['bundle8_model'] * mb:12.2f} {r['fp32_program'] * mb:13.2f} {r['int8dot_program'] * mb:13.2f}")
    print(f"\ninstructions per inference under qemu-aarch64 (millions; deterministic; not time): "
          f"fp32 {FP32_CPU}, int8 {PLAIN_CPU} (no dotprod), int8 {DOT_CPU} (sdot)")
    print(f"{'model':13} {'fp32':>9} {'int8':>9} {'int8+dot':>9} {'int8/fp32':>10} {'dot/fp32':>9} "
          f"{'sdot':>6} {'int8 layers':>11}  max|diff| vs onnxruntime (fp32, int8, int8+dot)")
    for r in rows:
        f, i, d = r["fp32_insns"], r["int8_insns"], r["int8dot_insns"]
        print(f"{r['model']:13} {f / 1e6:9.2f} {i / 1e6:9.2f} {d / 1e6:9.2f} {i / f:9.2f}x {d / f:8.2f}x "
              f"{r['int8dot_sdot']:6d} {r['int8_layers']:>11}  {r['fp32_diff']:.2g}, {r['int8_diff']:.2g}, {r['int8dot_diff']:.2g}")


if __name__ == "__main__":
    main()
