"""int8 attention: `edlc.qattention`, softmax(Q K^T * scale + mask) V on int8 Q, K and V, with
the head split and merge folded in, and the graph rewrite that makes it.

    before: %q = edlc.qmatmul(..)  (float)  -> Reshape [B, S, H, D] -> Transpose (0, 2, 1, 3)
            %k = edlc.qmatmul(..)  (float)  -> Reshape -> Transpose (0, 2, 3, 1)
            %v = edlc.qmatmul(..)  (float)  -> Reshape -> Transpose (0, 2, 1, 3)
            %a = edlc.Attention(%q, %k, %v, %mask) -> Transpose (0, 2, 1, 3) -> Reshape [B, S, H*D]
            %y = QuantizeLinear(%a, ys, yz)
    after:  %q = edlc.qmatmul(.., qs, qz)                     uint8 [B, S, H*D]
            %k = edlc.qmatmul[clip +-64 ks](.., ks, 0)        int8, |k| <= 64
            %v = edlc.qmatmul[clip +-64 vs](.., vs, 0)        int8, |v| <= 64
            %y = edlc.qattention[heads=H](%q, qs, qz, %k, ks, 0, %v, vs, 0, %mask, ys, yz)

The op (inputs in that order; mask, ys and yz optional; attributes heads, scale):

    acc1 = sum_d (q - qz)[b, i, h*D + d] * clip(k - kz, -64, 64)[b, j, h*D + d]     exact int32
    s    = float32(acc1) * float32(qs * ks * scale) + mask                            float32
    p    = saturate(round_half_even(exp(s - max_j s) * 255))                          uint8
    acc2 = sum_j p[b, h, i, j] * clip(v - vz, -64, 64)[b, j, h*D + d]                  exact int32
    y    = QuantizeLinear(float32(acc2) * (vs / float32(sum_j p)), ys, yz)  at [b, i, h*D + d]

P is softmax's numerator, exp(s - max s) in [0, 1] with its maximum 1 in every row, quantized
at 1/255, and the normalization by its (exact, integer) row sum comes after the product: each
row uses all 8 bits whatever its spread (softmax itself quantized at a fixed scale would lose a
row whose largest probability is small to a few levels). K and V hold 7 bits (|x| <= 64) so
that every two of them that x86's `vpmaddubsw` multiplies by two uint8 values and sums in int16
fit (255 * 128 <= 32767): both products run on the uint8 x int8 kernels of the int8 layers
(edlc.lower.int8_attention), exactly. The decomposition is the QDQ form onnxruntime runs (Clip,
DequantizeLinear -> MatMul -> Exp(s - ReduceMax) -> QuantizeLinear -> DequantizeLinear ->
MatMul, divided by the ReduceSum of the dequantized P).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from edlc.ir.graph import Graph, Node, Value
from edlc.ir.ops import register_op
from edlc.ir.types import TensorType
from edlc.passes.quantize.ops import Y_SCALE, Y_ZP
from edlc.passes.quantize.params import QRANGE, QParams, activation_params

Q, Q_SCALE, Q_ZP, K, K_SCALE, K_ZP, V, V_SCALE, V_ZP, MASK, OUT_SCALE, OUT_ZP = range(12)
KV_QMAX = 64  # |k|, |v| <= 64: two of them times 255 fit int16
P_LEVELS = 255  # e = exp(s - max s) in [0, 1] as uint8 e * 255


def _in(node: Node, i: int) -> Value | None:
    return node.inputs[i] if i < len(node.inputs) else None


def _qattention_type(node: Node) -> list[TensorType]:
    q = node.inputs[Q].type
    zp = _in(node, OUT_ZP)
    dtype = "float32" if _in(node, OUT_SCALE) is None else (zp.type.dtype if zp is not None else "uint8")
    return [TensorType(q.shape, dtype)]


def _f32(a) -> np.float32:
    return np.float32(np.asarray(a, np.float64).reshape(()))


def score_scale(q_scale, k_scale, scale: float) -> np.float32:
    """What the int32 Q.K sums are multiplied by: q_scale * k_scale * scale, rounded once."""
    return np.float32(float(_f32(q_scale)) * float(_f32(k_scale)) * float(scale))


def row_scale(v_scale, p_sum: np.ndarray) -> np.ndarray:
    """What a row's int32 P.V sums are multiplied by: v_scale / sum_j p (float32)."""
    return (_f32(v_scale) / np.asarray(p_sum).astype(np.float32)).astype(np.float32)


