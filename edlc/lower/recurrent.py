"""Lowering rules for ONNX's recurrent layers: RNN, GRU and LSTM.

TVM has no converter for them, and Relax has no recurrent op, so each layer is unrolled over its
(static) sequence length into plain Relax ops. Per direction, the input projection X·Wᵀ + Wb is
one matmul over all time steps; each step then adds H·Rᵀ and applies the cell's gates.

`sequence_lens` masks the steps t >= len[b] of batch entry b: the state is carried unchanged
and Y is zero there, as ONNX requires. The reverse direction then starts at len[b] - 1, since
every step before it is masked. A constant `sequence_lens` gives constant masks (none at all
when every sequence is full length).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from tvm import relax, tirx

from edlc.errors import LoweringError
from edlc.ir.graph import Node
from edlc.lower import LowerContext, register_lowering

Act = Callable[[relax.Expr], relax.Expr]


@dataclass(frozen=True)
class _CellKind:
    gates: int  # gate blocks stacked in W and R: RNN 1, GRU 3 (z, r, h), LSTM 4 (i, o, f, c)
    default_acts: tuple[str, ...]  # activations of one direction (f; f, g; f, g, h)
    states: int  # 1 (H) or 2 (H, C)


_KINDS = {
    "RNN": _CellKind(1, ("Tanh",), 1),
    "GRU": _CellKind(3, ("Sigmoid", "Tanh"), 1),
    "LSTM": _CellKind(4, ("Sigmoid", "Tanh", "Tanh"), 2),
}

# Activations: (uses alpha, uses beta, default alpha, default beta). Defaults follow the ONNX
# ops of the same name; alpha/beta lists are consumed in order by the activations that use them.
_ACT_PARAMS = {
    "relu": (False, False, 0.0, 0.0),
    "tanh": (False, False, 0.0, 0.0),
    "sigmoid": (False, False, 0.0, 0.0),
    "affine": (True, True, 1.0, 0.0),
    "leakyrelu": (True, False, 0.01, 0.0),
    "thresholdedrelu": (True, False, 1.0, 0.0),
    "scaledtanh": (True, True, 1.0, 1.0),
    "hardsigmoid": (True, True, 0.2, 0.5),
    "elu": (True, False, 1.0, 0.0),
    "softsign": (False, False, 0.0, 0.0),
    "softplus": (False, False, 0.0, 0.0),
}


def _activation(name: str, alpha: float, beta: float, dtype: str) -> Act:
    """The Relax expression builder of one ONNX recurrent activation."""
    op = relax.op

    def c(v: float) -> relax.Expr:
        return relax.const(v, dtype)

    table: dict[str, Act] = {
        "relu": op.nn.relu,
        "tanh": op.tanh,
        "sigmoid": op.sigmoid,
        "affine": lambda x: op.add(op.multiply(c(alpha), x), c(beta)),
        "leakyrelu": lambda x: op.where(op.greater_equal(x, c(0)), x, op.multiply(c(alpha), x)),
        "thresholdedrelu": lambda x: op.where(op.greater(x, c(alpha)), x, c(0)),
        "scaledtanh": lambda x: op.multiply(c(alpha), op.tanh(op.multiply(c(beta), x))),
        "hardsigmoid": lambda x: op.maximum(
            op.minimum(op.add(op.multiply(c(alpha), x), c(beta)), c(1)), c(0)),
        "elu": lambda x: op.where(
            op.greater_equal(x, c(0)), x, op.multiply(c(alpha), op.subtract(op.exp(x), c(1)))),
        "softsign": lambda x: op.divide(x, op.add(c(1), op.abs(x))),
        "softplus": op.nn.softplus,
    }
    return table[name]


def _activations(node: Node, kind: _CellKind, num_dir: int, dtype: str) -> list[list[Act]]:
    """Per direction, the cell's activation functions (f[, g[, h]])."""
    per_dir = len(kind.default_acts)
    names = node.attrs.get("activations") or list(kind.default_acts) * num_dir
    if len(names) != per_dir * num_dir:
        raise LoweringError(f"node '{node.name}' ({node.op}): expected {per_dir * num_dir} "
                            f"activations, got {len(names)}")
    alphas = iter(node.attrs.get("activation_alpha") or [])
    betas = iter(node.attrs.get("activation_beta") or [])
    acts = []
    for name in names:
        key = name.lower()
        if key not in _ACT_PARAMS:
            raise LoweringError(f"node '{node.name}' ({node.op}): unknown activation '{name}'")
        uses_alpha, uses_beta, alpha, beta = _ACT_PARAMS[key]
        alpha = next(alphas, alpha) if uses_alpha else alpha
        beta = next(betas, beta) if uses_beta else beta
        acts.append(_activation(key, float(alpha), float(beta), dtype))
    return [acts[d * per_dir:(d + 1) * per_dir] for d in range(num_dir)]


