"""Compile time, graph size, kernel count and latency of the zoo models on x86 at several
optimization levels, side by side with onnxruntime.

    python benchmarks/zoo_vs_onnxruntime.py [--models resnet18,mobilenet_v2,bert] [--repeat 20] [-O 0,2]

Everything runs on this machine in the same process with the same thread count (all cores, as
TVM's runtime uses by default); outputs are checked against onnxruntime before timing. Prints,
per model and level: nodes of the imported graph -> after the passes, kernels in the built
module, compile time, median latency, and the ratio edlc / onnxruntime (lower is better).
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
import onnxruntime as ort

import edlc
from edlc.driver import import_model
from edlc.testing.zoo import ZOO, random_inputs

SHAPES = {"resnet18": {"input": (1, 3, 224, 224)}, "mobilenet_v2": {"input": (1, 3, 224, 224)},
          "bert": {"input_ids": (1, 128), "attention_mask": (1, 128)}}


def time_ort(model, inputs, repeat: int, threads: int) -> tuple[list[float], dict]:
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    outs = sess.run(None, inputs)
    times = []
    for i in range(repeat + 2):
        t0 = time.perf_counter()
        sess.run(None, inputs)
        if i >= 2:
            times.append(time.perf_counter() - t0)
    return times, dict(zip([o.name for o in sess.get_outputs()], outs))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default=",".join(sorted(ZOO)))
    ap.add_argument("--repeat", type=int, default=20)
    ap.add_argument("-O", dest="opt_levels", default="0,2", help="comma-separated levels")
    args = ap.parse_args()
    levels = [int(v) for v in args.opt_levels.split(",")]
    threads = len(os.sched_getaffinity(0))
    print(f"x86, {threads} threads, median of {args.repeat} runs")
    print(f"{'model':14} {'level':>5} {'nodes':>11} {'kernels':>7} {'compile s':>9} {'edlc ms':>10} "
          f"{'ort ms':>9} {'ratio':>7}  max |diff|")
    for name in args.models.split(","):
        model = ZOO[name]()
        inputs = random_inputs(model, shapes=SHAPES[name])
        ort_times, ref = time_ort(model, inputs, args.repeat, threads)
        o = np.median(ort_times) * 1e3
        imported = len(import_model(model, SHAPES[name]).nodes)
        for level in levels:
            records: list = []
            t0 = time.perf_counter()
            module = edlc.compile(model, target="x86", input_shapes=SHAPES[name], opt_level=level,
                                  pass_records=records)
            compile_s = time.perf_counter() - t0
            nodes = records[-1].nodes_after if records else imported
            got = module.run(inputs)
            diff = max(float(np.abs(got[k] - ref[k]).max()) for k in ref)
            e = np.median(module.time(inputs, repeat=args.repeat, warmup=2)) * 1e3
            print(f"{name:14} {'-O' + str(level):>5} {imported:>4} -> {nodes:<4} "
                  f"{module.manifest['kernels']:7} {compile_s:9.1f} {e:10.2f} {o:9.2f} {e / o:7.1f}x  "
                  f"{diff:.2e}")


if __name__ == "__main__":
    main()
