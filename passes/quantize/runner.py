"""Run a float or quantized graph over many samples and read intermediate values ("taps").

onnxruntime runs the exported graph when it is installed (int8 ops export as QDQ, which it
runs fast); otherwise edlc's reference interpreter does, slowly but with no extra dependency.
Calibration and the accuracy checks both stream samples through here.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence

import numpy as np

from edlc.ir.graph import Graph, Value
from edlc.ir.interpreter import run_graph

Sample = Mapping[str, np.ndarray]


def values_by_name(graph: Graph) -> dict[str, Value]:
    return {v.name: v for v in graph.values()}


def tapped(graph: Graph, taps: Sequence[str]) -> Graph:
    """A copy of `graph` that also outputs the values named in `taps` (inputs excepted)."""
    g = graph.copy()
    found = values_by_name(g)
    inputs = {v.name for v in g.inputs}
    missing = [t for t in taps if t not in found]
    if missing:
        raise KeyError(f"no values named {missing[:5]} in graph '{graph.name}'")
    for t in dict.fromkeys(taps):
        v = found[t]
        if t not in inputs and not v.is_constant and v not in g.outputs:
            g.outputs.append(v)
    return g


def _ort_session(graph: Graph):
    try:
        import onnxruntime as ort
    except ImportError:
        return None
    try:
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        # basic level: no QDQ fusion into onnxruntime's u8s8 kernels, which saturate int16
        # sums (vpmaddubsw) on CPUs without VNNI; the QDQ graph then runs exactly as written
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
        return ort.InferenceSession(graph.to_onnx().SerializeToString(), opts,
                                    providers=["CPUExecutionProvider"])
    except Exception:  # an op onnxruntime lacks: the interpreter runs everything
        return None


class Runner:
    """Runs one graph on one sample at a time and returns its taps by name."""

    def __init__(self, graph: Graph, taps: Sequence[str]):
        self.taps = list(dict.fromkeys(taps))
        self.graph = tapped(graph, self.taps)
        self.session = _ort_session(self.graph)
        self.names = [v.name for v in self.graph.outputs]
        self.inputs = [v.name for v in self.graph.inputs]

    def __call__(self, sample: Sample) -> dict[str, np.ndarray]:
        feeds = {n: np.asarray(sample[n]) for n in self.inputs}
        if self.session is not None:
            outs = dict(zip(self.names, self.session.run(self.names, feeds)))
        else:
            outs = dict(zip(self.names, run_graph(self.graph, feeds)))
        return {t: (feeds[t] if t in feeds else outs[t]) for t in self.taps}


def run_samples(graph: Graph, samples: Iterable[Sample], taps: Sequence[str],
                each: Callable[[dict[str, np.ndarray]], None]) -> None:
    """Call `each({tap name: array})` for every sample, in order."""
    run = Runner(graph, taps)
    for sample in samples:
        each(run(sample))


def collect(graph: Graph, samples: Iterable[Sample], taps: Sequence[str]) -> list[dict[str, np.ndarray]]:
    """Every sample's taps, kept in memory (for small evaluation sets)."""
    out: list[dict[str, np.ndarray]] = []
    run_samples(graph, samples, taps, out.append)
    return out


__all__ = ["Runner", "collect", "run_samples", "tapped", "values_by_name"]