# ---- small Relax helpers ------------------------------------------------------------------------
def _dims(e: relax.Expr) -> list:
    """Static dims as ints, symbolic ones as PrimExprs."""
    shape = e.ty.shape
    if shape is None or not hasattr(shape, "values"):
        raise LoweringError("recurrent layers need inputs of known rank and shape")
    return [int(d) if isinstance(d, tirx.IntImm) else d for d in shape.values]


def _split(ctx: LowerContext, x: relax.Expr, parts: int | list[int], axis: int) -> list[relax.Expr]:
    """relax split as a list (split into one part gives the tensor itself, not a tuple)."""
    if parts == 1:
        return [x]
    t = ctx.emit(relax.op.split(x, parts, axis=axis))
    n = parts if isinstance(parts, int) else len(parts) + 1
    return [ctx.emit(relax.TupleGetItem(t, i)) for i in range(n)]


def _pick(ctx: LowerContext, x: relax.Expr, d: int) -> relax.Expr:
    """x[d] along axis 0."""
    s = relax.op.strided_slice(x, axes=[0], begin=[d], end=[d + 1])
    return ctx.emit(relax.op.squeeze(s, axis=[0]))


def _clip(x: relax.Expr, clip: float | None, dtype: str) -> relax.Expr:
    if clip is None:
        return x
    lo, hi = relax.const(-clip, dtype), relax.const(clip, dtype)
    return relax.op.maximum(relax.op.minimum(x, hi), lo)


# ---- the layer ----------------------------------------------------------------------------------
@dataclass
class _Direction:
    """One direction's weights, with the input projection of every time step precomputed."""

    xw: list[relax.Expr]  # per time step: X_t·Wᵀ + biases, [batch, gates*hidden]
    r_t: relax.Expr  # Rᵀ, [hidden, gates*hidden] (GRU: the z and r gates only)
    r_h: relax.Expr | None  # GRU: Rhᵀ, used on r ⊙ H (or with r applied after it)
    rb_h: relax.Expr | None  # GRU: Rbh, kept out of the projection for the same reason
    peep: list[relax.Expr] | None  # LSTM: P split into (i, o, f)
    init: list[relax.Expr]  # H0 (and C0), [batch, hidden]
    acts: list[Act]
    reverse: bool


@dataclass
class _Layer:
    ctx: LowerContext
    node: Node
    kind: _CellKind
    hidden: int
    seq: int
    batch: object  # int or PrimExpr
    dtype: str
    clip: float | None

    def emit(self, e: relax.Expr) -> relax.Expr:
        return self.ctx.emit(e)

    def const(self, v: float) -> relax.Expr:
        return relax.const(v, self.dtype)

    def zeros(self) -> relax.Expr:
        return self.emit(relax.op.zeros(relax.ShapeExpr([self.batch, self.hidden]), self.dtype))

    def act(self, f: Act, x: relax.Expr) -> relax.Expr:
        return self.emit(f(_clip(x, self.clip, self.dtype)))


def _bias_parts(layer: _Layer, b: relax.Expr | None, d: int
                ) -> tuple[relax.Expr | None, relax.Expr | None]:
    """(bias added to the input projection, GRU's Rbh) for direction d."""
    if b is None:
        return None, None
    gh = layer.kind.gates * layer.hidden
    wb, rb = _split(layer.ctx, _pick(layer.ctx, b, d), 2, axis=0)
    if layer.node.op != "GRU":
        return layer.emit(relax.op.add(wb, rb)), None
    rb_zr, rb_h = _split(layer.ctx, rb, [gh - layer.hidden], axis=0)
    zeros_h = relax.op.zeros(relax.ShapeExpr([layer.hidden]), layer.dtype)
    return layer.emit(relax.op.add(wb, relax.op.concat([rb_zr, zeros_h], axis=0))), rb_h