def _heads(x: np.ndarray, heads: int) -> np.ndarray:
    """[B, S, H*D] -> [B, H, S, D]."""
    b, s, hd = x.shape
    return x.reshape(b, s, heads, hd // heads).transpose(0, 2, 1, 3)


def _reference(node: Node, inputs: Sequence[np.ndarray | None]) -> list[np.ndarray]:
    ins = list(inputs) + [None] * (OUT_ZP + 1 - len(inputs))
    heads = int(node.attrs["heads"])

    def centered(i: int, clip: bool) -> np.ndarray:
        zp = 0 if ins[i + 2] is None else int(np.asarray(ins[i + 2]).reshape(()))
        c = np.asarray(ins[i]).astype(np.int64) - zp
        return _heads(np.clip(c, -KV_QMAX, KV_QMAX) if clip else c, heads)

    q, k, v = centered(Q, False), centered(K, True), centered(V, True)
    acc = np.einsum("bhid,bhjd->bhij", q, k)
    s = acc.astype(np.float32) * score_scale(ins[Q_SCALE], ins[K_SCALE], node.attrs["scale"])
    if ins[MASK] is not None:
        s = (s + np.asarray(ins[MASK], np.float32)).astype(np.float32)
    e = np.exp(s - s.max(axis=-1, keepdims=True)).astype(np.float32)
    p = np.clip(np.rint(e * np.float32(P_LEVELS)), 0, P_LEVELS).astype(np.int64)
    acc2 = np.einsum("bhij,bhjd->bhid", p, v)
    real = (acc2.astype(np.float32) * row_scale(ins[V_SCALE], p.sum(axis=-1, keepdims=True))).astype(np.float32)
    b, h, s_len, d = real.shape
    real = real.transpose(0, 2, 1, 3).reshape(b, s_len, h * d)
    if ins[OUT_SCALE] is None:
        return [real]
    zp = ins[OUT_ZP] if ins[OUT_ZP] is not None else np.array(0, np.uint8)
    lo, hi = QRANGE[str(np.asarray(zp).dtype)]
    y = np.rint(real / np.float32(ins[OUT_SCALE])) + float(zp)
    return [np.clip(y, lo, hi).astype(np.asarray(zp).dtype)]


def _decompose(graph: Graph, node: Node) -> list[Value]:
    ins = list(node.inputs) + [None] * (OUT_ZP + 1 - len(node.inputs))
    heads = int(node.attrs["heads"])
    b, s, hd = node.inputs[Q].type.shape
    dt = np.float32

    def add(op: str, args: list, **kw) -> Value:
        return graph.add_node(op, args, kw, name=f"{node.name}.{op}", before=node).outputs[0]

    def const(a, name: str) -> Value:
        return graph.constant(np.asarray(a, dt), f"{node.name}.{name}")

    def split(i: int, perm: list[int], clip: bool) -> Value:
        x = add("DequantizeLinear", [ins[i], ins[i + 1], ins[i + 2]])
        if clip:
            bound = np.float32(KV_QMAX) * _f32(ins[i + 1].const)
            x = add("Clip", [x, const(-bound, "clip_min"), const(bound, "clip_max")])
        xb, xs, xh = ins[i].type.shape
        x = add("Reshape", [x, graph.constant(np.array([xb, xs, heads, xh // heads], np.int64), "split_heads")])
        return add("Transpose", [x], perm=perm)

    q, k, v = split(Q, [0, 2, 1, 3], False), split(K, [0, 2, 3, 1], True), split(V, [0, 2, 1, 3], True)
    scores = add("Mul", [add("MatMul", [q, k]), const(node.attrs["scale"], "scale")])
    if ins[MASK] is not None:
        scores = add("Add", [scores, ins[MASK]])
    e = add("Exp", [add("Sub", [scores, _reduce(graph, node, "ReduceMax", scores)])])
    p_scale = const(np.float32(1) / np.float32(P_LEVELS), "p_scale")
    p_zp = graph.constant(np.array(0, np.uint8), f"{node.name}.p_zero_point")
    p = add("DequantizeLinear", [add("QuantizeLinear", [e, p_scale, p_zp]), p_scale, p_zp])
    y = add("Div", [add("MatMul", [p, v]), _reduce(graph, node, "ReduceSum", p)])
    y = add("Transpose", [y], perm=[0, 2, 1, 3])
    y = add("Reshape", [y, graph.constant(np.array([b, s, hd], np.int64), "merge_heads")])
    if ins[OUT_SCALE] is not None:
        y = add("QuantizeLinear", [y, ins[OUT_SCALE], ins[OUT_ZP]])
    return [y]


def _reduce(graph: Graph, node: Node, op: str, x: Value) -> Value:
    """`op` over the last axis, kept: axes an input from opset 18 (ReduceSum: 13)."""
    opset = graph.opset.get("", 17)
    as_input = opset >= (13 if op == "ReduceSum" else 18)
    ins = [x, graph.constant(np.array([-1], np.int64), "axes")] if as_input else [x]
    attrs = {"keepdims": 1} if as_input else {"axes": [-1], "keepdims": 1}
    return graph.add_node(op, ins, attrs, name=f"{node.name}.{op}", before=node).outputs[0]


register_op("qattention", "edlc", infer=_qattention_type, reference=_reference, decompose=_decompose,
            doc="int8 attention on [B, S, H*D] Q (uint8), K and V (int8, |x| <= 64): exact int32 "
                "Q.K and P.V, float softmax, P in uint8 at 1/255, quantized output")


# ---- the rewrite -------------------------------------------------------------------------------
def _is(node: Node | None, op: str, domain: str = "") -> bool:
    return node is not None and node.domain == domain and node.op == op


def _only_user(graph: Graph, v: Value) -> Node | None:
    users = v.users
    return users[0] if len(users) == 1 and len(v.uses) == 1 and v not in graph.outputs else None


def _perm(node: Node | None) -> list[int] | None:
    return [int(p) for p in node.attrs.get("perm", [])] if _is(node, "Transpose") else None


def _head_split(graph: Graph, t: Value, perm: list[int]) -> tuple[Node, int] | None:
    """The float int8-op output that `t` splits into heads (Reshape [B, S, H, D] then
    Transpose `perm`), and the head count; None where it is not so."""
    tr = t.producer
    if _perm(tr) != perm:
        return None
    rs = tr.inputs[0].producer
    if not _is(rs, "Reshape") or _only_user(graph, rs.outputs[0]) is not tr:
        return None
    src = rs.inputs[0]
    op = src.producer
    if not _is(op, "qmatmul", "edlc") or len(op.inputs) > Y_SCALE and op.inputs[Y_SCALE] is not None or \
            op.attrs.get("epilogue") is not None or len([u for u in src.users if u is not rs]) or len(src.uses) != 1:
        return None
    xs, ys = src.type, rs.outputs[0].type
    if xs is None or ys is None or not xs.is_static or not ys.is_static or xs.rank != 3 or ys.rank != 4 or \
            tuple(ys.shape[:2]) != tuple(xs.shape[:2]) or ys.shape[2] * ys.shape[3] != xs.shape[2]:
        return None
    return op, int(ys.shape[2])


def _head_merge(graph: Graph, a: Value) -> tuple[Node, Node] | None:
    """(Reshape merging the heads of `a` back to [B, S, H*D], the QuantizeLinear after it)."""
    tr = _only_user(graph, a)
    if _perm(tr) != [0, 2, 1, 3]:
        return None
    rs = _only_user(graph, tr.outputs[0])
    if not _is(rs, "Reshape") or rs.outputs[0].type is None or rs.outputs[0].type.rank != 3:
        return None
    users = rs.outputs[0].users
    if len(users) != 1 or not _is(users[0], "QuantizeLinear") or len(rs.outputs[0].uses) != 1:
        return None
    qn = users[0]
    s, z = qn.inputs[1], qn.inputs[2] if len(qn.inputs) > 2 else None
    if not s.is_constant or s.const.size != 1 or (z is not None and (not z.is_constant or z.const.size != 1)):
        return None
    return rs, qn


def _set_output_params(graph: Graph, node: Node, p: QParams, clip: float | None) -> Value:
    """`node` (a float-output qmatmul) quantizing its output with `p` (clipped to +-clip
    first); returns its new output. A tapped float value keeps its name through a
    DequantizeLinear."""
    ins = list(node.inputs) + [None] * (Y_SCALE + 2 - len(node.inputs))
    ins[Y_SCALE] = graph.constant(p.scale, f"{node.name}.y.scale")
    ins[Y_ZP] = graph.constant(p.zero_point, f"{node.name}.y.zero_point")
    attrs = dict(node.attrs)
    if clip is not None:
        lo, hi = attrs.get("clip_min"), attrs.get("clip_max")
        attrs["clip_min"] = float(-clip) if lo is None else max(float(lo), -clip)
        attrs["clip_max"] = float(clip) if hi is None else min(float(hi), clip)
    new = graph.add_node(node.op, ins, attrs, domain=node.domain, name=f"{node.name}.q", before=node)
    old = node.outputs[0]
    if old in graph.outputs:  # a tap: the float view of the quantized value
        dq = graph.add_node("DequantizeLinear", [new.outputs[0], ins[Y_SCALE], ins[Y_ZP]],
                            name=f"{node.name}.tap", before=node)
        old.name, dq.outputs[0].name = dq.outputs[0].name, old.name
        graph.outputs = [dq.outputs[0] if v is old else v for v in graph.outputs]
    return new.outputs[0]


def _remove_chain(graph: Graph, node: Node) -> None:
    """Remove `node` and the nodes after it that nothing reads any more (its Reshape and
    Transpose, the float attention and its head merge), keeping graph outputs."""
    stack = [node]
    while stack:
        n = stack.pop()
        if n not in graph.nodes or any(v.uses or v in graph.outputs for v in n.outputs):
            continue
        producers = [v.producer for v in n.inputs if v is not None and v.producer is not None]
        graph.remove_node(n)
        stack.extend(producers)


def _broadcasts(mask: Value, scores: tuple) -> bool:
    """Whether a float32 mask broadcasts to the scores [B, H, S, Sk] without growing them."""
    t = mask.type
    if t is None or t.dtype != "float32" or not t.is_static or t.rank > 4:
        return False
    return all(d in (1, want) for d, want in zip(reversed(t.shape), reversed(scores)))


def _kv_params(lo: float, hi: float) -> tuple[QParams, float]:
    amax = max(abs(float(lo)), abs(float(hi)))
    scale = np.float32(amax / KV_QMAX if amax > 0 else 1.0)
    return QParams(np.array(scale, np.float32), np.array(0, np.int8)), float(np.float32(KV_QMAX) * scale)


def int8_attention(graph: Graph, ranges: Mapping[str, tuple[float, float]]) -> bool:
    """Rewrite each float edlc.Attention between int8 matmuls (see the module docstring) into
    edlc.qattention, with Q, K and V quantized by their calibrated ranges."""
    changed = False
    for node in list(graph.nodes):
        if not _is(node, "Attention", "edlc") or len(node.inputs) < 3:
            continue
        parts = [_head_split(graph, node.inputs[i], perm)
                 for i, perm in ((0, [0, 2, 1, 3]), (1, [0, 2, 3, 1]), (2, [0, 2, 1, 3]))]
        merge = _head_merge(graph, node.outputs[0])
        if any(p is None for p in parts) or merge is None or len({h for _, h in parts}) != 1:
            continue
        (qm, heads), (km, _), (vm, _) = parts
        names = [m.outputs[0].name for m in (qm, km, vm)]
        if any(n not in ranges for n in names) or len({id(qm), id(km), id(vm)}) != 3:
            continue
        rs, quant = merge
        (b, s, hidden), (bk, sk, hk), (bv, sv, hv) = (m.outputs[0].type.shape for m in (qm, km, vm))
        if (bk, hk) != (b, hidden) or (bv, sv, hv) != (b, sk, hidden) or \
                tuple(rs.outputs[0].type.shape) != (b, s, hidden):
            continue
        mask = node.inputs[3] if len(node.inputs) > 3 else None
        if mask is not None and not _broadcasts(mask, (b, heads, s, sk)):
            continue
        pq = activation_params(*ranges[names[0]], "uint8")
        pk, clip_k = _kv_params(*ranges[names[1]])
        pv, clip_v = _kv_params(*ranges[names[2]])
        q = _set_output_params(graph, qm, pq, None)
        k = _set_output_params(graph, km, pk, clip_k)
        v = _set_output_params(graph, vm, pv, clip_v)
        zp = quant.inputs[2] if len(quant.inputs) > 2 and quant.inputs[2] is not None else \
            graph.constant(np.array(0, np.uint8), f"{quant.name}.zero_point")

        def c(a, n: str, prefix: str = node.name) -> Value:
            return graph.constant(a, f"{prefix}.{n}")

        ins = [q, c(pq.scale, "q.scale"), c(pq.zero_point, "q.zero_point"),
               k, c(pk.scale, "k.scale"), c(pk.zero_point, "k.zero_point"),
               v, c(pv.scale, "v.scale"), c(pv.zero_point, "v.zero_point"), mask, quant.inputs[1], zp]
        new = graph.add_node("qattention", ins, {"heads": heads, "scale": float(node.attrs["scale"])},
                             domain="edlc", name=f"{node.name}.int8", before=quant)
        old = quant.outputs[0]
        old.name, new.outputs[0].name = new.outputs[0].name, old.name
        graph.replace_all_uses(old, new.outputs[0])
        tapped = rs.outputs[0]
        if tapped in graph.outputs:  # a tap of the float context keeps a float view
            dq = graph.add_node("DequantizeLinear", [new.outputs[0], *quant.inputs[1:2], zp],
                                name=f"{rs.name}.tap", before=quant)
            tapped.name, dq.outputs[0].name = dq.outputs[0].name, tapped.name
            graph.outputs = [dq.outputs[0] if o is tapped else o for o in graph.outputs]
        _remove_chain(graph, quant)  # back to the float-output matmuls
        for layer, quantizing in ((qm, q), (km, k), (vm, v)):
            if layer not in graph.nodes:  # the quantizing matmul takes the layer's name
                quantizing.producer.name = layer.name
        changed = True
    return changed


__all__ = ["KV_QMAX", "P_LEVELS", "int8_attention", "row_scale", "score_scale"]
