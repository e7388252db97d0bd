"""Tutorial: a model for a Raspberry Pi 4 class board (aarch64 Linux), run here under emulation.

A Raspberry Pi 4 has four Cortex-A72 cores (armv8-a with NEON, no int8 dot-product
instruction); a Raspberry Pi 5 has Cortex-A76 cores, which add `sdot`/`udot` (`+dotprod`).
edlc cross-compiles on this machine and runs the result here under QEMU's model of the same CPU
(`qemu-aarch64 -cpu cortex-a72`). This tutorial:

  1. builds a small MobileNetV2 (32x32 input, to keep the emulator quick) and saves it as ONNX;
  2. compiles it with the CLI for the Pi 4, `edlc compile mobilenet.onnx --target arm --mcpu
     cortex-a72 -o rpi4`, and shows the bundle: everything the board needs, no Python;
  3. runs the bundle from Python (`Module.run`, which runs it under qemu-aarch64) and compares
     the outputs with onnxruntime on this machine;
  4. runs it exactly as you would on the board, `./run-model inputs.npz outputs.npz`, and says
     how to copy it there;
  5. quantizes to int8 and compares instructions per inference, fp32 against int8 on the Pi 4
     and int8 on a Pi 5 class CPU (cortex-a76: its int8 kernels are `sdot` instructions).

QEMU gives outputs and instruction counts, not board timings: an instruction count says
nothing of the board's cycles, caches or memory bandwidth. Measure latency on the board
(`./run-model --repeat 20 inputs.npz outputs.npz`).

Run it from anywhere (it writes its files into the current directory):

    python tutorials/arm.py

It needs the cross compilers and qemu-user that `scripts/setup.sh` installs, and exits non-zero
if an output differs from onnxruntime's or the bundle is incomplete.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

import edlc
from edlc.passes.quantize import quantize
from edlc.testing.zoo import mobilenet_v2, random_inputs

SYSROOT = "/usr/aarch64-linux-gnu"  # Debian's aarch64 C library, for user-mode QEMU


def fail(message: str) -> None:
    print(f"FAILED: {message}", file=sys.stderr)
    sys.exit(1)


def onnxruntime(model: onnx.ModelProto, inputs: dict[str, np.ndarray]) -> np.ndarray:
    """The first output of `model` under onnxruntime's CPU provider on this machine. Basic
    optimizations only: the int8 QDQ model then runs unfused, its exact arithmetic."""
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    session = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    return session.run(None, inputs)[0]


def main() -> None:
    # 1. The model, saved as ONNX like one exported from a training framework.
    model = mobilenet_v2(image=32)
    onnx.save(model, "mobilenet.onnx")
    x = random_inputs(model, seed=1)  # {"input": float32 [1, 3, 32, 32]}
    ref = onnxruntime(model, x)
    print(f"model: MobileNetV2, input {x['input'].shape}, output {ref.shape}")

    # 2. Cross-compile for the Pi 4 from the command line. The bundle holds the model library
    #    (an aarch64 ELF), its weights, the board's runner program and the TVM runtime.
    subprocess.run([sys.executable, "-m", "edlc.cli", "compile", "mobilenet.onnx", "--target", "arm",
                    "--mcpu", "cortex-a72", "-o", "rpi4"], check=True)
    print("\nthe bundle (copy the whole folder to the board):")
    for f in sorted(p for p in Path("rpi4").rglob("*") if p.is_file()):
        print(f"  {f}  ({f.stat().st_size:,} B)")
    for f in ("model.so", "params.npz", "run-model", "manifest.json", "lib/libtvm_runtime.so",
              "lib/libtvm_ffi.so"):
        if not Path("rpi4", f).is_file():
            fail(f"rpi4/{f} is missing from the bundle")

    # 3. Run it from Python: Module.run runs the bundle's run-model under qemu-aarch64, on
    #    QEMU's model of the Cortex-A72 (an instruction the Pi 4 lacks would stop it here too).
    m = edlc.load("rpi4")
    got = m.run(x)["logits"]
    err = float(np.abs(got - ref).max())
    print(f"\nfp32 under qemu-aarch64 (cortex-a72): max |edlc - onnxruntime| = {err:.2e}")
    if err > 1e-4:
        fail(f"the aarch64 build differs from onnxruntime by {err}")

    # 4. As on the board. run-model reads the inputs from an .npz (np.savez, one array per
    #    model input, by name) and writes the outputs the same way. On the board the command is
    #    the same without the qemu prefix.
    np.savez("inputs.npz", **x)
    cmd = ["qemu-aarch64", "-cpu", "cortex-a72", "-L", SYSROOT, "./run-model",
           str(Path("inputs.npz").resolve()), str(Path("outputs.npz").resolve())]
    subprocess.run(cmd, cwd="rpi4", check=True)
    with np.load("outputs.npz") as z:
        if not np.array_equal(z["logits"], got):
            fail("run-model wrote other outputs than Module.run returned")
    print("run-model under qemu-aarch64 wrote outputs.npz, the same outputs as Module.run")
    print("on the board:\n"
          "  scp -r rpi4 inputs.npz pi@raspberrypi.local:\n"
          "  ssh pi@raspberrypi.local 'cd rpi4 && ./run-model ../inputs.npz ../outputs.npz'\n"
          "  ssh pi@raspberrypi.local 'cd rpi4 && ./run-model --repeat 20 ../inputs.npz ../outputs.npz'"
          "   # latency: on the board only")

    # 5. int8, and what the Pi 5's dot-product instruction buys. Instruction counts come from
    #    the standalone form (`--aot`: one static program, no TVM runtime, single-threaded),
    #    which QEMU runs with an instruction-count plugin between the start and the end of one
    #    inference. The counts are the same on every run; they are instructions, not time.
    calibration = [random_inputs(model, seed=i) for i in range(2, 6)]
    qdq, _ = quantize(edlc.load_onnx(model), calibration)
    ref8 = onnxruntime(qdq.to_onnx(), x)  # the int8 model as onnxruntime computes it
    rows, outputs = [], {}
    for label, mcpu, q in (("fp32, Pi 4 (cortex-a72)", "cortex-a72", None),
                           ("int8, Pi 4 (cortex-a72)", "cortex-a72", "int8"),
                           ("int8, Pi 5 (cortex-a76)", "cortex-a76", "int8")):
        prog = edlc.compile(model, target="arm", aot=True, target_options={"mcpu": mcpu},
                            quantize=q, calibration=calibration if q else None)
        run = prog.run_firmware(x, count=True)
        outputs[label] = run.outputs["logits"]
        rows.append((label, run.instructions, prog.memory["program"]["file"]))
    err32 = float(np.abs(outputs[rows[0][0]] - ref).max())
    err8 = float(np.abs(outputs[rows[1][0]] - ref8).max())
    # int8 against onnxruntime's int8: an intermediate value that rounds the other way (float
    # rounding in the requantization, one step of 8 bits) shifts the logits by a few hundredths
    print(f"\nmax |diff| vs onnxruntime: fp32 {err32:.2e}, int8 {err8:.3f} (onnxruntime on the QDQ "
          f"model), int8 vs float model {float(np.abs(ref8 - ref).max()):.3f}")
    if err32 > 1e-4 or err8 > 0.05 * float(np.abs(ref8).max()):
        fail(f"the standalone programs differ from onnxruntime (fp32 {err32}, int8 {err8})")
    if not np.array_equal(outputs[rows[1][0]], outputs[rows[2][0]]):
        fail("int8 with sdot computed other outputs than int8 without (both sum exactly in int32)")
    print(f"\n{'':26} {'instructions':>14} {'program B':>11}")
    for label, n, size in rows:
        print(f"{label:26} {n:14,} {size:11,}")
    if not rows[2][1] < rows[1][1]:
        fail("with sdot the int8 program should run fewer instructions than without")
    print("On the Pi 4, int8 buys size (weights a quarter of fp32), not instructions: without\n"
          "dotprod edlc's int8 kernels are plain loops over int16 pairs. On a Pi 5 class CPU each\n"
          "sdot does 16 multiply-adds. Fewer instructions is a hint, not a measured speed-up:\n"
          "time it on the board.")


if __name__ == "__main__":
    main()
