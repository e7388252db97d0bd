"""Quantization parameters and the integer arithmetic every int8 op shares.

One formula everywhere (numpy references, ONNX decompositions, TVM lowering), so the three
agree bit for bit up to float rounding of the same float32 operations:

    q    = saturate(round_half_even(x / scale) + zero_point)     (QuantizeLinear)
    x    = (q - zero_point) * scale                               (DequantizeLinear)
    real = float32(acc_int32) * float32(x_scale * w_scale)        (int8 op epilogue)
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

ACT_DTYPES = ("uint8", "int8")
WEIGHT_RANGES = ("paired", "full", "twins")  # see weight_params
QRANGE = {"uint8": (0, 255), "int8": (-128, 127), "int32": (-(2**31), 2**31 - 1)}
WEIGHT_QMAX = 127  # symmetric weights use [-127, 127]: no lone -128 without a positive twin
PAIR_QMAX = 128  # paired weights: |q0| + |q1| <= 128, so 255 * (|q0| + |q1|) fits int16


@dataclass(frozen=True)
class QParams:
    """Scale and zero point of a tensor: scalars (per tensor) or 1-D along `axis` (per channel)."""

    scale: np.ndarray  # float32
    zero_point: np.ndarray  # uint8, int8 or int32
    axis: int | None = None

    @property
    def dtype(self) -> str:
        return str(self.zero_point.dtype)

    @property
    def per_channel(self) -> bool:
        return self.scale.ndim > 0

    def same_as(self, other: QParams | None) -> bool:
        return (other is not None and self.dtype == other.dtype and self.axis == other.axis
                and np.array_equal(self.scale, other.scale)
                and np.array_equal(self.zero_point, other.zero_point))

    def quantize(self, x: np.ndarray) -> np.ndarray:
        return quantize(x, self.scale, self.zero_point, self.axis)

    def dequantize(self, q: np.ndarray) -> np.ndarray:
        return dequantize(q, self.scale, self.zero_point, self.axis)

    def describe(self) -> str:
        if self.per_channel:
            return f"{self.dtype} per-channel scale {self.scale.min():.3g}..{self.scale.max():.3g}"
        return f"{self.dtype} scale {float(self.scale):.4g} zp {int(self.zero_point)}"


def _along(a: np.ndarray, axis: int | None, ndim: int) -> np.ndarray:
    """A per-channel vector shaped to broadcast along `axis` of an ndim-array."""
    if a.ndim == 0 or axis is None:
        return a
    shape = [1] * ndim
    shape[axis % ndim] = a.size
    return a.reshape(shape)


def quantize(x: np.ndarray, scale: np.ndarray, zero_point: np.ndarray, axis: int | None = None) -> np.ndarray:
    """ONNX QuantizeLinear: round half to even, then saturate to the zero point's type."""
    scale = _along(np.asarray(scale, np.float32), axis, np.ndim(x))
    zp = np.asarray(zero_point)
    lo, hi = QRANGE[str(zp.dtype)]
    q = np.rint(np.asarray(x, np.float32) / scale) + _along(zp, axis, np.ndim(x)).astype(np.float64)
    return np.clip(q, lo, hi).astype(zp.dtype)


def dequantize(q: np.ndarray, scale: np.ndarray, zero_point: np.ndarray, axis: int | None = None) -> np.ndarray:
    scale = _along(np.asarray(scale, np.float32), axis, np.ndim(q))
    zp = _along(np.asarray(zero_point), axis, np.ndim(q)).astype(np.int64)
    return ((np.asarray(q).astype(np.int64) - zp).astype(np.float32) * scale).astype(np.float32)


def activation_params(lo: float, hi: float, dtype: str = "uint8") -> QParams:
    """Per-tensor parameters covering [lo, hi] (widened to hold 0, which must be exact: it is
    the padding value and ReLU's floor). uint8 is asymmetric, int8 symmetric (zero point 0)."""
    lo, hi = min(float(lo), 0.0), max(float(hi), 0.0)
    if dtype == "int8":
        scale = max(abs(lo), abs(hi)) / 127.0
        zp = 0
    else:
        scale = (hi - lo) / 255.0
        zp = 0 if scale == 0 else int(np.clip(round(-lo / scale), 0, 255))
    scale = np.float32(scale if scale > 0 else 1.0)
    return QParams(np.array(scale, np.float32), np.array(zp, dtype))


def pair_sums(w: np.ndarray, pair_axis: int) -> np.ndarray:
    """|w[.., 2m, ..]| + |w[.., 2m + 1, ..]| along `pair_axis` (an odd last one pairs with 0)."""
    a = np.moveaxis(np.abs(np.asarray(w, np.float64)), pair_axis % w.ndim, 0)
    if a.shape[0] % 2:
        a = np.concatenate([a, np.zeros_like(a[:1])])
    return np.moveaxis(a[0::2] + a[1::2], 0, pair_axis % w.ndim)


