"""Lowering rules for ONNX Attention (opsets 23-25) and RotaryEmbedding (opset 23).

TVM's Attention converter implements the com.microsoft contrib op and TVM has no RotaryEmbedding
converter, so both are written out here in Relax ops. They follow onnx's reference
implementation step by step (it is what the backend conformance data is generated from):
scale both Q and K by sqrt(scale), softcap before the mask, fully masked query rows give zeros.
Shapes must be static (edlc binds them before lowering).
"""

from __future__ import annotations

import math

from edlc.lower import LowerContext, register_lowering

_SOFTMAX_DTYPES = {1: "float32", 10: "float16", 11: "float64", 16: "bfloat16"}
_HALF = ("float16", "bfloat16")


def _shape(x, what: str) -> tuple[int, ...]:
    """Static shape of a Relax expression; the rules below index and pad by these dims."""
    dims = getattr(x.ty.shape, "values", None)
    try:
        return tuple(int(d) for d in dims)
    except (TypeError, ValueError):
        raise ValueError(f"{what} needs a static shape, got {x.ty.shape} "
                         "(bind the model's input shapes)") from None


def _const(value: float | int, dtype: str):
    from tvm import relax

    return relax.const(value, dtype)


def _matmul(ctx: LowerContext, a, b):
    """numpy multiplies half-precision matrices with float32 sums, then rounds: do the same."""
    from tvm import relax

    dtype = a.ty.dtype
    if dtype in _HALF:
        return ctx.emit(relax.op.astype(relax.op.matmul(a, b, out_dtype="float32"), dtype))
    return ctx.emit(relax.op.matmul(a, b))


# ---- Attention ------------------------------------------------------------------------------

