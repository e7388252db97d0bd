"""Lowering of `edlc.qlayernorm` (edlc.passes.quantize.norm): LayerNormalization over the last
axis and the quantization of its output, one kernel, row by row.

    mean[r] = sum_c x[r, c] / C;    var[r] = sum_c (x[r, c] - mean[r])^2 / C     (float32)
    y[r, c] = (x[r, c] - mean[r]) * rsqrt(var[r] + eps) * scale[c] + bias[c]
    q[r, c] = saturate(round_half_even(y[r, c] / y_scale) + zero_point)

as edlc's LayerNormalization lowering computes it (edlc.lower.normalization), the sums over 8
interleaved partial sums (where C is a multiple of 8) so that every pass over a row runs in
vectors. On CPUs the kernel comes scheduled: rows in parallel tasks, each row's statistics,
normalization and quantization together while the row is in L1. Other axes take the
decomposition (LayerNormalization and QuantizeLinear lowered as one fused kernel).
"""

from __future__ import annotations

import numpy as np

from edlc.errors import LoweringError
from edlc.ir.graph import Node
from edlc.lower import LowerContext, register_lowering

LANES = 8


def qlayernorm_te(x, scale, bias, eps: float, y_scale: float, zp: int, out_dtype: str, float_output: bool):
    """TE over x [..., C] (normalized over its last axis): (y, q), or q alone."""
    from tvm import te, tirx

    *lead, width = (int(d) for d in x.shape)
    lead = tuple(lead)
    f32 = "float32"

    def row_sum(value, name):
        if width % LANES == 0:
            r = te.reduce_axis((0, width // LANES), f"{name}_r")
            part = te.compute((*lead, LANES), lambda *ix: te.sum(value(ix[:-1], r * LANES + ix[-1]), axis=r),
                              name=f"{name}8")
            r8 = te.reduce_axis((0, LANES), f"{name}_r8")
            return te.compute(lead, lambda *ix: te.sum(part[(*ix, r8)], axis=r8), name=name)
        r = te.reduce_axis((0, width), f"{name}_r")
        return te.compute(lead, lambda *ix: te.sum(value(ix, r), axis=r), name=name)

    n = tirx.const(float(width), f32)
    total = row_sum(lambda ix, c: x[(*ix, c)], "x_sum")
    mean = te.compute(lead, lambda *ix: total[ix] / n, name="mean")
    sq = row_sum(lambda ix, c: (x[(*ix, c)] - mean[ix]) * (x[(*ix, c)] - mean[ix]), "sq_sum")
    inv = te.compute(lead, lambda *ix: tirx.rsqrt(sq[ix] / n + tirx.const(eps, f32)), name="inv_std")

    def norm(*ix):
        row, c = ix[:-1], ix[-1]
        y = (x[ix] - mean[row]) * inv[row] * scale[c]
        return y + bias[c] if bias is not None else y

    y = te.compute((*lead, width), norm, name="layer_norm")
    qlo, qhi = (0.0, 255.0) if out_dtype == "uint8" else (-128.0, 127.0)

    def quant(*ix):
        v = tirx.round(y[ix] / tirx.const(y_scale, f32)) + tirx.const(float(zp), f32)
        return tirx.max(tirx.min(v, tirx.const(qhi, f32)), tirx.const(qlo, f32)).astype(out_dtype)

    q = te.compute((*lead, width), quant, name="quantized")
    return (y, q) if float_output else q


def schedule(func, cores: int, float_output: bool):
    """Rows in parallel tasks; per row: the two sums (8 lanes), then the normalized row and its
    quantization, 8 lanes at a time."""
    from tvm import s_tir

    from edlc.schedules import int8

    sch = s_tir.Schedule(func)
    names = {sch.get(rv).name_hint for rv in sch.get_child_blocks(sch.get_sblock("root"))}
    q = sch.get_sblock("quantized")
    if float_output:
        main = sch.get_sblock("layer_norm")
    else:
        sch.compute_inline(sch.get_sblock("layer_norm"))
        main = q
    *lead, c = sch.get_loops(main)
    row = int8.parallel_tasks(sch, lead, cores)
    if int(sch.get(c).extent) % LANES == 0:
        _, ci = sch.split(c, [None, LANES])
        sch.vectorize(ci)
    if float_output:
        sch.reverse_compute_at(q, row)
        qc = sch.get_loops(q)[-1]
        if int(sch.get(qc).extent) % LANES == 0:
            _, qi = sch.split(qc, [None, LANES])
            sch.vectorize(qi)
    for name in ("inv_std", "sq_sum", "sq_sum8", "mean", "x_sum", "x_sum8"):
        if name not in names:
            continue
        b = sch.get_sblock(name)
        sch.compute_at(b, row)
        if name.endswith("8"):
            lane, red = sch.get_loops(b)[-2:]
            sch.reorder(red, lane)
            sch.vectorize(lane)
            sch.decompose_reduction(b, red)
    return sch.mod["main"]


@register_lowering("qlayernorm", "edlc")
def qlayernorm(ctx: LowerContext, node: Node, inputs: list):
    from tvm import relax, te

    from edlc.passes.quantize.norm import BIAS, SCALE, Y_SCALE, Y_ZP, X
    from edlc.schedules.analysis import cpu_of

    xt = node.inputs[X].type
    rank = xt.rank
    axis = node.attrs.get("axis", -1)
    axis = axis + rank if axis < 0 else axis
    consts = [node.inputs[i] for i in (SCALE, Y_SCALE, Y_ZP)] + \
        ([node.inputs[BIAS]] if len(node.inputs) > BIAS and node.inputs[BIAS] is not None else [])
    if axis != rank - 1 or not xt.is_static or any(not v.is_constant for v in consts) or xt.dtype != "float32":
        from edlc.lower.fused import lower_by_decomposition

        return lower_by_decomposition(ctx, node, inputs)  # LayerNorm, QuantizeLinear: one kernel
    float_output = bool(node.attrs.get("float_output", 0))
    shape = [int(d) for d in xt.shape]
    has_bias = len(node.inputs) > BIAS and node.inputs[BIAS] is not None
    y_scale = float(np.float32(np.asarray(node.inputs[Y_SCALE].const).reshape(())))
    zp_arr = np.asarray(node.inputs[Y_ZP].const)
    out_dtype = str(zp_arr.dtype)
    if out_dtype not in ("uint8", "int8"):
        raise LoweringError(f"node '{node.name}' (qlayernorm): the zero point must be uint8 or int8")
    eps = float(node.attrs.get("epsilon", 1e-5))
    args = [inputs[X], inputs[SCALE]] + ([inputs[BIAS]] if has_bias else [])

    def te_fn(xx, s, *b):
        return qlayernorm_te(xx, s, b[0] if b else None, eps, y_scale, int(zp_arr.reshape(())), out_dtype,
                             float_output)

    target = getattr(ctx, "target", None)
    cpu = cpu_of(target.tvm_target()) if target is not None and target.tvm.get("kind") == "llvm" else None
    if cpu is None:
        outs = ctx.bb.emit_te(te_fn, *args, primfunc_name_hint="qlayernorm")
    else:
        holders = [te.placeholder([int(d) for d in a.ty.shape.values], a.ty.dtype, name=n)
                   for a, n in zip(args, ("x", "scale", "bias"))]
        tensors = te_fn(*holders)
        tensors = list(tensors) if float_output else [tensors]
        cores = cpu.cores if target.mcu is None else 1
        func = schedule(te.create_prim_func([*holders, *tensors]), cores, float_output)
        func = func.with_attr("tirx.is_scheduled", True).without_attr("global_symbol")
        gv = ctx.bb.add_func(func, ctx.fresh(f"qlayernorm_{node.name}"))
        types = [relax.TensorType(shape, t.dtype) for t in tensors]
        outs = ctx.emit(relax.call_tir(gv, args, types if len(types) > 1 else types[0]))
    if float_output:
        return [ctx.emit(relax.TupleGetItem(outs, i)) for i in range(2)]
    return outs
