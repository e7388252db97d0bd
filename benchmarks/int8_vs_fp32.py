"""int8 against fp32 on the zoo models: edlc int8, edlc fp32 and onnxruntime int8 (the QDQ
model `edlc quantize` writes), in one process, at the same thread count.

    python benchmarks/int8_vs_fp32.py [--models resnet18,bert] [--threads 2] [--repeat 20] [--calib 8]

Prints per model the latency of each (median and min of interleaved rounds: the min is the
figure to trust on a shared machine) and the ratios int8 / edlc fp32 and int8 / onnxruntime
int8 (lower is better), and the SQNR of edlc's int8 outputs against its fp32 ones (exactness
against the IR reference is what tests/passes/quantize checks).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import onnxruntime as ort

import edlc
from edlc.bench import set_tvm_threads
from edlc.passes.quantize import quantize
from edlc.passes.quantize.params import sqnr
from edlc.testing.zoo import ZOO, random_inputs

SHAPES = {"resnet18": {"input": (1, 3, 224, 224)}, "mobilenet_v2": {"input": (1, 3, 224, 224)},
          "bert": {"input_ids": (1, 128), "attention_mask": (1, 128)}}


def ort_session(model, threads: int):
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])


def _timer(fn, repeat: int):
    def run() -> list[float]:
        times = []
        for _ in range(repeat):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        return times
    return run


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default="resnet18,bert")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=10, help="runs per round")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--calib", type=int, default=8, help="random calibration inputs")
    args = ap.parse_args()
    set_tvm_threads(args.threads)
    print(f"x86, {args.threads} threads; ms as median / min of {args.rounds} interleaved rounds "
          f"of {args.repeat} runs")
    print(f"{'model':10} {'edlc fp32':>15} {'edlc int8':>15} {'ort int8':>15} {'int8/fp32':>10} "
          f"{'int8/ort8':>10}  int8 SQNR vs fp32")
    for name in args.models.split(","):
        print(bench_model(name, args))


def bench_model(name: str, args: argparse.Namespace) -> str:
    """One table row: compile fp32 and int8, time the three interleaved."""
    shapes = SHAPES[name]
    model = ZOO[name]()
    samples = [random_inputs(model, shapes=shapes, seed=i) for i in range(args.calib)]
    inputs = samples[0]
    g8, _ = quantize(edlc.load_onnx(model, shapes), samples)
    fp32 = edlc.compile(model, input_shapes=shapes)
    int8 = edlc.compile(model, input_shapes=shapes, quantize="int8", calibration=samples)
    sess = ort_session(g8.to_onnx(), args.threads)
    got, want = int8.run(inputs), fp32.run(inputs)
    agree = min(sqnr(want[k], got[k]) for k in want)
    runs = {"fp32": lambda: fp32.time(inputs, repeat=args.repeat, warmup=1),
            "int8": lambda: int8.time(inputs, repeat=args.repeat, warmup=1),
            "ort8": _timer(lambda: sess.run(None, inputs), args.repeat)}
    times: dict[str, list[float]] = {k: [] for k in runs}
    for _ in range(args.rounds):
        for k, fn in runs.items():
            times[k] += fn()
    med = {k: float(np.median(v)) * 1e3 for k, v in times.items()}
    low = {k: float(np.min(v)) * 1e3 for k, v in times.items()}
    cells = [f"{med[k]:.2f} / {low[k]:.2f}" for k in ("fp32", "int8", "ort8")]
    return (f"{name:10} {cells[0]:>15} {cells[1]:>15} {cells[2]:>15} "
            f"{low['int8'] / low['fp32']:9.2f}x {low['int8'] / low['ort8']:9.2f}x  {agree:.1f} dB")


if __name__ == "__main__":
    main()