def _split_heads(ctx: LowerContext, x, heads: int | None, what: str):
    """(batch, seq, heads * size) -> (batch, heads, seq, size)."""
    from tvm import relax

    if heads is None or heads <= 0:
        raise ValueError("3D Attention inputs need the q_num_heads and kv_num_heads attributes")
    batch, seq, hidden = _shape(x, what)
    if hidden % heads:
        raise ValueError(f"{what} hidden size {hidden} is not a multiple of {heads} heads")
    x = relax.op.reshape(x, (batch, seq, heads, hidden // heads))
    return ctx.emit(relax.op.permute_dims(x, [0, 2, 1, 3]))


def _merge_heads(ctx: LowerContext, y):
    """(batch, heads, seq, size) -> (batch, seq, heads * size)."""
    from tvm import relax

    batch, heads, seq, size = _shape(y, "Attention output")
    y = relax.op.permute_dims(y, [0, 2, 1, 3])
    return ctx.emit(relax.op.reshape(y, (batch, seq, heads * size)))


def _key_distance(ctx: LowerContext, q_len: int, kv_len: int, offset):
    """(i + offset) - j for query i and key j: >= 0 means key j is not in query i's future.
    `offset` is an int (past length) giving shape (q, kv), or a per-batch int64 tensor
    (nonpad_kv_seqlen - q_len) giving shape (batch, 1, q, kv)."""
    from tvm import relax

    i = relax.op.reshape(relax.op.arange(0, q_len, 1, "int64"), (q_len, 1))
    j = relax.op.reshape(relax.op.arange(0, kv_len, 1, "int64"), (1, kv_len))
    if isinstance(offset, int):
        return ctx.emit(relax.op.subtract(relax.op.add(i, _const(offset, "int64")), j))
    (batch,) = _shape(offset, "nonpad_kv_seqlen")
    off = relax.op.reshape(offset, (batch, 1, 1))
    diff = relax.op.subtract(relax.op.add(i, off), j)
    return ctx.emit(relax.op.reshape(diff, (batch, 1, q_len, kv_len)))


def _and(ctx: LowerContext, a, b):
    from tvm import relax

    return b if a is None else ctx.emit(relax.op.logical_and(a, b))


def _pad_mask(ctx: LowerContext, mask, kv_len: int):
    """A mask shorter than the keys is padded with 'do not attend' (False / -inf)."""
    from tvm import relax

    shape = _shape(mask, "attn_mask")
    pad = kv_len - shape[-1]
    if pad < 0:
        raise ValueError(f"attn_mask covers {shape[-1]} keys, more than the {kv_len} keys")
    if pad == 0:
        return mask
    dtype = mask.ty.dtype
    fill = _const(False, "bool") if dtype == "bool" else _const(float("-inf"), dtype)
    filler = relax.op.broadcast_to(fill, (*shape[:-1], pad))  # (op.full fails to legalize)
    return ctx.emit(relax.op.concat([mask, filler], axis=-1))


def _attention_bias(ctx: LowerContext, node, mask, nonpad, q_len: int, kv_len: int,
                    past_len: int, dtype: str):
    """The additive bias (0 where attended, -inf where not, plus a float mask), or None.

    Every 'may not attend' rule (bool mask, causal, window, key padding) is folded into one
    boolean `allowed`; a float mask is the value added where allowed."""
    from tvm import relax

    attrs = node.attrs
    causal = bool(attrs.get("is_causal", 0))
    left, right = attrs.get("left_window_size", -1), attrs.get("right_window_size", -1)
    allowed = added = None
    if mask is not None:
        mask = _pad_mask(ctx, mask, kv_len)
        if mask.ty.dtype == "bool":
            allowed = mask
        else:
            added = mask if mask.ty.dtype == dtype else ctx.emit(relax.op.astype(mask, dtype))
    if causal or left >= 0 or right >= 0:
        # bottom-right alignment: the query block follows the past (or the valid cached) keys
        if nonpad is not None and past_len == 0:
            offset = ctx.emit(relax.op.subtract(nonpad, _const(q_len, "int64")))
        else:
            offset = past_len
        diff = _key_distance(ctx, q_len, kv_len, offset)
        if causal:
            allowed = _and(ctx, allowed, relax.op.greater_equal(diff, _const(0, "int64")))
        if left >= 0:
            allowed = _and(ctx, allowed, relax.op.less_equal(diff, _const(left, "int64")))
        if right >= 0:
            allowed = _and(ctx, allowed, relax.op.greater_equal(diff, _const(-right, "int64")))
    if nonpad is not None:
        (batch,) = _shape(nonpad, "nonpad_kv_seqlen")
        j = relax.op.reshape(relax.op.arange(0, kv_len, 1, "int64"), (1, kv_len))
        valid = relax.op.less(j, relax.op.reshape(nonpad, (batch, 1)))
        allowed = _and(ctx, allowed, relax.op.reshape(valid, (batch, 1, 1, kv_len)))
    if allowed is None:
        return added
    zero = _const(0.0, dtype) if added is None else added
    return ctx.emit(relax.op.where(allowed, zero, _const(float("-inf"), dtype)))


def _grouped_matmul(ctx: LowerContext, a, b):
    """a @ b per head, where each head of b serves a group of consecutive heads of a
    (grouped-query attention). Folding the group into a's rows saves copying K and V once
    per query head."""
    from tvm import relax

    batch, heads, rows, inner = _shape(a, "Attention operand")
    kv_heads, cols = _shape(b, "K/V")[1], _shape(b, "K/V")[3]
    if heads == kv_heads:
        return _matmul(ctx, a, b)
    if heads % kv_heads:
        raise ValueError(f"{heads} query heads are not a multiple of {kv_heads} key/value heads")
    a = ctx.emit(relax.op.reshape(a, (batch, kv_heads, heads // kv_heads * rows, inner)))
    return ctx.emit(relax.op.reshape(_matmul(ctx, a, b), (batch, heads, rows, cols)))


def _in_float32(ctx: LowerContext, fn, x):
    """fn(x) computed in float32 for half types, rounded once, as numpy's half ufuncs do."""
    from tvm import relax

    dtype = x.ty.dtype
    if dtype not in _HALF:
        return ctx.emit(fn(x))
    return ctx.emit(relax.op.astype(fn(relax.op.astype(x, "float32")), dtype))


def _softcap(ctx: LowerContext, x, cap: float, dtype: str):
    from tvm import relax

    scaled = ctx.emit(relax.op.divide(x, _const(cap, dtype)))
    return ctx.emit(relax.op.multiply(_in_float32(ctx, relax.op.tanh, scaled), _const(cap, dtype)))


def _softmax(ctx: LowerContext, x):
    """Softmax over the last axis. Half types are rounded after each step like numpy: sums in
    float32 for float16, in bfloat16 itself for bfloat16 (as ml_dtypes does)."""
    from tvm import relax

    dtype = x.ty.dtype
    if dtype not in _HALF:
        return ctx.emit(relax.op.nn.softmax(x, axis=-1))
    shifted = ctx.emit(relax.op.subtract(x, relax.op.max(x, axis=-1, keepdims=True)))
    e = _in_float32(ctx, relax.op.exp, shifted)
    if dtype == "float16":
        total = _in_float32(ctx, lambda t: relax.op.sum(t, axis=-1, keepdims=True), e)
    else:
        total = ctx.emit(relax.op.sum(e, axis=-1, keepdims=True))
    return ctx.emit(relax.op.divide(e, total))


def _masked_softmax(ctx: LowerContext, scores, bias, precision: str):
    """Softmax over keys; a row whose bias is all -inf (no key allowed) is zero, not NaN."""
    from tvm import relax

    if scores.ty.dtype != precision:
        scores = ctx.emit(relax.op.astype(scores, precision))
    probs = _softmax(ctx, scores)
    if bias is None:
        return probs
    # TVM's max starts from the lowest finite value, not -inf: count the non -inf entries
    open_keys = relax.op.not_equal(bias, _const(float("-inf"), bias.ty.dtype))
    any_open = relax.op.max(relax.op.astype(open_keys, "int32"), axis=-1, keepdims=True)
    empty_row = relax.op.equal(any_open, _const(0, "int32"))
    return ctx.emit(relax.op.where(empty_row, _const(0.0, precision), probs))


@register_lowering("Attention")
def attention(ctx: LowerContext, node, inputs):
    """Y, present_key, present_value, qk_matmul_output of ONNX Attention."""
    from tvm import relax

    q, k, v, mask, past_k, past_v, nonpad = (list(inputs) + [None] * 7)[:7]
    attrs = node.attrs
    rank = q.ty.ndim
    if (past_k is None) != (past_v is None):
        raise ValueError("past_key and past_value must be given together")
    if nonpad is not None and past_k is not None:
        raise ValueError("nonpad_kv_seqlen cannot be combined with past_key/past_value")
    if rank == 3:
        q = _split_heads(ctx, q, attrs.get("q_num_heads"), "Q")
        k = _split_heads(ctx, k, attrs.get("kv_num_heads"), "K")
        v = _split_heads(ctx, v, attrs.get("kv_num_heads"), "V")
    elif rank != 4:
        raise ValueError(f"Attention takes 3D or 4D Q/K/V, got rank {rank}")
    dtype = q.ty.dtype
    q_len, head_size = _shape(q, "Q")[2:]

    past_len = 0
    if past_k is not None:
        past_len = _shape(past_k, "past_key")[2]
        k = ctx.emit(relax.op.concat([past_k, k], axis=2))
        v = ctx.emit(relax.op.concat([past_v, v], axis=2))
    present_k, present_v = k, v
    kv_len = _shape(k, "K")[2]
    if nonpad is not None and nonpad.ty.dtype != "int64":
        nonpad = ctx.emit(relax.op.astype(nonpad, "int64"))
    bias = _attention_bias(ctx, node, mask, nonpad, q_len, kv_len, past_len, dtype)

    scale = attrs.get("scale")
    root = _const(math.sqrt(1.0 / math.sqrt(head_size) if scale is None else scale), dtype)
    qs = ctx.emit(relax.op.multiply(q, root))
    kt = ctx.emit(relax.op.permute_dims(relax.op.multiply(k, root), [0, 1, 3, 2]))
    qk = _grouped_matmul(ctx, qs, kt)
    softcap = attrs.get("softcap", 0.0)
    if softcap > 0:
        qk = _softcap(ctx, qk, softcap, dtype)
    scores = qk if bias is None else ctx.emit(relax.op.add(qk, bias))

    precision = _SOFTMAX_DTYPES.get(attrs.get("softmax_precision"), dtype)
    probs = _masked_softmax(ctx, scores, bias, precision)
    if precision != dtype:
        probs = ctx.emit(relax.op.astype(probs, dtype))
    y = _grouped_matmul(ctx, probs, v)
    if rank == 3:
        y = _merge_heads(ctx, y)

    mode = attrs.get("qk_matmul_output_mode", 0)
    if mode not in (0, 1, 2, 3):
        raise ValueError(f"qk_matmul_output_mode {mode} is not one of 0, 1, 2, 3")
    # modes 0 and 1 both give the product after softcap (onnx's reference does so)
    qk_out = {0: qk, 1: qk, 2: scores, 3: probs}[mode]
    return [y, present_k, present_v, qk_out][: len(node.outputs)]


# ---- RotaryEmbedding --------------------------------------------------------------------------

def _slice_last(ctx: LowerContext, x, begin: int, end: int, step: int = 1):
    from tvm import relax

    axis = x.ty.ndim - 1
    return ctx.emit(relax.op.strided_slice(x, [axis], [begin], [end], [step]))


@register_lowering("RotaryEmbedding")
def rotary_embedding(ctx: LowerContext, node, inputs):
    """Rotate the first rotary_embedding_dim features of each head by position-dependent angles.

    Works in the input's own layout: the per-(batch, position) cos/sin tables are reshaped to
    broadcast over heads rather than transposing the input."""
    from tvm import relax

    x, cos, sin, position_ids = (list(inputs) + [None] * 4)[:4]
    attrs = node.attrs
    shape = _shape(x, "RotaryEmbedding input")
    if len(shape) == 3:
        heads = attrs.get("num_heads", 0)
        if not heads or shape[2] % heads:
            raise ValueError("3D RotaryEmbedding input needs num_heads dividing the hidden size")
        batch, seq = shape[:2]
        x = ctx.emit(relax.op.reshape(x, (batch, seq, heads, shape[2] // heads)))
        table_shape = (batch, seq, 1)  # x is (batch, seq, heads, size)
    elif len(shape) == 4:
        batch, _, seq, _ = shape
        table_shape = (batch, 1, seq)  # x is (batch, heads, seq, size)
    else:
        raise ValueError(f"RotaryEmbedding takes a 3D or 4D input, got rank {len(shape)}")
    size = _shape(x, "RotaryEmbedding input")[3]
    dim = attrs.get("rotary_embedding_dim", 0) or size
    if dim % 2 or dim > size:
        raise ValueError(f"rotary_embedding_dim {dim} must be even and at most the head size {size}")
    half = dim // 2

    def table(cache):
        if position_ids is not None:
            cache = relax.op.take(cache, position_ids, axis=0)
        return ctx.emit(relax.op.reshape(cache, (*table_shape, half)))

    cos, sin = table(cos), table(sin)
    if attrs.get("interleaved", 0):
        x1, x2 = _slice_last(ctx, x, 0, dim, 2), _slice_last(ctx, x, 1, dim, 2)
    else:
        x1, x2 = _slice_last(ctx, x, 0, half), _slice_last(ctx, x, half, dim)
    real = ctx.emit(relax.op.subtract(relax.op.multiply(cos, x1), relax.op.multiply(sin, x2)))
    imag = ctx.emit(relax.op.add(relax.op.multiply(sin, x1), relax.op.multiply(cos, x2)))
    if attrs.get("interleaved", 0):
        pairs = relax.op.stack([real, imag], axis=-1)
        rotated = ctx.emit(relax.op.reshape(pairs, (*_shape(x1, "x1")[:-1], dim)))
    else:
        rotated = ctx.emit(relax.op.concat([real, imag], axis=-1))
    if dim < size:
        rotated = ctx.emit(relax.op.concat([rotated, _slice_last(ctx, x, dim, size)], axis=-1))
    if len(shape) == 3:
        rotated = ctx.emit(relax.op.reshape(rotated, shape))
    return rotated
