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

x86 with AVX2 takes quads too, with an unsigned activation (`operand="uint8"`): `vpmaddubsw`
multiplies uint8 x int8 pairs and adds each two into an int16 lane, `vpmaddwd` by ones adds two
of those into an int32 lane, so one 32-byte block (8 output channels x 4 reduction steps) costs
three instructions where int16 pairs cost four, and the activation is read a quad per
broadcast, without sign extension. uint8 activations stay as they are (zs = zp); int8 ones are
shifted up by 128. The int16 sums are exact only while every pair fits: 255 * (|w0| + |w1|) <=
32767 for each two weights an int16 lane adds (`u8_pairs_fit`), which the quantizer's paired
weight range guarantees; other weights take the int16 pairs. VNNI's `vpdpbusd` adds the quads in
int32 directly, exact for any weights.

Twins (AVX2 matmuls on uint8 data, `matmul_acc_twins`): where every four weights that two
quads' `vpmaddubsw` lanes hold satisfy 255 * sum |w| <= 32767 (`u8_twins_fit`; the quantizer's
"twins" weight range guarantees it), the weight is packed [N/16, K/8, 2, 16, 4] and the kernel
adds two quads' int16 results before one `vpmaddwd` by ones: three multiplies per 64 products
where two quads take four (BERT's matmuls about 13% faster on Zen 3, one core).

Where the data already is in the packed form there is no copy: a uint8 [M, K] matrix (K a
multiple of 4) is its own quads, and so is NHWC data (channels innermost, a multiple of 4)
that needs no padding. From NHWC with padding the copy is a padded one, channels innermost
([N, H + pads, W + pads, C]). A conv on few input channels (a first layer on 1 or 3) takes quads
of kernel columns instead (`conv_acc_kw`, weights [O/16, C, KH, KW/4, 16, 4]): each is four
neighbouring input pixels of one row, so 3 x 7 x 2 quads cover a 7x7 RGB window where channel
quads would need 49, a quarter of them padding. The accumulator comes out NCHW, or NHWC where
edlc.passes.quantize.layout chose it (its tile of output channels is then stored whole).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from edlc.target import Target

LANES = 16  # output channels per packed block
PAIR = 2  # reduction steps per int32 lane: int16 pairs (x86 vpmaddwd; the default)
QUAD = 4  # reduction steps per int32 lane: int8 quads (aarch64 sdot; x86 uint8 x int8)
U8_PAIR_MAX = 32767 // 255  # |w0| + |w1| of an int16 lane of vpmaddubsw on uint8 data: 128
U8_TWIN_MAX = 32767 // 255  # the four |w| of an int16 lane of the twin form (two vpmaddubsw added)


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


def _x86_int8(target: Target | None) -> tuple[bool, bool]:
    """(AVX2, VNNI) of an x86 target."""
    if target is None or target.tvm.get("kind") != "llvm" or \
            str(target.tvm.get("mtriple", "")).startswith(("aarch64", "arm", "thumb")):
        return False, False
    from edlc.schedules.analysis import cpu_of

    cpu = cpu_of(target.tvm_target())
    if cpu is None or "avx2" not in cpu.features:
        return False, False
    return True, "avx512vnni" in cpu.features and "avx512bw" in cpu.features


def x86_quads(target: Target | None, w: np.ndarray, axis: int | None = None) -> bool:
    """Whether an x86 target runs this weight as uint8 x int8 quads along `axis`: with AVX2
    when its pairs fit int16 (`u8_pairs_fit`), with AVX-512 VNNI always."""
    avx2, vnni = _x86_int8(target)
    return avx2 and (vnni or u8_pairs_fit(w, axis))


def form_for(target: Target | None, w: np.ndarray, dilations=(1, 1), in_layout: str = "NCHW") -> tuple[int, str, str]:
    """(reduction steps per lane, packed activation dtype, what a quad spans) for a weight:
    "c" (input channels: OIHW axis 1, or K of a [K, N] matrix), or "kw" (kernel columns, for
    convs on few input channels and NCHW data: `conv_acc_kw`)."""
    from edlc.passes.quantize.params import conv_pair_axis

    if w.ndim == 4 and conv_pair_axis(w.shape) == 3 and int(dilations[1]) == 1 and in_layout == "NCHW" \
            and x86_quads(target, w, 3):
        return QUAD, "uint8", "kw"
    if x86_quads(target, w):
        return QUAD, "uint8", "c"
    depth = depth_for(target)
    return depth, "int16" if depth == PAIR else "int8", "c"


def u8_pairs_fit(w: np.ndarray, axis: int | None = None) -> bool:
    """Whether every two weights that one int16 lane of `vpmaddubsw` adds (input channels 2m and
    2m + 1 of an output channel, at one kernel position) satisfy 255 * (|w0| + |w1|) <= 32767.
    `axis` is the input-channel axis (default: 1 for a 4-D conv weight, 0 for a [K, N] matrix)."""
    if axis is None:
        axis = 1 if w.ndim == 4 else 0
    a = np.abs(np.moveaxis(np.asarray(w, np.int32), axis, 0))
    if a.shape[0] % 2:
        a = np.concatenate([a, np.zeros_like(a[:1])])
    return bool(np.all(a[0::2] + a[1::2] <= U8_PAIR_MAX))


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


def pack_conv_weight_kw(w: np.ndarray) -> np.ndarray:
    """OIHW int8 -> [O/16, C, KH, KW/4, 16, 4]: quads of kernel columns (zero-padded)."""
    o, c, kh, kw = w.shape
    full = np.zeros((_ceil(o, LANES) * LANES, c, kh, _ceil(kw, QUAD) * QUAD), np.int8)
    full[:o, :, :, :kw] = w
    blocks = full.reshape(-1, LANES, c, kh, full.shape[3] // QUAD, QUAD)
    return np.ascontiguousarray(blocks.transpose(0, 2, 3, 4, 1, 5))


def pack_matmul_weight(w: np.ndarray, depth: int = PAIR) -> np.ndarray:
    """[K, N] int8 -> [N/16, K/depth, 16, depth] (zero-padded)."""
    k, n = w.shape
    full = np.zeros((_ceil(k, depth) * depth, _ceil(n, LANES) * LANES), np.int8)
    full[:k, :n] = w
    blocks = full.reshape(-1, depth, full.shape[1] // LANES, LANES)
    return np.ascontiguousarray(blocks.transpose(2, 0, 3, 1))


def u8_twins_fit(w: np.ndarray) -> bool:
    """Whether a [K, N] matrix can take the twin form (`pack_matmul_twins`): K a multiple of 8,
    and every four weights one int16 lane of the twin kernel adds (rows 8m + 4q + 2p + e of a
    column, q and e in {0, 1}, for p = 0 and for p = 1) satisfy 255 * sum |w| <= 32767."""
    k = w.shape[0]
    if w.ndim != 2 or k % (2 * QUAD):
        return False
    a = np.abs(np.asarray(w, np.int32)).reshape(k // 8, 2, 2, 2, w.shape[1])  # [m, q, p, e, N]
    return bool(a.sum(axis=(1, 3)).max(initial=0) <= U8_TWIN_MAX)


def twin_form(target: Target | None, w: np.ndarray) -> bool:
    """Whether a [K, N] matmul weight on uint8 quads takes the twin form (`matmul_acc_twins`:
    two quads per int16 sum, a quarter fewer multiplies): on AVX2 without AVX-512 (whose VNNI
    `vpdpbusd` needs no such help; edlc.schedules.int8 has the twin intrinsic for AVX2 only),
    for weights whose int16 lanes fit (`u8_twins_fit`: the quantizer's "twins" weight range
    guarantees it)."""
    avx2, _ = _x86_int8(target)
    if not avx2 or not u8_twins_fit(w):
        return False
    from edlc.schedules.analysis import cpu_of

    cpu = cpu_of(target.tvm_target())
    return cpu is not None and "avx512bw" not in cpu.features


def pack_matmul_twins(w: np.ndarray) -> np.ndarray:
    """[K, N] int8 (K a multiple of 8) -> [N/16, K/8, 2, 16, 4]: two quads of rows per
    reduction step, each laid out as `pack_matmul_weight` lays out one."""
    q = pack_matmul_weight(w, QUAD)  # [N/16, K/4, 16, 4]
    return np.ascontiguousarray(q.reshape(q.shape[0], q.shape[1] // 2, 2, LANES, QUAD))


def matmul_acc_twins(a, wp, out_features: int):
    """TE: the int32 accumulator [..., N] of uint8 a [..., K] by a twin-packed weight
    (`pack_matmul_twins`; before `quad_correction` is subtracted): rows 8m + 4q + k."""
    from tvm import te

    lead = [int(d) for d in a.shape[:-1]]
    rk = te.reduce_axis((0, int(wp.shape[1])), "rk")
    rq = te.reduce_axis((0, 2), "rq")
    ri = te.reduce_axis((0, QUAD), "ri")
    return te.compute(
        (*lead, out_features),
        lambda *idx: te.sum(a[(*idx[:-1], rk * 2 * QUAD + rq * QUAD + ri)].astype("int32")
                            * wp[idx[-1] // LANES, rk, rq, idx[-1] % LANES, ri].astype("int32"), axis=[rk, rq, ri]),
        name="qmatmul_acc")


def quad_zero(dtype: str, zp: int, operand: str = "int8") -> int:
    """The zero point of the quad form's activation: uint8 values are shifted by -128 into an
    int8 operand, int8 values by +128 into a uint8 one."""
    if operand == "uint8":
        return zp + 128 if dtype == "int8" else zp
    return zp - 128 if dtype == "uint8" else zp


def quad_correction(w: np.ndarray, kind: str, zs: int) -> np.ndarray:
    """zs * sum(w) per output channel (int32): what the quad accumulator holds beyond the
    zero-point-corrected sum. `w` is the unpacked weight (OIHW for "conv", [K, N] for "matmul")."""
    axes = (1, 2, 3) if kind == "conv" else (0,)
    return (np.int64(zs) * w.astype(np.int64).sum(axis=axes)).astype(np.int32)


def _operand(v, zp: int, depth: int, operand: str = "int8"):
    """One activation element in the packed form: int16 (x - zp) for pairs; for quads, shifted
    by 128 where `operand` (int8 or uint8) differs in sign from the data."""
    from tvm import tirx

    if depth == PAIR:
        return v.astype("int16") - tirx.const(zp, "int16")
    if operand == "uint8":
        if str(v.dtype) == "int8":
            return (v.astype("int16") + tirx.const(128, "int16")).astype("uint8")
        return v
    if str(v.dtype) == "uint8":
        return (v.astype("int16") - tirx.const(128, "int16")).astype("int8")
    return v


def _fill(dtype: str, zp: int, depth: int, operand: str = "int8"):
    """The packed form's padding: the value that stands for a real zero."""
    from tvm import tirx

    if depth == PAIR:
        return tirx.const(0, "int16")
    return tirx.const(quad_zero(dtype, zp, operand), operand)


def conv_acc(x, wp, zp: int, channels: int, strides, pads, dilations, out_channels: int,
             depth: int = PAIR, operand: str = "int8", in_layout: str = "NCHW", out_layout: str = "NCHW"):
    """TE: the int32 accumulator [N, O, OH, OW] (or [N, OH, OW, O] for an NHWC `out_layout`) of x
    (int8/uint8, NCHW or NHWC) by the packed weight (for quads, before `quad_correction` is
    subtracted). From NCHW the activation is packed [N, C/depth, H + pads, W + pads, depth];
    from NHWC its channels are already innermost, and the pack is a padded copy
    [N, H + pads, W + pads, C] (C rounded up to whole groups of `depth`)."""
    from tvm import te, tirx

    nhwc = in_layout == "NHWC"
    n, h, w = (int(x.shape[i]) for i in ((0, 1, 2) if nhwc else (0, 2, 3)))
    o16, c2, kh, kw = (int(d) for d in wp.shape[:4])
    (sh, sw), (dh, dw) = strides, dilations
    pt, pl, pb, pr = pads
    hp, wpad = h + pt + pb, w + pl + pr
    fill = _fill(str(x.dtype), zp, depth, operand)
    name = "pair_pack" if depth == PAIR else "quad_pack"

    def element(b, ch, y, xx):
        inside = tirx.all(y >= pt, y < h + pt, xx >= pl, xx < w + pl)
        if c2 * depth != channels:  # channels padded up to whole groups
            inside = tirx.all(ch < channels, inside)
        c, yy, xi = tirx.min(ch, channels - 1), y - pt, xx - pl
        v = _operand(x[b, yy, xi, c] if nhwc else x[b, c, yy, xi], zp, depth, operand)
        return tirx.if_then_else(inside, v, fill)

    if nhwc and not any(pads) and c2 * depth == channels and str(x.dtype) == operand and depth == QUAD:
        xp = x  # channels innermost and nothing to pad or shift: the data is the packed form
    elif nhwc:
        xp = te.compute((n, hp, wpad, c2 * depth), lambda b, y, xx, ch: element(b, ch, y, xx), name=name)
    else:
        xp = te.compute((n, c2, hp, wpad, depth), lambda b, c, y, xx, ci: element(b, c * depth + ci, y, xx), name=name)
    oh = (hp - dh * (kh - 1) - 1) // sh + 1
    ow = (wpad - dw * (kw - 1) - 1) // sw + 1
    rc = te.reduce_axis((0, c2), "rc")
    ry = te.reduce_axis((0, kh), "ry")
    rx = te.reduce_axis((0, kw), "rx")
    ri = te.reduce_axis((0, depth), "ri")

    def acc(b, o, y, xx):
        yy, xi = y * sh + ry * dh, xx * sw + rx * dw
        a = xp[b, yy, xi, rc * depth + ri] if nhwc else xp[b, rc, yy, xi, ri]
        return te.sum(a.astype("int32") * wp[o // LANES, rc, ry, rx, o % LANES, ri].astype("int32"),
                      axis=[rc, ry, rx, ri])

    if out_layout == "NHWC":
        return te.compute((n, oh, ow, out_channels), lambda b, y, xx, o: acc(b, o, y, xx), name="qconv_acc")
    return te.compute((n, out_channels, oh, ow), acc, name="qconv_acc")


def conv_acc_kw(x, wp, zp: int, kw: int, strides, pads, dilations, out_channels: int,
                operand: str = "uint8", out_layout: str = "NCHW"):
    """TE: the int32 accumulator [N, O, OH, OW] with quads of kernel columns (`wp` from
    `pack_conv_weight_kw`; no dilation along the width): each activation quad is four
    neighbouring columns of one input row, so the packed activation is the zero-point-padded
    input itself, a few columns wider where the last quad runs past the window (its weights
    are zeros). Before `quad_correction` is subtracted."""
    from tvm import te, tirx

    n, c, h, w = (int(d) for d in x.shape)
    kh, kq = (int(d) for d in wp.shape[2:4])
    (sh, sw), (dh, _) = strides, dilations
    pt, pl, pb, pr = pads
    hp = h + pt + pb
    oh = (hp - dh * (kh - 1) - 1) // sh + 1
    ow = (w + pl + pr - kw) // sw + 1
    wq = (ow - 1) * sw + kq * QUAD
    fill = _fill(str(x.dtype), zp, QUAD, operand)

    def pack(b, ch, y, xx):
        inside = tirx.all(y >= pt, y < h + pt, xx >= pl, xx < w + pl)
        return tirx.if_then_else(inside, _operand(x[b, ch, y - pt, xx - pl], zp, QUAD, operand), fill)

    xp = te.compute((n, c, hp, wq), pack, name="quad_pack")
    rc = te.reduce_axis((0, c), "rc")
    ry = te.reduce_axis((0, kh), "ry")
    rq = te.reduce_axis((0, kq), "rq")
    ri = te.reduce_axis((0, QUAD), "ri")
    def acc(b, o, y, xx):
        return te.sum(xp[b, rc, y * sh + ry * dh, xx * sw + rq * QUAD + ri].astype("int32")
                      * wp[o // LANES, rc, ry, rq, o % LANES, ri].astype("int32"), axis=[rc, ry, rq, ri])

    if out_layout == "NHWC":
        return te.compute((n, oh, ow, out_channels), lambda b, y, xx, o: acc(b, o, y, xx), name="qconv_acc")
    return te.compute((n, out_channels, oh, ow), acc, name="qconv_acc")


def matmul_acc(a, wp, zp: int, k: int, out_features: int, depth: int = PAIR, operand: str = "int8"):
    """TE: the int32 accumulator [..., N] of a ([..., K], int8/uint8) by the packed weight
    (for quads, before `quad_correction` is subtracted)."""
    from tvm import te, tirx

    lead = [int(d) for d in a.shape[:-1]]
    k2 = int(wp.shape[1])
    rk = te.reduce_axis((0, k2), "rk")
    ri = te.reduce_axis((0, depth), "ri")
    if depth == QUAD and k % QUAD == 0 and str(a.dtype) == operand:
        # the rows are the quads already (uint8 data, uint8 operand): no packing copy
        return te.compute(
            (*lead, out_features),
            lambda *idx: te.sum(a[(*idx[:-1], rk * QUAD + ri)].astype("int32")
                                * wp[idx[-1] // LANES, rk, idx[-1] % LANES, ri].astype("int32"), axis=[rk, ri]),
            name="qmatmul_acc")
    fill = _fill(str(a.dtype), zp, depth, operand)

    def pack(*idx):
        *rows, c, ci = idx
        kk = c * depth + ci
        v = _operand(a[(*rows, tirx.min(kk, k - 1))], zp, depth, operand)
        return tirx.if_then_else(kk < k, v, fill)

    ap = te.compute((*lead, k2, depth), pack, name="pair_pack" if depth == PAIR else "quad_pack")
    return te.compute(
        (*lead, out_features),
        lambda *idx: te.sum(ap[(*idx[:-1], rk, ri)].astype("int32")
                            * wp[idx[-1] // LANES, rk, idx[-1] % LANES, ri].astype("int32"), axis=[rk, ri]),
        name="qmatmul_acc")


__all__ = ["LANES", "PAIR", "QUAD", "U8_PAIR_MAX", "U8_TWIN_MAX", "matmul_acc_twins", "pack_matmul_twins", "twin_form", "u8_twins_fit", "conv_acc", "conv_acc_kw", "form_for", "pack_conv_weight_kw", "u8_pairs_fit", "x86_quads", "matmul_acc", "pack_conv_weight", "pack_matmul_weight",
           "packable", "quad_correction", "quad_zero"]
