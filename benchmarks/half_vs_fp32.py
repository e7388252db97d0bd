"""float16 and bfloat16 against float32 on the zoo models: weight bytes, single-thread latency
and output error, in one process; with --arm, instructions per inference on aarch64.

    python benchmarks/half_vs_fp32.py [--models resnet18,bert] [--rounds 15] [--repeat 3] [--arm]

Per model (ResNet-18 at 1x3x224x224, the BERT-style encoder at sequence 128, as
benchmarks/int8_vs_fp32.py) it compiles float32, `quantize="fp16"` and `quantize="bf16"` for
x86, and prints

- weights: the bytes of the artifact's params (what `params.npz` holds) and of `model.so`;
- latency on one thread (TVM_NUM_THREADS=1, onnxruntime intra_op_num_threads=1), as CPU time of
  the calling thread (`time.thread_time`: what other processes do to the machine's clock does
  not count), median over `--rounds` interleaved rounds of `--repeat` runs each, with
  onnxruntime's float32 for reference;
- the SQNR of each output against onnxruntime's float32 (float16 rounding alone gives about
  66 dB on O(1) values, bfloat16's about 42 dB).

`--arm` (instead of x86) counts the instructions of one inference of the static `--aot`
program under qemu-aarch64, as benchmarks/arm_instructions.py does, at its small sizes
(ResNet-18 and MobileNetV2 at 1x3x32x32, BERT one layer at sequence 16): float32, float16,
bfloat16 and float16 summed in float16 (`accumulate="float16"`) on cortex-a76 (which has
float16 arithmetic), and float16 on cortex-a72 (which converts). Instructions, not time.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TVM_NUM_THREADS", "1")

import numpy as np  # noqa: E402

import edlc  # noqa: E402
from edlc.bench import set_tvm_threads  # noqa: E402
from edlc.testing.reference import ort_outputs, ort_session  # noqa: E402
from edlc.testing.zoo import SHAPES, ZOO, random_inputs  # noqa: E402

KINDS = ("fp32", "fp16", "bf16")


def sqnr(ref: np.ndarray, got: np.ndarray) -> float:
    ref, got = ref.astype(np.float64), got.astype(np.float64)
    noise = float(((ref - got) ** 2).sum())
    return float("inf") if noise == 0 else 10 * float(np.log10((ref ** 2).sum() / noise))


def cpu_timer(fn):
    """`fn` timed as CPU seconds of this thread."""
    def run(repeat: int) -> list[float]:
        out = []
        for _ in range(repeat):
            t0 = time.thread_time()
            fn()
            out.append(time.thread_time() - t0)
        return out
    return run


def module_timer(module, inputs):
    from edlc.runtime import check_inputs

    vm = module._machine()
    args = module._args(check_inputs(inputs, module.inputs))
    return cpu_timer(lambda: vm["main"](*args))


def bench_model(name: str, args: argparse.Namespace) -> list[str]:
    shapes = SHAPES[name]
    model = ZOO[name]()
    inputs = random_inputs(model, shapes=shapes)
    sess = ort_session(model, threads=1)
    want = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, inputs)))
    modules, rows = {}, {}
    with tempfile.TemporaryDirectory(prefix="edlc-half-") as tmp:
        for kind in KINDS:
            t0 = time.perf_counter()
            m = edlc.compile(model, input_shapes=shapes, quantize=None if kind == "fp32" else kind)
            seconds = time.perf_counter() - t0
            out = Path(m.export(Path(tmp) / kind))
            got = m.run(inputs)
            rows[kind] = {"params": sum(v.nbytes for v in m.params.values()),
                          "npz": (out / "params.npz").stat().st_size,
                          "so": (out / "model.so").stat().st_size,
                          "sqnr": min(sqnr(want[k], got[k]) for k in want),
                          "compile": seconds, "kernels": m.manifest["kernels"]}
            modules[kind] = m
    timers = {k: module_timer(m, inputs) for k, m in modules.items()}
    timers["ort fp32"] = cpu_timer(lambda: sess.run(None, inputs))
    for t in timers.values():
        t(2)  # warm up
    times: dict[str, list[float]] = {k: [] for k in timers}
    for _ in range(args.rounds):
        for k, t in timers.items():
            times[k] += t(args.repeat)
    med = {k: float(np.median(v)) * 1e3 for k, v in times.items()}
    lines = []
    for kind in KINDS:
        r = rows[kind]
        lines.append(f"{name:9} {kind:5} params {r['params'] / 1e6:7.2f} MB (npz {r['npz'] / 1e6:6.2f}, "
                     f"model.so {r['so'] / 1e6:5.2f})  {med[kind]:8.2f} ms  x{med[kind] / med['fp32']:.2f} "
                     f"of fp32  SQNR {r['sqnr']:5.1f} dB  {r['kernels']} kernels, compiled in "
                     f"{r['compile']:.0f} s")
    lines.append(f"{name:9} onnxruntime fp32 (1 thread) {med['ort fp32']:8.2f} ms")
    return lines


ARM_MODELS = {"resnet18": lambda: ZOO["resnet18"](image=32),
              "mobilenet_v2": lambda: ZOO["mobilenet_v2"](image=32),
              "bert": lambda: ZOO["bert"](seq=16, layers=1)}
ARM_BUILDS = (("fp32", "cortex-a76", None, None), ("fp16", "cortex-a76", "fp16", None),
              ("bf16", "cortex-a76", "bf16", None), ("fp16 acc16", "cortex-a76", "fp16", "float16"),
              ("fp16 a72", "cortex-a72", "fp16", None))


def arm_model(name: str) -> list[str]:
    """Instructions per inference of each ARM build (static --aot programs under QEMU)."""
    model = ARM_MODELS[name]()
    inputs = random_inputs(model)
    want = ort_outputs(model, inputs)
    lines, base = [], None
    for label, mcpu, q, acc in ARM_BUILDS:
        m = edlc.compile(model, target="arm", aot=True, target_options={"mcpu": mcpu}, quantize=q,
                         quantize_options={"accumulate": acc} if acc else None)
        run = m.run_firmware(inputs, count=True)
        base = base or run.instructions
        db = min(sqnr(want[k], run.outputs[k]) for k in want)
        weights = sum(v.nbytes for v in m.params.values()) if m.params else None
        lines.append(f"{name:12} {label:10} {mcpu:10} {run.instructions / 1e6:8.2f} M  "
                     f"x{run.instructions / base:.2f} of fp32  SQNR {db:5.1f} dB"
                     + (f"  weights {weights / 1e6:.2f} MB" if weights else ""))
    return lines


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default="resnet18,bert")
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--repeat", type=int, default=3, help="runs of each per round")
    ap.add_argument("--arm", action="store_true", help="instructions on aarch64 under QEMU instead")
    args = ap.parse_args()
    if args.arm:
        print("aarch64 static programs, instructions per inference under qemu-aarch64 (millions)")
        for name in args.models.split(","):
            for line in arm_model(name):
                print(line, flush=True)
        return
    set_tvm_threads(1)
    load = "/".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"x86, 1 thread, CPU time (median of {args.rounds} interleaved rounds x {args.repeat}); "
          f"load {load}")
    for name in args.models.split(","):
        for line in bench_model(name, args):
            print(line, flush=True)


if __name__ == "__main__":
    main()