def _quad_waste(n: int) -> float:
    return -(-n // 4) * 4 / n


def conv_pair_axis(w_shape) -> int:
    """The axis of a conv weight (OIHW) along which x86's uint8 x int8 kernels take quads, and
    so pair neighbours 2m, 2m + 1: input channels (1), or kernel columns (3) where there are so
    few input channels that quads of columns waste less (a first layer on 1 or 3 channels;
    edlc.lower.int8_packed)."""
    return 3 if _quad_waste(int(w_shape[3])) < _quad_waste(int(w_shape[1])) else 1


def twin_sums(w: np.ndarray) -> np.ndarray:
    """For a [K, N] matrix (K a multiple of 8): the sums of |w| over the four rows that one int16
    lane of the twin kernel adds (8m + 4q + 2p + e, q and e in {0, 1}; edlc.lower.int8_packed.
    matmul_acc_twins), shaped [K/8, 2, N] (m, p)."""
    a = np.abs(np.asarray(w, np.float64))
    return a.reshape(a.shape[0] // 8, 2, 2, 2, a.shape[1]).sum(axis=(1, 3))


def weight_params(w: np.ndarray, axis: int, pair_axis: int | None = None, twins: bool = False) -> QParams:
    """Symmetric per-channel int8 parameters for a weight, one scale per slice along `axis`.

    With `pair_axis` (the input-channel axis), the scale also keeps every two weights 2m, 2m + 1
    along it small enough for x86's uint8 x int8 multiply-add, which sums such a pair times two
    uint8 activations into int16: |q0| + |q1| <= 128 (PAIR_QMAX), so 255 * 128 fits. The scale is
    max(|w0| + |w1|) / 127 over the channel's pairs (rounding adds at most 1); at most one bit
    coarser than the plain range, often less.

    `twins` (a [K, N] matmul weight, pair_axis 0, K a multiple of 8) also keeps the four weights
    that one int16 lane of the twin kernel adds within |q| sum <= 128 (scale max sum / 126:
    rounding adds at most 2), so that kernel (two uint8 x int8 quads per int16 sum, a quarter
    fewer multiplies on AVX2) runs exactly: about a bit coarser than paired."""
    other = tuple(i for i in range(w.ndim) if i != axis % w.ndim)
    amax = np.abs(w).max(axis=other) if other else np.abs(w)
    scale = amax / WEIGHT_QMAX
    if pair_axis is not None:
        sums = pair_sums(w, pair_axis)
        pmax = sums.max(axis=other) if other else sums
        scale = np.maximum(scale, pmax / (PAIR_QMAX - 1))
        if twins and w.ndim == 2 and pair_axis % 2 == 0 and axis % 2 == 1 and w.shape[0] % 8 == 0:
            scale = np.maximum(scale, twin_sums(w).max(axis=(0, 1)) / (PAIR_QMAX - 2))
    scale = np.asarray(scale, np.float64).astype(np.float32)
    scale[scale == 0] = 1.0
    return QParams(scale, np.zeros(scale.shape, np.int8), axis % w.ndim)


def quantize_weight(w: np.ndarray, axis: int, pair_axis: int | None = None,
                    twins: bool = False) -> tuple[np.ndarray, QParams]:
    p = weight_params(w, axis, pair_axis, twins)
    q = np.clip(np.rint(w / _along(p.scale, p.axis, w.ndim)), -WEIGHT_QMAX, WEIGHT_QMAX).astype(np.int8)
    return q, p


def output_shift(error: np.ndarray, means: np.ndarray, group: int = 1) -> np.ndarray:
    """The mean output error per output channel that a weight error (`error`: w_q - w, OIHW or
    [K, N]) causes on inputs whose means per weight position are `means` ([C, KH, KW] or [K]:
    calibrate.input_means). Bias correction subtracts it from the bias."""
    m = np.asarray(means, np.float64)
    if error.ndim == 2:
        return m @ error
    o, cg = error.shape[:2]
    e = error.reshape(group, o // group, cg, *error.shape[2:])
    return np.einsum("gocij,gcij->go", e, m.reshape(group, cg, *m.shape[1:])).reshape(o)


def bias_scale(x_scale: np.ndarray, w_scale: np.ndarray) -> np.ndarray:
    """The scale of the int32 bias and of the accumulator: x_scale * w_scale in float32."""
    return (np.float32(x_scale) * np.asarray(w_scale, np.float32)).astype(np.float32)


def quantize_bias(b: np.ndarray, x_scale: np.ndarray, w_scale: np.ndarray) -> np.ndarray:
    lo, hi = QRANGE["int32"]
    s = bias_scale(x_scale, w_scale)
    return np.clip(np.rint(b.astype(np.float64) / s), lo, hi).astype(np.int32)


def sqnr(reference: np.ndarray, approx: np.ndarray) -> float:
    """Signal-to-quantization-noise ratio in dB (inf when equal)."""
    ref = np.asarray(reference, np.float64)
    noise = float(np.sum((ref - np.asarray(approx, np.float64)) ** 2))
    signal = float(np.sum(ref**2))
    if noise == 0:
        return float("inf")
    if signal == 0:
        return float("-inf")
    return 10.0 * np.log10(signal / noise)


__all__ = ["ACT_DTYPES", "PAIR_QMAX", "QRANGE", "WEIGHT_RANGES", "conv_pair_axis", "pair_sums", "QParams", "activation_params", "twin_sums", "bias_scale", "dequantize",
           "output_shift", "quantize", "quantize_bias", "quantize_weight", "sqnr", "weight_params"]
