"""Tutorial: from an ONNX model to Cortex-M firmware, run on an emulated board.

A microcontroller has no operating system, no heap to speak of and a few hundred KB of RAM:
edlc compiles the model ahead of time into a C library (kernels, one entry function, weights as
`const` arrays, every tensor at a fixed offset of one static arena) and a small firmware
project around it. This tutorial:

  1. builds a keyword-spotting DS-CNN (MLPerf Tiny's shape: 49x10 MFCC input, 12 classes) in
     code and saves it as ONNX;
  2. compiles it with the CLI, `edlc compile kws.onnx --target cortex-m4 --aot -o fw`, and
     reads the memory report (`fw/memory.json`: flash for code and weights, RAM for the arena
     and the stack, and the arena's liveness lower bound);
  3. runs it in Python on QEMU's MPS2-AN386 board (a Cortex-M4), compares the outputs with
     onnxruntime, and counts the instructions of one inference (deterministic, unlike time
     under an emulator);
  4. does the same in int8, calibrated on a few inputs, to compare flash, RAM and instructions;
  5. shows what to copy into a vendor project (STM32Cube, MCUXpresso, Zephyr, ...).

Run it from anywhere (it writes its files into the current directory):

    python tutorials/firmware.py

It exits non-zero if the firmware's outputs differ from onnxruntime's or the files are missing.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

import edlc
from edlc.testing.tiny import ds_cnn_kws


def fail(message: str) -> None:
    print(f"FAILED: {message}", file=sys.stderr)
    sys.exit(1)


def main() -> None:
    # 1. The model, saved as ONNX like one exported from a training framework.
    model = ds_cnn_kws()
    onnx.save(model, "kws.onnx")
    name = model.graph.input[0].name
    shape = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    rng = np.random.default_rng(0)
    x = {name: rng.standard_normal(shape).astype(np.float32)}
    print(f"model: DS-CNN keyword spotting, input {name} {shape}")

    # 2. The firmware project, from the command line.
    subprocess.run([sys.executable, "-m", "edlc.cli", "compile", "kws.onnx", "--target", "cortex-m4",
                    "--aot", "-o", "fw"], check=True)
    memory = json.loads(Path("fw/memory.json").read_text())
    print("fw/memory.json:", json.dumps({k: memory[k] for k in ("flash", "ram")}, indent=1))
    for f in ("fw/Makefile", "fw/edlc_sections.ld", "fw/memory.json"):
        if not Path(f).is_file():
            fail(f"{f} is missing from the firmware project")

    # 3. Run it on the emulated Cortex-M4 and check it against onnxruntime.
    fp32 = edlc.compile(model, target="cortex-m4")
    run = fp32.run_firmware(x, count=True)
    outputs, stack, instructions = run.outputs, run.stack_bytes, run.instructions
    ref = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, x)
    got = next(iter(outputs.values()))
    err = float(np.abs(got - ref[0]).max())
    print(f"fp32 on QEMU mps2-an386: max |firmware - onnxruntime| = {err:.2e}; "
          f"{instructions:,} instructions per inference; stack {stack} B")
    if err > 1e-5:
        fail(f"fp32 firmware differs from onnxruntime by {err}")

    # 4. int8: calibrate on a few inputs; weights shrink to a quarter, the arena too.
    calibration = [{name: rng.standard_normal(shape).astype(np.float32)} for _ in range(8)]
    int8 = edlc.compile(model, target="cortex-m4", quantize="int8", calibration=calibration)
    q_run = int8.run_firmware(x, count=True)
    q_outputs, q_instructions = q_run.outputs, q_run.instructions
    q_err = float(np.abs(next(iter(q_outputs.values())) - ref[0]).max())
    print(f"{'':8} {'flash B':>10} {'RAM B':>8} {'instructions':>14}")
    for label, m, n in (("fp32", fp32, instructions), ("int8", int8, q_instructions)):
        print(f"{label:8} {m.memory['flash']['total']:10,} {m.memory['ram']['total']:8,} {n:14,}")
    print(f"int8 vs float (onnxruntime): max |diff| = {q_err:.3f} (quantization error, not a bug)")
    if q_err > 0.25 * float(np.abs(ref[0]).max() + 1e-6):
        fail("the int8 firmware is far from the float model")

    # 5. Into a vendor project: the library is fw/lib (header, entry, weights, kernels).
    print("\nfor a vendor project, copy fw/lib/ and INCLUDE fw/edlc_sections.ld:")
    for f in sorted(Path("fw/lib").iterdir()):
        print(f"  {f}  ({f.stat().st_size:,} B)")
    header = next(Path("fw/lib").glob("*.h")).read_text()
    entry = next(line for line in header.splitlines() if "_run(" in line)
    print(f"the call: {entry.strip()}")


if __name__ == "__main__":
    main()
