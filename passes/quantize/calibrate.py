"""Calibration: the range [lo, hi] each activation is quantized over, from user data.

    minmax      the observed extremes (no clipping; hurt by outliers)
    percentile  the p-th percentile at each end (p=99.99 by default): clips rare outliers
    entropy     the clipping threshold whose 8-bit histogram keeps most information (minimal
                KL divergence between the float and the quantized distribution, as TensorRT)

The graph runs twice over the samples for percentile and entropy: once for the extremes,
then for histograms over them. Calibration data is an .npz path (each array holds one input,
samples along axis 0) or an iterable of {input name: array} dicts.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from edlc.errors import InputError
from edlc.ir.graph import Graph
from edlc.ir.types import numpy_dtype
from edlc.passes.quantize.layers import Layer
from edlc.passes.quantize.runner import Runner, Sample, run_samples

METHODS = ("minmax", "percentile", "entropy")
BINS = 2048

Calibration = str | os.PathLike | Iterable[Mapping[str, np.ndarray]]


# ---- calibration data ------------------------------------------------------------------------
def load_calibration(calibration: Any, graph: Graph, limit: int | None = None) -> list[dict[str, np.ndarray]]:
    """The calibration samples as a list of input dicts, checked against the graph's inputs."""
    if calibration is None:
        raise InputError("int8 quantization needs calibration data: an .npz file (--calib) or "
                         "an iterable of input dicts (calibration=...)")
    if isinstance(calibration, (str, os.PathLike)):
        samples = _from_npz(os.fspath(calibration), graph)
    elif isinstance(calibration, Mapping):
        raise InputError("calibration: expected an iterable of input dicts (one per sample) or "
                         "an .npz path, got a single dict; wrap it in a list")
    else:
        try:
            samples = [dict(s) for s in calibration]
        except TypeError as e:
            raise InputError(f"calibration: expected an iterable of input dicts or an .npz path, "
                             f"got {type(calibration).__name__}") from e
    if not samples:
        raise InputError("calibration: no samples")
    samples = samples[:limit] if limit else samples
    return [_checked(s, graph, i) for i, s in enumerate(samples)]


def _from_npz(path: str, graph: Graph) -> list[dict[str, np.ndarray]]:
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except (OSError, ValueError) as e:
        raise InputError(f"{path}: cannot read calibration data ({e})") from e
    split: dict[str, list[np.ndarray]] = {}
    for v in graph.inputs:
        if v.name not in arrays:
            raise InputError(f"{path}: no array for input '{v.name}' (arrays: {sorted(arrays)})")
        a = arrays[v.name]
        rank = v.type.rank if v.type is not None else None
        if rank is not None and a.ndim == rank:  # samples are batch slices of one big batch
            split[v.name] = [a[i:i + 1] for i in range(a.shape[0])] if rank else [a]
        elif rank is not None and a.ndim == rank + 1:
            split[v.name] = list(a)
        else:
            raise InputError(f"{path}: array '{v.name}' has shape {list(a.shape)}; input '{v.name}' "
                             f"has rank {rank}: give [samples, ...] or a batch of rank {rank}")
    counts = {k: len(s) for k, s in split.items()}
    if len(set(counts.values())) > 1:
        raise InputError(f"{path}: inputs hold different numbers of samples {counts}")
    n = next(iter(counts.values()), 0)
    return [{k: s[i] for k, s in split.items()} for i in range(n)]


def _checked(sample: dict[str, np.ndarray], graph: Graph, index: int) -> dict[str, np.ndarray]:
    out = {}
    for v in graph.inputs:
        if v.name not in sample:
            raise InputError(f"calibration sample {index}: no value for input '{v.name}' "
                             f"(given: {sorted(sample)})")
        a = np.asarray(sample[v.name])
        t = v.type
        if t is not None and t.shape is not None and (
                a.ndim != len(t.shape) or any(isinstance(d, int) and d != s for d, s in zip(t.shape, a.shape))):
            raise InputError(f"calibration sample {index}: input '{v.name}' has shape "
                             f"{list(a.shape)}, the model expects {list(t.shape)}")
        if t is not None:
            a = a.astype(numpy_dtype(t.dtype), copy=False)
        out[v.name] = a
    return out


# ---- range estimation ------------------------------------------------------------------------
def _histogram_range(lo: float, hi: float) -> tuple[float, float]:
    """Histograms cover [0, hi] for non-negative data, else [-m, m] (symmetric in |x|)."""
    if lo >= 0:
        return 0.0, hi
    m = max(-lo, hi)
    return -m, m


def percentile_range(hist: np.ndarray, edges: np.ndarray, p: float, lo: float, hi: float) -> tuple[float, float]:
    cdf = np.cumsum(hist) / max(hist.sum(), 1)
    tail = (100.0 - p) / 100.0
    new_lo = edges[int(np.searchsorted(cdf, tail, side="left"))] if lo < 0 else lo
    new_hi = edges[min(int(np.searchsorted(cdf, 1.0 - tail, side="left")) + 1, len(edges) - 1)]
    return max(lo, float(new_lo)), min(hi, float(new_hi))