def _direction(layer: _Layer, x: relax.Expr, inputs: list, d: int, acts: list[Act],
               reverse: bool) -> _Direction:
    ctx = layer.ctx
    w, r, b = inputs[1], inputs[2], inputs[3] if len(inputs) > 3 else None
    w_t = ctx.emit(relax.op.permute_dims(_pick(ctx, w, d), [1, 0]))
    r_t = ctx.emit(relax.op.permute_dims(_pick(ctx, r, d), [1, 0]))
    r_h = None
    if layer.node.op == "GRU":
        r_t, r_h = _split(ctx, r_t, [2 * layer.hidden], axis=1)
    bias, rb_h = _bias_parts(layer, b, d)
    proj = relax.op.matmul(x, w_t)
    proj = ctx.emit(relax.op.add(proj, bias) if bias is not None else proj)
    xw = [ctx.emit(relax.op.squeeze(s, axis=[0])) for s in _split(ctx, proj, layer.seq, axis=0)]
    init = []
    for i in range(layer.kind.states):  # initial_h is input 5, initial_c input 6
        given = inputs[5 + i] if len(inputs) > 5 + i else None
        init.append(_pick(ctx, given, d) if given is not None else layer.zeros())
    p = inputs[7] if len(inputs) > 7 else None
    peep = _split(ctx, _pick(ctx, p, d), 3, axis=0) if p is not None else None
    return _Direction(xw, r_t, r_h, rb_h, peep, init, acts, reverse)


# ---- cells: one time step, (x·Wᵀ + b, state) -> new state --------------------------------------
def _rnn_cell(layer: _Layer, dr: _Direction, xw: relax.Expr, state: list) -> list:
    (h,) = state
    g = relax.op.add(xw, relax.op.matmul(h, dr.r_t))
    return [layer.act(dr.acts[0], g)]


def _gru_cell(layer: _Layer, dr: _Direction, xw: relax.Expr, state: list) -> list:
    """ONNX GRU: z and r gates, then the candidate h with linear_before_reset as ONNX defines."""
    (h,) = state
    op, hid = relax.op, layer.hidden
    f, g = dr.acts
    xw_zr, xw_h = _split(layer.ctx, xw, [2 * hid], axis=1)
    z, r = _split(layer.ctx, layer.emit(op.add(xw_zr, op.matmul(h, dr.r_t))), 2, axis=1)
    z, r = layer.act(f, z), layer.act(f, r)
    rb = dr.rb_h if dr.rb_h is not None else layer.const(0)
    if layer.node.attrs.get("linear_before_reset", 0):
        rec = op.multiply(r, op.add(op.matmul(h, dr.r_h), rb))
    else:
        rec = op.add(op.matmul(layer.emit(op.multiply(r, h)), dr.r_h), rb)
    cand = layer.act(g, op.add(xw_h, rec))
    # H = (1 - z) * cand + z * h
    keep = op.multiply(z, h)
    return [layer.emit(op.add(op.multiply(op.subtract(layer.const(1), z), cand), keep))]


def _lstm_cell(layer: _Layer, dr: _Direction, xw: relax.Expr, state: list) -> list:
    """ONNX LSTM with optional peepholes (i, f on C_{t-1}; o on C_t) and input_forget."""
    h, c = state
    op = relax.op
    f, g, hact = dr.acts
    gates = layer.emit(op.add(xw, op.matmul(h, dr.r_t)))
    i, o, fg, cc = _split(layer.ctx, gates, 4, axis=1)
    if dr.peep is not None:
        p_i, _, p_f = dr.peep
        i, fg = op.add(i, op.multiply(p_i, c)), op.add(fg, op.multiply(p_f, c))
    i = layer.act(f, i)
    if layer.node.attrs.get("input_forget", 0):
        fg = layer.emit(op.subtract(layer.const(1), i))
    else:
        fg = layer.act(f, fg)
    cc = layer.act(g, cc)
    c_new = layer.emit(op.add(op.multiply(fg, c), op.multiply(i, cc)))
    if dr.peep is not None:
        o = op.add(o, op.multiply(dr.peep[1], c_new))
    o = layer.act(f, o)
    h_new = layer.emit(op.multiply(o, hact(c_new)))
    return [h_new, c_new]


_CELLS = {"RNN": _rnn_cell, "GRU": _gru_cell, "LSTM": _lstm_cell}


# ---- time loop, masks, outputs ------------------------------------------------------------------
def _step_masks(layer: _Layer, lens_value, lens: relax.Expr | None) -> list[relax.Expr | None]:
    """Per time step, a [batch, 1] bool mask of the entries still running (None: all are)."""
    if lens is None:
        return [None] * layer.seq
    if lens_value is not None and lens_value.is_constant:
        arr = np.asarray(lens_value.const).reshape(-1)
        masks: list[relax.Expr | None] = []
        for t in range(layer.seq):
            m = t < arr
            masks.append(None if m.all() else relax.const(m.reshape(-1, 1)))
        return masks
    lens = layer.emit(relax.op.expand_dims(lens, axis=1))
    dtype = str(lens.ty.dtype)
    return [layer.emit(relax.op.less(relax.const(t, dtype), lens)) for t in range(layer.seq)]


