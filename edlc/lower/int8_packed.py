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

aarch64 with the dot-product extension (`+dotprod`: cortex-a76, neoverse-n1) takes quads
instead (`depth=4`): `sdot` multiplies four int8 x int8 pairs per int32 lane, so the weight is
packed [.., 16, 4] and the activation stays int8, shifted into the signed range (uint8 - 128;
exact) with padding at the shifted zero point `zs`. The accumulator is then
sum(xs * w) = sum((x - zp) * w) + zs * sum(w), and the constant zs * sum(w) per output
channel (`quad_correction`) is subtracted after it: exact int32 again.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from edlc.target import Target

LANES = 16  # output channels per packed block
PAIR = 2  # reduction steps per int32 lane: int16 pairs (x86 vpmaddwd; the default)
QUAD = 4  # reduction steps per int32 lane: int8 quads (aarch64 sdot)


def depth_for(target: Target | None) -> int:
    """QUAD where the target's CPU has a 4-way int8 dot product (aarch64 `sdot`, which
    edlc.schedules.int8 maps the quads onto), else PAIR. No target (a target-neutral lowering)
    gives PAIR."""
    if target is None or target.tvm.get("kind") != "llvm":
        return PAIR
    if not str(target.tvm.get("mtriple", "")).startswith("aarch64"):
        return PAIR
    from edlc.schedules.analysis import cpu_of

    cpu = cpu_of(target.tvm_target())
    return QUAD if cpu is not None and "dotprod" in cpu.features else PAIR


def packable(w: np.ndarray, w_zp: np.ndarray | None, group: int) -> bool:
    """Whether the packed form applies: int8 weights with zero point 0, no groups."""
    return group == 1 and w.dtype == np.int8 and (w_zp is None or not np.any(w_zp))


def _ceil(a: int, b: int) -> int:
    return -(-a // b)


def pack_conv_weight(w: np.ndarray, depth: int = PAIR) -> np.ndarray:
    """OIHW int8 -> [O/16, C/depth, KH, KW, 16, depth] (zero-padded)."""
    o, c, kh, kw = w.shape
    full = np.zeros((_ceil(o, LANES) * LANES, _ceil(c, depth) * depth, kh, kw), np.int8)
    full[:o, :c] = w
    blocks = full.reshape(-1, LANES, full.shape[1] // depth, depth, kh, kw)
    return np.ascontiguousarray(blocks.transpose(0, 2, 4, 5, 1, 3))


def pack_matmul_weight(w: np.ndarray, depth: int = PAIR) -> np.ndarray:
    """[K, N] int8 -> [N/16, K/depth, 16, depth] (zero-padded)."""
    k, n = w.shape
    full = np.zeros((_ceil(k, depth) * depth, _ceil(n, LANES) * LANES), np.int8)
    full[:k, :n] = w
    blocks = full.reshape(-1, depth, full.shape[1] // LANES, LANES)
    return np.ascontiguousarray(blocks.transpose(2, 0, 3, 1))


def quad_zero(dtype: str, zp: int) -> int:
    """The zero point of the quad form's int8 activation: uint8 values are shifted by -128."""
    return zp - 128 if dtype == "uint8" else zp


def quad_correction(w: np.ndarray, kind: str, zs: int) -> np.ndarray:
    """zs * sum(w) per output channel (int32): what the quad accumulator holds beyond the
    zero-point-corrected sum. `w` is the unpacked weight (OIHW for "conv", [K, N] for "matmul")."""
    axes = (1, 2, 3) if kind == "conv" else (0,)
    return (np.int64(zs) * w.astype(np.int64).sum(axis=axes)).astype(np.int32)


def _operand(v, zp: int, depth: int):
    """One activation element in the packed form: int16 (x - zp) for pairs, int8 shifted
    into the signed range for quads."""
    from tvm import tirx

    if depth == PAIR:
        return v.astype("int16") - tirx.const(zp, "int16")
    if str(v.dtype) == "uint8":
        return (v.astype("int16") - tirx.const(128, "int16")).astype("int8")
    return v


def _fill(dtype: str, zp: int, depth: int):
    """The packed form's padding: the value that stands for a real zero."""
    from tvm import tirx

    if depth == PAIR:
        return tirx.const(0, "int16")
    return tirx.const(quad_zero(dtype, zp), "int8")


def conv_acc(x, wp, zp: int, channels: int, strides, pads, dilations, out_channels: int,
             depth: int = PAIR):
    """TE: the int32 accumulator [N, O, OH, OW] of x (NCHW, int8/uint8) by the packed weight
    (for quads, before `quad_correction` is subtracted)."""
    from tvm import te, tirx

    n, _, h, w = (int(d) for d in x.shape)
    o16, c2, kh, kw = (int(d) for d in wp.shape[:4])
    (sh, sw), (dh, dw) = strides, dilations
    pt, pl, pb, pr = pads
    hp, wpad = h + pt + pb, w + pl + pr
    fill = _fill(str(x.dtype), zp, depth)

    def pack(b, c, y, xx, ci):
        ch = c * depth + ci
        inside = tirx.all(ch < channels, y >= pt, y < h + pt, xx >= pl, xx < w + pl)
        v = _operand(x[b, tirx.min(ch, channels - 1), y - pt, xx - pl], zp, depth)
        return tirx.if_then_else(inside, v, fill)

    xp = te.compute((n, c2, hp, wpad, depth), pack, name="pair_pack" if depth == PAIR else "quad_pack")
    oh = (hp - dh * (kh - 1) - 1) // sh + 1
    ow = (wpad - dw * (kw - 1) - 1) // sw + 1
    rc = te.reduce_axis((0, c2), "rc")
    ry = te.reduce_axis((0, kh), "ry")
    rx = te.reduce_axis((0, kw), "rx")
    ri = te.reduce_axis((0, depth), "ri")
    return te.compute(
        (n, out_channels, oh, ow),
        lambda b, o, y, xx: te.sum(
            xp[b, rc, y * sh + ry * dh, xx * sw + rx * dw, ri].astype("int32")
            * wp[o // LANES, rc, ry, rx, o % LANES, ri].astype("int32"), axis=[rc, ry, rx, ri]),
        name="qconv_acc")


def matmul_acc(a, wp, zp: int, k: int, out_features: int, depth: int = PAIR):
    """TE: the int32 accumulator [..., N] of a ([..., K], int8/uint8) by the packed weight
    (for quads, before `quad_correction` is subtracted)."""
    from tvm import te, tirx

    lead = [int(d) for d in a.shape[:-1]]
    k2 = int(wp.shape[1])
    fill = _fill(str(a.dtype), zp, depth)

    def pack(*idx):
        *rows, c, ci = idx
        kk = c * depth + ci
        v = _operand(a[(*rows, tirx.min(kk, k - 1))], zp, depth)
        return tirx.if_then_else(kk < k, v, fill)

    ap = te.compute((*lead, k2, depth), pack, name="pair_pack" if depth == PAIR else "quad_pack")
    rk = te.reduce_axis((0, k2), "rk")
    ri = te.reduce_axis((0, depth), "ri")
    return te.compute(
        (*lead, out_features),
        lambda *idx: te.sum(ap[(*idx[:-1], rk, ri)].astype("int32")
                            * wp[idx[-1] // LANES, rk, idx[-1] % LANES, ri].astype("int32"), axis=[rk, ri]),
        name="qmatmul_acc")


__all__ = ["LANES", "PAIR", "QUAD", "conv_acc", "matmul_acc", "pack_conv_weight", "pack_matmul_weight",
           "packable", "quad_correction", "quad_zero"]
