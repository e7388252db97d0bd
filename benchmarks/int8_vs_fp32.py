"""int8 against fp32 on the zoo models: edlc int8, edlc fp32 and onnxruntime int8 (the QDQ
model `edlc quantize` writes), in one process, at the same thread count.

    python benchmarks/int8_vs_fp32.py [--models resnet18,bert] [--threads 2] [--rounds 20]
                                      [--repeat 5] [--calib 32]

The three run interleaved, round by round (each round times `--repeat` runs of each), so that
load from other processes falls on all three alike. Prints per model the latency of each
(min and median over all runs: on a shared machine the min is the figure to trust), the
ratios int8 / edlc fp32 and int8 / onnxruntime int8 by min and by median (lower is better),
the SQNR of the int8 model against float over the `--calib` calibration inputs (the
quantizer's report) and that of edlc's int8 outputs against its fp32 ones on the timed input,
and the machine's load average before and after (os.getloadavg: runnable processes per
core count; above the core count, timings are inflated). Exactness against the IR reference
is what tests/passes/quantize checks.
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np

import edlc
from edlc.bench import set_tvm_threads
from edlc.passes.quantize import quantize
from edlc.passes.quantize.params import sqnr
from edlc.testing.reference import ort_session
from edlc.testing.zoo import SHAPES, ZOO, random_inputs


def _timer(fn, repeat: int):
    def run() -> list[float]:
        times = []
        for _ in range(repeat):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        return times
    return run


def _load() -> str:
    return "/".join(f"{x:.1f}" for x in os.getloadavg())


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default="resnet18,bert")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=5, help="runs of each per round")
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--calib", type=int, default=32, help="random calibration inputs")
    ap.add_argument("--weights", default=None, choices=["twins"],
                    help="int8 weight range (passes/quantize/params.py); twins: matmul weights "
                         "whose 4-groups the AVX2 twin kernels add in 16 bits (about -1.6 dB)")
    args = ap.parse_args()
    set_tvm_threads(args.threads)
    print(f"x86, {args.threads} threads, {os.cpu_count()} CPUs; ms as min / median over {args.rounds} "
          f"interleaved rounds of {args.repeat} runs; load average (1/5/15 min) before -> after")
    print(f"{'model':10} {'edlc fp32':>15} {'edlc int8':>15} {'ort int8':>15} {'int8/fp32':>15} "
          f"{'int8/ort8':>15}  int8 SQNR vs float ({args.calib} inputs) | vs edlc fp32   load")
    for name in args.models.split(","):
        print(bench_model(name, args), flush=True)


def bench_model(name: str, args: argparse.Namespace) -> str:
    """One table row: compile fp32 and int8, time the three interleaved."""
    shapes = SHAPES[name]
    model = ZOO[name]()
    samples = [random_inputs(model, shapes=shapes, seed=i) for i in range(args.calib)]
    inputs = samples[0]
    options = {"weights": args.weights} if args.weights else {}
    g8, report = quantize(edlc.load_onnx(model, shapes), samples, **options)
    fp32 = edlc.compile(model, input_shapes=shapes)
    int8 = edlc.compile(edlc.load_onnx(model, shapes), input_shapes=shapes, quantize="int8",
                        calibration=samples, quantize_options=options)
    sess = ort_session(g8.to_onnx(), threads=args.threads)
    got, want = int8.run(inputs), fp32.run(inputs)
    agree = min(sqnr(want[k], got[k]) for k in want)
    runs = {"fp32": lambda: fp32.time(inputs, repeat=args.repeat, warmup=1),
            "int8": lambda: int8.time(inputs, repeat=args.repeat, warmup=1),
            "ort8": _timer(lambda: sess.run(None, inputs), args.repeat)}
    times: dict[str, list[float]] = {k: [] for k in runs}
    before = _load()
    for _ in range(args.rounds):
        for k, fn in runs.items():
            times[k] += fn()
    med = {k: float(np.median(v)) * 1e3 for k, v in times.items()}
    low = {k: float(np.min(v)) * 1e3 for k, v in times.items()}
    cells = [f"{low[k]:.2f} / {med[k]:.2f}" for k in ("fp32", "int8", "ort8")]
    ratios = [f"{low['int8'] / low[k]:.2f} / {med['int8'] / med[k]:.2f}" for k in ("fp32", "ort8")]
    return (f"{name:10} {cells[0]:>15} {cells[1]:>15} {cells[2]:>15} {ratios[0]:>15} {ratios[1]:>15}  "
            f"{report.sqnr_db:.1f} dB | {agree:.1f} dB   {before} -> {_load()}")


if __name__ == "__main__":
    main()
