"""The int8 accumulators in a packed, SIMD-friendly form (conv with group 1, and matmul).

The weights are constants, so they are repacked here, at compile time, so that a kernel reads
16 output channels x 2 reduction steps as one contiguous 32-byte block:

    weight  [O, C, KH, KW] int8  ->  [ceil(O/16), ceil(C/2), KH, KW, 16, 2] int8   (zeros pad)
    matmul  [K, N] int8          ->  [ceil(N/16), ceil(K/2), 16, 2] int8

The activation, zero point subtracted in int16 (exact), is laid out in reduction pairs by a
small copy kernel that also pads (with 0 = the zero point, after subtraction):

    x [N, C, H, W]  ->  [N, ceil(C/2), H + pads, W + pads, 2] int16
    a [M, K]        ->  [M, ceil(K/2), 2] int16

    acc[n, o, y, x] = sum(int32(xp[.., c2, y*s + ry*d, x*s + rx*d, ci]) * int32(wp[o/16, c2, ry, rx, o%16, ci]))

One pair is what x86's `vpmaddwd` (and VNNI's `vpdpwssd`) multiplies and adds per int32 lane,
so edlc.schedules.int8 maps the innermost (16, 2) block onto one instruction; on other targets
it is a plain loop nest. The sums are exact int32 whatever the target.
"""

from __future__ import annotations

import numpy as np

LANES = 16  # output channels per packed block
PAIR = 2  # reduction steps per int32 lane


def packable(w: np.ndarray, w_zp: np.ndarray | None, group: int) -> bool:
    """Whether the packed form applies: int8 weights with zero point 0, no groups."""
    return group == 1 and w.dtype == np.int8 and (w_zp is None or not np.any(w_zp))


def _ceil(a: int, b: int) -> int:
    return -(-a // b)


def pack_conv_weight(w: np.ndarray) -> np.ndarray:
    """OIHW int8 -> [O/16, C/2, KH, KW, 16, 2] (zero-padded)."""
    o, c, kh, kw = w.shape
    full = np.zeros((_ceil(o, LANES) * LANES, _ceil(c, PAIR) * PAIR, kh, kw), np.int8)
    full[:o, :c] = w
    blocks = full.reshape(-1, LANES, full.shape[1] // PAIR, PAIR, kh, kw)
    return np.ascontiguousarray(blocks.transpose(0, 2, 4, 5, 1, 3))


def pack_matmul_weight(w: np.ndarray) -> np.ndarray:
    """[K, N] int8 -> [N/16, K/2, 16, 2] (zero-padded)."""
    k, n = w.shape
    full = np.zeros((_ceil(k, PAIR) * PAIR, _ceil(n, LANES) * LANES), np.int8)
    full[:k, :n] = w
    blocks = full.reshape(-1, PAIR, full.shape[1] // LANES, LANES)
    return np.ascontiguousarray(blocks.transpose(2, 0, 3, 1))


def conv_acc(x, wp, zp: int, channels: int, strides, pads, dilations, out_channels: int):
    """TE: the int32 accumulator [N, O, OH, OW] of x (NCHW, int8/uint8) by the packed weight."""
    from tvm import te, tirx

    n, _, h, w = (int(d) for d in x.shape)
    o16, c2, kh, kw = (int(d) for d in wp.shape[:4])
    (sh, sw), (dh, dw) = strides, dilations
    pt, pl, pb, pr = pads
    hp, wpad = h + pt + pb, w + pl + pr

    def pair(b, c, y, xx, ci):
        ch = c * PAIR + ci
        inside = tirx.all(ch < channels, y >= pt, y < h + pt, xx >= pl, xx < w + pl)
        v = x[b, tirx.min(ch, channels - 1), y - pt, xx - pl].astype("int16") - tirx.const(zp, "int16")
        return tirx.if_then_else(inside, v, tirx.const(0, "int16"))

    xp = te.compute((n, c2, hp, wpad, PAIR), pair, name="pair_pack")
    oh = (hp - dh * (kh - 1) - 1) // sh + 1
    ow = (wpad - dw * (kw - 1) - 1) // sw + 1
    rc = te.reduce_axis((0, c2), "rc")
    ry = te.reduce_axis((0, kh), "ry")
    rx = te.reduce_axis((0, kw), "rx")
    ri = te.reduce_axis((0, PAIR), "ri")
    return te.compute(
        (n, out_channels, oh, ow),
        lambda b, o, y, xx: te.sum(
            xp[b, rc, y * sh + ry * dh, xx * sw + rx * dw, ri].astype("int32")
            * wp[o // LANES, rc, ry, rx, o % LANES, ri].astype("int32"), axis=[rc, ry, rx, ri]),
        name="qconv_acc")


def matmul_acc(a, wp, zp: int, k: int, out_features: int):
    """TE: the int32 accumulator [..., N] of a ([..., K], int8/uint8) by the packed weight."""
    from tvm import te, tirx

    lead = [int(d) for d in a.shape[:-1]]
    k2 = int(wp.shape[1])

    def pair(*idx):
        *rows, c, ci = idx
        kk = c * PAIR + ci
        v = a[(*rows, tirx.min(kk, k - 1))].astype("int16") - tirx.const(zp, "int16")
        return tirx.if_then_else(kk < k, v, tirx.const(0, "int16"))

    ap = te.compute((*lead, k2, PAIR), pair, name="pair_pack")
    rk = te.reduce_axis((0, k2), "rk")
    ri = te.reduce_axis((0, PAIR), "ri")
    return te.compute(
        (*lead, out_features),
        lambda *idx: te.sum(ap[(*idx[:-1], rk, ri)].astype("int32")
                            * wp[idx[-1] // LANES, rk, idx[-1] % LANES, ri].astype("int32"), axis=[rk, ri]),
        name="qmatmul_acc")


__all__ = ["LANES", "PAIR", "conv_acc", "matmul_acc", "pack_conv_weight", "pack_matmul_weight", "packable"]
