"""Post-training static quantization, end to end:

    prepare (fold BatchNorm and constants) -> find layers -> calibrate -> build the int8 graph
    -> measure per-layer and end-to-end error on the samples -> while the accuracy target is
    missed, return the layer that loses the most SQNR to float and rebuild

    g8, report = quantize(graph, calibration="calib.npz", method="entropy", max_drop=1.0)
    print(report.format())
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from edlc.errors import InputError
from edlc.ir.graph import Graph
from edlc.pass_manager import PassManager
from edlc.passes.quantize.calibrate import (
    METHODS,
    Calibration,
    calibrate,
    input_means,
    load_calibration,
)
from edlc.passes.quantize.layers import Layer, find_layers
from edlc.passes.quantize.params import ACT_DTYPES, WEIGHT_RANGES
from edlc.passes.quantize.report import LayerReport, QuantReport
from edlc.passes.quantize.rewrite import LayerParams, build_quantized
from edlc.passes.quantize.runner import Runner

# The float clean-ups quantization wants first: BatchNorm folded into the conv weights (it
# is quantized with them), constants folded, decomposed ops recognized.
PREPARE = ["fold-constants", "simplify", "eliminate-common-subexpressions", "recognize",
           "fold-batchnorm", "fold-scale-bias", "eliminate-dead-code"]
INPUT_SQNR_CAP = 60.0  # dB credited to an unquantized (graph) input when ranking layers


def prepare(graph: Graph) -> Graph:
    return PassManager(PREPARE).run(graph.copy())


def _constant_bytes(graph: Graph) -> int:
    return sum(v.const.nbytes for v in graph.constants())


class _Errors:
    """SQNR accumulators (signal and noise energy) per tap, and top-1 agreement per output."""

    def __init__(self):
        self.signal: dict[str, float] = {}
        self.noise: dict[str, float] = {}
        self.agree = self.total = 0

    def add(self, name: str, ref: np.ndarray, got: np.ndarray) -> None:
        ref64 = np.asarray(ref, np.float64)
        self.signal[name] = self.signal.get(name, 0.0) + float(np.sum(ref64**2))
        self.noise[name] = self.noise.get(name, 0.0) + float(np.sum((ref64 - np.asarray(got, np.float64)) ** 2))

    def add_top1(self, ref: np.ndarray, got: np.ndarray) -> None:
        a, b = np.argmax(ref, axis=-1), np.argmax(got, axis=-1)
        self.agree += int(np.sum(a == b))
        self.total += int(a.size)

    def sqnr(self, name: str) -> float:
        s, n = self.signal.get(name, 0.0), self.noise.get(name, 0.0)
        if n == 0:
            return math.inf
        return 10 * math.log10(s / n) if s > 0 else -math.inf


def _is_logits(graph: Graph, name: str) -> bool:
    v = next(o for o in graph.outputs if o.name == name)
    t = v.type
    # [batch, classes]: a classifier's logits (top-1 agreement is meaningless elsewhere)
    return t is not None and t.dtype.startswith("float") and t.rank == 2 \
        and isinstance(t.shape[-1], int) and t.shape[-1] > 1


def measure(float_graph: Graph, qgraph_taps: Graph, layers: Sequence[Layer], samples: Sequence[dict],
            reference: Runner) -> _Errors:
    """Errors of the tapped int8 graph against the float graph's taps, sample by sample."""
    outputs = [v.name for v in float_graph.outputs]
    run = Runner(qgraph_taps, reference.taps)
    err = _Errors()
    for s in samples:
        ref, got = reference(s), run(s)
        for name in reference.taps:
            err.add(name, ref[name], got[name])
        first = next((o for o in outputs if _is_logits(float_graph, o)), None)
        if first is not None:
            err.add_top1(ref[first], got[first])
    return err


def _layer_reports(layers: Sequence[Layer], chosen: dict[str, LayerParams], err: _Errors,
                   excluded: set[str], fallbacks: Sequence[str], graph_inputs: set[str]) -> list[LayerReport]:
    out = []
    for layer in layers:
        op = "qconv2d" if layer.kind == "conv" else "qmatmul"
        if layer.name in chosen:
            p = chosen[layer.name]
            sq_out = err.sqnr(layer.output.name)
            sq_in = INPUT_SQNR_CAP if layer.input.name in graph_inputs else min(err.sqnr(layer.input.name), INPUT_SQNR_CAP)
            out.append(LayerReport(layer.name, op, "int8", p.input.describe(), p.weight.describe(),
                                   p.output.describe() if p.output is not None else "float",
                                   sq_out, sq_in - min(sq_out, INPUT_SQNR_CAP)))
        else:
            why = "float (excluded)" if layer.name in excluded else "float (fallback)"
            out.append(LayerReport(layer.name, op, why, sqnr_db=err.sqnr(layer.output.name)))
    return out