def _run_direction(layer: _Layer, dr: _Direction, masks: Sequence[relax.Expr | None]
                   ) -> tuple[list[relax.Expr], list[relax.Expr]]:
    """Unroll one direction: Y's per-step H in time order, and the final state."""
    cell = _CELLS[layer.node.op]
    state = list(dr.init)
    ys: list[relax.Expr | None] = [None] * layer.seq
    order = range(layer.seq - 1, -1, -1) if dr.reverse else range(layer.seq)
    for t in order:
        new = cell(layer, dr, dr.xw[t], state)
        m = masks[t]
        if m is None:
            state, ys[t] = new, new[0]
            continue
        state = [layer.emit(relax.op.where(m, n, s)) for n, s in zip(new, state)]
        ys[t] = layer.emit(relax.op.where(m, new[0], layer.const(0)))
    return ys, state


def _wanted(node: Node, i: int) -> bool:
    return i < len(node.outputs) and node.outputs[i].name != ""


def _lower_recurrent(ctx: LowerContext, node: Node, inputs: list) -> list[relax.Expr]:
    kind = _KINDS[node.op]
    x = inputs[0]
    layout = int(node.attrs.get("layout", 0))
    if layout:  # batch-major: work time-major inside
        x = ctx.emit(relax.op.permute_dims(x, [1, 0, 2]))
        inputs = list(inputs)
        for i in (5, 6):
            if len(inputs) > i and inputs[i] is not None:
                inputs[i] = ctx.emit(relax.op.permute_dims(inputs[i], [1, 0, 2]))
    seq, batch, _ = _dims(x)
    if not isinstance(seq, int):
        raise LoweringError(f"node '{node.name}' ({node.op}): the sequence length must be static "
                            "to unroll; bind the input shapes")
    direction = node.attrs.get("direction", "forward")
    if direction not in ("forward", "reverse", "bidirectional"):
        raise LoweringError(f"node '{node.name}' ({node.op}): unknown direction '{direction}'")
    num_dir = 2 if direction == "bidirectional" else 1
    hidden = int(node.attrs.get("hidden_size") or _dims(inputs[2])[-1])
    dtype = str(x.ty.dtype)
    clip = node.attrs.get("clip")
    clip = None if clip is None else float(clip)
    layer = _Layer(ctx, node, kind, hidden, seq, batch, dtype, clip)
    acts = _activations(node, kind, num_dir, dtype)
    lens_value = node.inputs[4] if len(node.inputs) > 4 else None
    masks = _step_masks(layer, lens_value, inputs[4] if len(inputs) > 4 else None)

    ys, finals = [], []
    for d in range(num_dir):
        reverse = direction == "reverse" or d == 1
        dr = _direction(layer, x, inputs, d, acts[d], reverse)
        y, final = _run_direction(layer, dr, masks)
        ys.append(y)
        finals.append(final)
    return _outputs(layer, node, ys, finals, layout)


def _outputs(layer: _Layer, node: Node, ys: list, finals: list, layout: int) -> list[relax.Expr]:
    """Y [seq, dirs, batch, hidden], Y_h and Y_c [dirs, batch, hidden]; batch first if layout=1."""
    emit, op = layer.emit, relax.op
    outs: list[relax.Expr] = []
    placeholder = layer.const(0)  # for outputs the node omits
    if _wanted(node, 0):
        y = emit(op.stack([emit(op.stack(y, axis=0)) for y in ys], axis=1))
        outs.append(emit(op.permute_dims(y, [2, 0, 1, 3])) if layout else y)
    else:
        outs.append(placeholder)
    for s in range(layer.kind.states):
        if not _wanted(node, 1 + s):
            outs.append(placeholder)
            continue
        st = emit(op.stack([f[s] for f in finals], axis=0))
        outs.append(emit(op.permute_dims(st, [1, 0, 2])) if layout else st)
    return outs[:max(len(node.outputs), 1)]


@register_lowering("RNN")
def lower_rnn(ctx: LowerContext, node: Node, inputs: list) -> list[relax.Expr]:
    return _lower_recurrent(ctx, node, inputs)


@register_lowering("GRU")
def lower_gru(ctx: LowerContext, node: Node, inputs: list) -> list[relax.Expr]:
    return _lower_recurrent(ctx, node, inputs)


@register_lowering("LSTM")
def lower_lstm(ctx: LowerContext, node: Node, inputs: list) -> list[relax.Expr]:
    return _lower_recurrent(ctx, node, inputs)
