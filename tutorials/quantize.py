"""Tutorial: quantize a model to int8 and compile it for x86.

Post-training static quantization needs a trained float model and a few inputs to calibrate
on. This tutorial makes both, then goes the whole way:

  1. train a small CNN on scikit-learn's bundled digits (8x8 images, no download) and export it
     to ONNX (`edlc.testing.digits`: random conv filters, a linear layer fit in closed form);
  2. quantize it with `edlc quantize` (the CLI; `edlc.passes.quantize.quantize` in Python),
     calibrating on training images: per-channel int8 weights, uint8 activations, and a report
     (per-layer scales and SQNR against float, the size before and after);
  3. compile the float model and the int8 one for x86 (`edlc.compile(..., quantize="int8",
     calibration=...)`) and compare accuracy on the held-out images, and latency.

Run it from anywhere (it writes its files into the current directory):

    python tutorials/quantize.py

It exits non-zero if int8 accuracy drops more than 1 point below float, or if the int8 module
is not bit-exact with the int8 graph's reference (or far from onnxruntime on the QDQ model).

How the int8 layers run: each Conv/MatMul (with its bias and ReLU) becomes one kernel that
accumulates exact int32 sums of int16 operand pairs (`vpmaddwd` on AVX2 and AVX-512, VNNI's
`vpdpwssd` where the CPU has it, over weights packed at compile time) and requantizes its
output in the same loop nest. Nothing is tuned here: these are edlc's default schedules.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx

THREADS = 2


def fail(message: str) -> None:
    print(f"FAILED: {message}", file=sys.stderr)
    sys.exit(1)


def edlc_cli(*args: str) -> None:
    """Run `edlc ARGS...` (as `python -m edlc.cli`), echo its output, stop if it fails."""
    print(f"$ edlc {' '.join(args)}")
    r = subprocess.run([sys.executable, "-m", "edlc.cli", *args], capture_output=True, text=True)
    print("\n".join("  " + line for line in (r.stdout + r.stderr).rstrip().splitlines()))
    if r.returncode != 0:
        fail(f"`edlc {' '.join(args)}` exited with {r.returncode}")


def best_ms(module, inputs: dict, rounds: int = 5, repeat: int = 10) -> float:
    """The fastest of several short runs, in ms: the figure least disturbed by other work."""
    return min(min(module.time(inputs, repeat=repeat, warmup=1)) for _ in range(rounds)) * 1e3


def main() -> None:
    import edlc
    from edlc.bench import set_tvm_threads
    from edlc.testing.digits import accuracy, load_digits_split, train_digits_cnn

    set_tvm_threads(THREADS)
    workdir = Path.cwd()

    # -- 1. a trained float model ------------------------------------------------------------
    data = load_digits_split()
    model = train_digits_cnn(data)
    model_path = workdir / "digits.onnx"
    onnx.save(model, model_path)
    n = len(data.x_test)
    print(f"digits CNN: {len(data.x_train)} training and {n} held-out images -> {model_path.name}")

    # -- 2. quantize: calibration data is one .npz array per input, samples along axis 0 -------
    calib_path = workdir / "calib.npz"
    np.savez(calib_path, x=data.x_train[:64])
    edlc_cli("quantize", str(model_path), "--calib", str(calib_path), "--input-shape", "x=1x1x8x8",
             "-o", "digits.int8.onnx", "--report", "digits.int8.json")
    print(f"file size: {model_path.stat().st_size} -> {(workdir / 'digits.int8.onnx').stat().st_size} bytes "
          "(QDQ ONNX: int8 weights, int32 biases)")

    # -- 3. compile float and int8 for x86; the whole held-out split is one batch --------------
    shapes = {"x": (n, 1, 8, 8)}
    calibration = [{"x": data.x_train[:n]}]  # samples must have the compiled shape
    fp32 = edlc.compile(model, target="x86", input_shapes=shapes)
    int8 = edlc.compile(model, target="x86", input_shapes=shapes, quantize="int8",
                        calibration=calibration)
    q = int8.manifest["quantization"]
    print(f"int8 layers: {q['int8_layers']}, weights {q['size_before'] / 1e3:.1f} kB -> "
          f"{q['size_after'] / 1e3:.1f} kB, output SQNR vs float {q['sqnr_db']:.1f} dB")

    feeds = {"x": data.x_test}
    acc_fp32 = accuracy(fp32.run(feeds)["logits"], data.y_test)
    acc_int8 = accuracy(int8.run(feeds)["logits"], data.y_test)
    print(f"held-out accuracy: float {acc_fp32:.2f}%, int8 {acc_int8:.2f}%")
    if acc_fp32 - acc_int8 > 1.0:
        fail(f"int8 loses {acc_fp32 - acc_int8:.2f} points of accuracy")

    # the int8 module computes exactly what the int8 graph says (edlc's reference interpreter:
    # int32 sums, float32 requantization), and what onnxruntime makes of the QDQ model up to
    # its float32 rounding (it runs the QDQ pairs around float Conv/MatMul here)
    import onnxruntime as ort

    from edlc.ir.interpreter import run_graph
    from edlc.passes.quantize import quantize

    g8, _ = quantize(edlc.load_onnx(model, shapes), calibration)
    got = int8.run(feeds)["logits"]
    if not np.array_equal(got, run_graph(g8, feeds)[0]):
        fail("the int8 module is not bit-exact with the int8 graph's reference")
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    sess = ort.InferenceSession(g8.to_onnx().SerializeToString(), so, providers=["CPUExecutionProvider"])
    (want,) = sess.run(None, feeds)
    print(f"int8 module: bit-exact with the reference; max |edlc - onnxruntime QDQ| = "
          f"{np.abs(got - want).max():.1e}")
    if not np.allclose(got, want, rtol=1e-2, atol=1e-2):
        fail("the int8 module disagrees with the QDQ model run by onnxruntime")

    t32, t8 = best_ms(fp32, feeds), best_ms(int8, feeds)
    print(f"latency ({n} images, {THREADS} threads): float {t32:.3f} ms, int8 {t8:.3f} ms, "
          f"speedup {t32 / t8:.2f}x")
    print("OK")


if __name__ == "__main__":
    main()
