"""What structured sparsity buys with edlc's own kernels, dense vs sparse, in one run.

    python benchmarks/sparsity.py [--only channel,block,nm] [--repeat 20] [--image 224] [--rows 1]

- channel: ResNet-18 pruned 50% (`sparsity="channel:0.5"`) vs unpruned, end to end;
- block: a 768x3072 MatMul layer (rows x 768 @ 768x3072, one row by default: a matrix-vector
  product, as in token-by-token decoding) at 90% 1x4 / 4x4 block sparsity vs edlc's dense
  kernel for the same (pruned) weights;
- nm: the same layer at 2:4 and 1:4 vs dense.

Every sparse build is checked first against the dense computation with the same (pruned)
weights. Dense and sparse (and onnxruntime's dense MatMul, one thread, for reference) run in
turns, so that load from other processes hits them alike and each run follows runs that
streamed other weights through the caches, as a layer of a larger model does. Prints median
latencies (`Module.time`, same thread count) and the speedups. A one-row layer is memory
bound: the speedup follows the bytes read (the 2:4 kernel reads 4.7 MB of values and 0.3 MB
of positions where dense reads 9.4 MB; 1x4 blocks at 90%, 1.0 MB).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

import edlc
from edlc.driver import import_model
from edlc.passes.sparsity import prune_channels
from edlc.testing.reference import ort_outputs, ort_session
from edlc.testing.zoo import resnet18


def median_ms(dense, sparse, inputs: dict, repeat: int, reference=None) -> tuple[float, ...]:
    """Median latencies (ms) of two modules (and of a `reference` callable), measured in turns
    so that load from other processes hits all alike."""
    dense.time(inputs, repeat=1, warmup=3)
    sparse.time(inputs, repeat=1, warmup=3)
    d, s, r = [], [], []
    for _ in range(repeat):
        d += dense.time(inputs, repeat=1, warmup=0)
        s += sparse.time(inputs, repeat=1, warmup=0)
        if reference is not None:
            t0 = time.perf_counter()
            reference()
            r.append(time.perf_counter() - t0)
    return tuple(float(np.median(t)) * 1e3 for t in (d, s, r) if t)


def bench_channel(repeat: int, image: int) -> None:
    shapes = {"input": (1, 3, image, image)}
    graph = import_model(resnet18(image=image), shapes)
    x = {"input": np.random.default_rng(0).standard_normal(shapes["input"]).astype(np.float32)}
    t0 = time.perf_counter()
    dense = edlc.compile(graph)
    t1 = time.perf_counter()
    pruned_graph, report = prune_channels(graph, 0.5)
    pruned = edlc.compile(pruned_graph)
    t2 = time.perf_counter()
    # the check: edlc's pruned build vs onnxruntime on its export
    want = ort_outputs(pruned_graph.to_onnx(), x)["logits"]
    diff = float(np.abs(pruned.run(x)["logits"] - want).max())
    d, s = median_ms(dense, pruned, x, repeat)
    report.measured_speedup = d / s
    print(f"channel  ResNet-18 1x3x{image}x{image}: dense {d:8.2f} ms  pruned 50% {s:8.2f} ms  "
          f"speedup {d / s:5.2f}x (estimated {report.estimated_speedup:.2f}x; compile "
          f"{t1 - t0:.0f} s / {t2 - t1:.0f} s; max |edlc - ort| {diff:.1e})")


def _matmul_model(w: np.ndarray, m: int) -> onnx.ModelProto:
    k, n = w.shape
    g = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "layer",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [m, k])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [m, n])],
                          [numpy_helper.from_array(w, "w")])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def bench_weight_sparsity(spec: str, repeat: int, m: int = 1, k: int = 768, n: int = 3072) -> None:
    """A sparse MatMul layer vs edlc's dense kernel on the same pruned weights."""
    from edlc.passes.sparsity import sparsify

    rng = np.random.default_rng(0)
    model = _matmul_model(rng.standard_normal((k, n)).astype(np.float32), m)
    graph = import_model(model)
    sparse_graph, report = sparsify(graph, spec)
    dense_graph = sparse_graph.copy()
    from edlc.passes.sparsity.weights import densify

    densify(dense_graph)
    x = {"x": rng.standard_normal((m, k)).astype(np.float32)}
    dense, sparse = edlc.compile(dense_graph), edlc.compile(sparse_graph)
    want = dense.run(x)["y"]
    diff = float(np.abs(sparse.run(x)["y"] - want).max() / np.abs(want).max())
    sess = ort_session(dense_graph.to_onnx(), threads=1)
    d, s, r = median_ms(dense, sparse, x, repeat, lambda: sess.run(None, x))
    kept = report.layers[0]
    print(f"{spec:14} {m}x{k} @ {k}x{n}: dense {d * 1e3:8.1f} us  sparse {s * 1e3:8.1f} us  "
          f"speedup {d / s:5.2f}x  (onnxruntime dense {r * 1e3:7.1f} us: {r / s:4.2f}x; kept "
          f"{kept.params_after:,} of {kept.params_before:,}; rel. max diff {diff:.1e})")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--only", default="channel,block,nm")
    ap.add_argument("--repeat", type=int, default=20)
    ap.add_argument("--image", type=int, default=224)
    ap.add_argument("--rows", type=int, default=1, help="rows of the MatMul layer's input")
    args = ap.parse_args()
    parts = args.only.split(",")
    if "block" in parts:
        bench_weight_sparsity("block:1x4:0.9", args.repeat * 10, args.rows)
        bench_weight_sparsity("block:4x4:0.9", args.repeat * 10, args.rows)
    if "nm" in parts:
        bench_weight_sparsity("2:4", args.repeat * 10, args.rows)
        bench_weight_sparsity("1:4", args.repeat * 10, args.rows)
    if "channel" in parts:
        bench_channel(args.repeat, args.image)


if __name__ == "__main__":
    main()