def quantize(graph: Graph, calibration: Calibration, *, method: str = "minmax",
             percentile: float = 99.99, activations: str = "uint8", max_drop: float | None = None,
             min_sqnr: float | None = None, exclude: Sequence[str] = (),
             max_samples: int | None = None, weights: str = "paired",
             bias_correction: bool = True) -> tuple[Graph, QuantReport]:
    """Quantize `graph` to int8 with calibration data (an .npz path or an iterable of input
    dicts). `max_drop` (top-1 disagreement with float, in points) and `min_sqnr` (dB, worst
    output) return layers to float, worst first, until met. `weights="paired"` (the default)
    keeps every two weights that x86's uint8 x int8 multiply-add sums in int16 within range
    (params.weight_params), so the int8 kernels run on it exactly; "full" uses [-127, 127] per
    channel (about a bit finer; those layers run the int16-pair kernels on AVX2); "twins" is
    paired with matmul weights also kept within the range of the twin kernels (two quads per
    int16 sum: a quarter fewer multiplies on AVX2 without VNNI; about a bit coarser); depthwise
    convs always take the full range. `bias_correction` removes from each layer's bias the mean
    output error its weight rounding causes on the calibration data. Returns the graph and a
    report."""
    if method not in METHODS:
        raise InputError(f"unknown calibration method '{method}'; choose one of {', '.join(METHODS)}")
    if activations not in ACT_DTYPES:
        raise InputError(f"activations must be one of {', '.join(ACT_DTYPES)}, not '{activations}'")
    if weights not in WEIGHT_RANGES:
        raise InputError(f"weights must be one of {', '.join(WEIGHT_RANGES)}, not '{weights}'")
    if not 0 < percentile <= 100:
        raise InputError(f"percentile must be in (0, 100], got {percentile}")
    samples = load_calibration(calibration, graph, max_samples)
    float_graph = prepare(graph)
    layers, left_float = find_layers(float_graph)
    unknown = sorted(set(exclude) - {layer.name for layer in layers})
    if unknown:
        raise InputError(f"exclude: no quantizable layers named {unknown}; layers: "
                         f"{[layer.name for layer in layers][:20]}")
    values = list(dict.fromkeys(n for layer in layers for n in (layer.input.name, layer.output.name)))
    ranges = calibrate(float_graph, samples, values, method, percentile, activations)
    means = input_means(float_graph, samples, layers) if bias_correction else None

    outputs = [v.name for v in float_graph.outputs]
    taps = list(dict.fromkeys(values + outputs))
    reference = Runner(float_graph, taps)
    excluded = set(exclude)
    fallbacks: list[str] = []
    graph_inputs = {v.name for v in float_graph.inputs}
    while True:
        enabled = {layer.name for layer in layers} - excluded - set(fallbacks)
        tapped_graph, chosen = build_quantized(float_graph, enabled, ranges, activations, taps, weights, means)
        err = measure(float_graph, tapped_graph, layers, samples, reference)
        reports = _layer_reports(layers, chosen, err, excluded, fallbacks, graph_inputs)
        worst_out = min((err.sqnr(o) for o in outputs), default=math.inf)
        drop = 100.0 * (1 - err.agree / err.total) if err.total else None
        missed = (max_drop is not None and drop is not None and drop > max_drop) or \
                 (min_sqnr is not None and worst_out < min_sqnr)
        candidates = [r for r in reports if r.status == "int8"]
        if not missed or not candidates:
            break
        fallbacks.append(max(candidates, key=lambda r: r.loss_db).name)

    qgraph, chosen = build_quantized(float_graph, enabled, ranges, activations, weights=weights,
                                     means=means)
    report = QuantReport(method, activations, len(samples), reports, left_float,
                         _constant_bytes(float_graph), _constant_bytes(qgraph),
                         {o: err.sqnr(o) for o in outputs},
                         err.agree / err.total if err.total else None, fallbacks, weights)
    return qgraph, report


__all__ = ["PREPARE", "prepare", "quantize"]
