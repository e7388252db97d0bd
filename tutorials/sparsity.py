"""Tutorial: structured sparsity, pruned and compiled, against the dense model.

Three ways to skip work, each with kernels made for it (edlc/lower/sparse.py):

  - channel pruning (`channel:0.5`) removes whole output channels: the model stays dense, only
    smaller, and every kernel is simply smaller;
  - block sparsity (`block:1x4:0.9`) zeroes 90% of the MatMul/Gemm weights in blocks of 1 output
    x 4 inputs; the kernel reads only the kept blocks (values, then their positions);
  - N:M (`2:4`) keeps 2 of every 4 consecutive weights along the reduction, the pattern sparse
    GPU tensor cores run; on x86 the kernel selects each lane's input with one `vpermilps`.

This tutorial:

  1. trains the digits CNN (`edlc.testing.digits`: sklearn's bundled 8x8 digits, no download),
     prunes it each way and compares held-out accuracy, first by magnitude alone, then with the
     kept weights refit by least squares on unlabelled training images (`calibration=`): the
     dense model's outputs are the target, no labels and no training loop;
  2. prunes a BERT-style encoder layer (`edlc.testing.zoo.bert_encoder`, random weights) and
     compares latency and how far each output moves from the dense one, for one token at a time
     (matrix-vector products: memory bound, where reading fewer weight bytes pays) and for 128
     tokens at once (matrix products: compute bound, where a 2:4 kernel has no cheaper
     multiply-add than the dense one and gains little or nothing on a CPU).

Every sparse build is checked against onnxruntime on its ONNX export (which writes the dense
MatMul of the same pruned weights): the kernels compute exactly the pruned model.

Run it from anywhere (it writes nothing):

    python tutorials/sparsity.py

It exits non-zero if a sparse build disagrees with onnxruntime or if refit pruning of the
digits CNN loses more than 2 points of accuracy. Latencies are printed, never checked: they
are the best of interleaved runs, one thread, and move with whatever else the machine runs.
"""

from __future__ import annotations

import sys

import numpy as np

import edlc
from edlc.passes.sparsity import sparsify

SPECS = ("channel:0.5", "block:1x4:0.9", "2:4")


def fail(message: str) -> None:
    print(f"FAILED: {message}", file=sys.stderr)
    sys.exit(1)


def check_against_onnxruntime(module, graph, feeds: dict, name: str) -> np.ndarray:
    """The module's output, after checking it against onnxruntime on the graph's export."""
    import onnxruntime as ort

    sess = ort.InferenceSession(graph.to_onnx().SerializeToString(), providers=["CPUExecutionProvider"])
    (want,) = sess.run(None, feeds)
    got = next(iter(module.run(feeds).values()))
    err = float(np.abs(got - want).max() / max(np.abs(want).max(), 1e-30))
    if err > 1e-4:
        fail(f"{name}: edlc and onnxruntime differ by {err:.1e} (relative)")
    return got


def best_ms(modules: dict, feeds: dict, rounds: int = 10) -> dict[str, float]:
    """Latency (ms) of each module: the best of `rounds` runs, the modules taking turns so that
    load from other processes hits all of them alike."""
    for m in modules.values():
        m.time(feeds, repeat=1, warmup=2)
    best = {k: float("inf") for k in modules}
    for _ in range(rounds):
        for k, m in modules.items():
            best[k] = min(best[k], m.time(feeds, repeat=1, warmup=0)[0] * 1e3)
    return best


def digits() -> None:
    from edlc.ir.interpreter import run_graph
    from edlc.testing.digits import accuracy, load_digits_split, train_digits_cnn

    data = load_digits_split()
    graph = edlc.load_onnx(train_digits_cnn(data))
    feeds = {"x": data.x_test}
    calibration = [{"x": data.x_train}]  # unlabelled images: only the dense outputs are used
    dense = accuracy(run_graph(graph, feeds)[0], data.y_test)
    print(f"digits CNN (conv 3x3 x16 -> pool -> linear 256 -> 10), {len(data.x_test)} held-out "
          f"images: dense {dense:.2f}%")
    print(f"  {'pruning':16} {'kept weights':>14} {'magnitude only':>15} {'refit':>8}")
    for spec in SPECS:
        plain, _ = sparsify(graph, spec)
        refit, report = sparsify(graph, spec, calibration=calibration)
        kept, total = report.kept_params
        acc_plain = accuracy(run_graph(plain, feeds)[0], data.y_test)
        module = edlc.compile(refit, input_shapes={"x": data.x_test.shape})
        acc_refit = accuracy(check_against_onnxruntime(module, refit, feeds, spec), data.y_test)
        print(f"  {spec:16} {kept:>6,} of {total:<6,} {acc_plain:>14.2f}% {acc_refit:>7.2f}%")
        if spec != "block:1x4:0.9" and dense - acc_refit > 2.0:  # 90% of a 10-output layer
            fail(f"{spec} with refit loses {dense - acc_refit:.2f} points")
    print("  (block and 2:4 prune the linear layer only: the conv is not a MatMul/Gemm)")


def bert() -> None:
    from edlc.testing import zoo

    print("\nBERT-style encoder layer (hidden 256, FFN 1024, 4 heads, random weights), 1 thread")
    for seq in (1, 128):
        model = zoo.bert_encoder(seq=seq, layers=1)
        graph = edlc.load_onnx(model)
        feeds = zoo.random_inputs(model, seed=0)
        modules = {"dense": edlc.compile(graph)}
        want = next(iter(modules["dense"].run(feeds).values()))
        error = {"dense": 0.0}
        for spec in SPECS:
            pruned, _ = sparsify(graph, spec)
            modules[spec] = edlc.compile(pruned)
            got = check_against_onnxruntime(modules[spec], pruned, feeds, f"BERT seq {seq} {spec}")
            error[spec] = float(np.linalg.norm(got - want) / np.linalg.norm(want))
        ms = best_ms(modules, feeds)
        print(f"  {seq} token{'s' if seq > 1 else ''}:")
        for name, t in ms.items():
            print(f"    {name:14} {t:8.3f} ms  speedup {ms['dense'] / t:5.2f}x   output error "
                  f"{error[name]:6.1%}")
    print("  (random weights carry no structure, so the outputs move a lot; see the digits for "
          "what pruning costs a trained model)")


def main() -> None:
    from edlc.bench import set_tvm_threads

    set_tvm_threads(1)
    digits()
    bert()
    print("OK")


if __name__ == "__main__":
    main()