def entropy_threshold(hist: np.ndarray, levels: int, stride: int = 4) -> int:
    """Bins to keep (from the start of a histogram of |x| or of non-negative x) whose
    `levels`-level quantization has the least KL divergence from the full histogram."""
    hist = hist.astype(np.float64)
    hist[0] = 0  # the spike of exact zeros (ReLU) says nothing about the range and swamps KL
    n = len(hist)
    if n <= levels:
        return n
    best, best_i = np.inf, n
    for i in range(levels, n + 1, stride):
        p = hist[:i].copy()
        p[-1] += hist[i:].sum()  # outliers clip into the last kept bin
        nz = p > 0
        ids = (np.arange(i) * levels) // i  # which of the `levels` quantized bins each bin joins
        sums = np.bincount(ids, weights=hist[:i], minlength=levels)
        counts = np.bincount(ids, weights=nz, minlength=levels)
        q = np.where(nz, sums[ids] / np.maximum(counts[ids], 1), 0.0)
        if q.sum() == 0 or p.sum() == 0:
            continue
        pn, qn = p / p.sum(), q / q.sum()
        mask = nz & (qn > 0)
        kl = float(np.sum(pn[mask] * np.log(pn[mask] / qn[mask]))) + (1e9 if np.any(nz & (qn == 0)) else 0)
        if kl < best:
            best, best_i = kl, i
    return best_i


def entropy_range(hist_abs: np.ndarray, width: float, lo: float, hi: float, levels: int) -> tuple[float, float]:
    t = entropy_threshold(hist_abs, levels) * width
    return max(lo, -t) if lo < 0 else lo, min(hi, t)


def calibrate(graph: Graph, samples: Sequence[Sample], values: Sequence[str], method: str = "minmax",
              percentile: float = 99.99, act_dtype: str = "uint8") -> dict[str, tuple[float, float]]:
    """[lo, hi] per named value of the float graph, over the samples."""
    if method not in METHODS:
        raise InputError(f"unknown calibration method '{method}'; choose one of {', '.join(METHODS)}")
    lo = {v: np.inf for v in values}
    hi = {v: -np.inf for v in values}

    def extremes(outs: dict[str, np.ndarray]) -> None:
        for v, a in outs.items():
            if a.size:
                lo[v] = min(lo[v], float(a.min()))
                hi[v] = max(hi[v], float(a.max()))

    run_samples(graph, samples, values, extremes)
    ranges = {v: (min(lo[v], 0.0) if np.isfinite(lo[v]) else 0.0, max(hi[v], 0.0) if np.isfinite(hi[v]) else 0.0)
              for v in values}
    if method == "minmax":
        return ranges
    hists = {v: np.zeros(BINS, np.int64) for v in values}
    spans = {v: _histogram_range(*ranges[v]) for v in values}

    def histograms(outs: dict[str, np.ndarray]) -> None:
        for v, a in outs.items():
            a0, a1 = spans[v]
            if a1 <= a0:
                continue
            data = a.reshape(-1) if method == "percentile" or a0 >= 0 else np.abs(a.reshape(-1))
            h0 = a0 if method == "percentile" or a0 >= 0 else 0.0
            hists[v] += np.histogram(data, bins=BINS, range=(h0, a1))[0]

    run_samples(graph, samples, values, histograms)
    out = {}
    for v in values:
        a0, a1 = spans[v]
        if a1 <= a0:
            out[v] = ranges[v]
        elif method == "percentile":
            out[v] = percentile_range(hists[v], np.linspace(a0, a1, BINS + 1), percentile, *ranges[v])
        else:
            signed = ranges[v][0] < 0
            levels = 128 if (signed or act_dtype == "int8") else 256
            out[v] = entropy_range(hists[v], a1 / BINS, *ranges[v], levels)
    return out


# ---- input means (for bias correction) -------------------------------------------------------
def _window_means(x: np.ndarray, layer: Layer) -> np.ndarray:
    """The mean of what each weight of `layer` multiplies: per input channel and kernel position
    [C, KH, KW] over the (zero-padded) windows of a conv, per input feature [K] of a matmul."""
    x = np.asarray(x, np.float64)
    if layer.kind == "matmul":
        return x.reshape(-1, x.shape[-1]).mean(axis=0)
    kh, kw = layer.weight.shape[2:]
    (sh, sw), (dh, dw) = layer.attrs.get("strides", [1, 1]), layer.attrs.get("dilations", [1, 1])
    pads = layer.attrs.get("pads", [0, 0, 0, 0])
    xp = np.pad(x, [(0, 0), (0, 0), (pads[0], pads[2]), (pads[1], pads[3])])
    oh, ow = (xp.shape[2] - dh * (kh - 1) - 1) // sh + 1, (xp.shape[3] - dw * (kw - 1) - 1) // sw + 1
    out = np.empty((x.shape[1], kh, kw))
    for i in range(kh):
        for j in range(kw):
            win = xp[:, :, i * dh:i * dh + (oh - 1) * sh + 1:sh, j * dw:j * dw + (ow - 1) * sw + 1:sw]
            out[:, i, j] = win.mean(axis=(0, 2, 3))
    return out


def input_means(graph: Graph, samples: Sequence[Sample], layers: Sequence[Layer]) -> dict[str, np.ndarray]:
    """Per layer (by name), the mean over the samples of the inputs each weight multiplies
    (`_window_means`): E[x] in the output error E[(w_q - w) x] that bias correction removes."""
    inputs = {v.name for v in graph.inputs}
    taps = list(dict.fromkeys(layer.input.name for layer in layers if layer.input.name not in inputs))
    sums: dict[str, np.ndarray] = {}
    run = Runner(graph, taps)
    for sample in samples:
        outs = run(sample)
        for layer in layers:
            x = sample[layer.input.name] if layer.input.name in inputs else outs[layer.input.name]
            m = _window_means(x, layer)
            sums[layer.name] = sums[layer.name] + m if layer.name in sums else m
    return {name: m / len(samples) for name, m in sums.items()}


__all__ = ["METHODS", "Calibration", "calibrate", "entropy_range", "entropy_threshold", "input_means",
           "load_calibration", "percentile_range"]
