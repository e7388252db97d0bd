"""Lowering of the Winograd transforms the `winograd` pass creates (edlc.passes.winograd).

Each is a TE compute whose block carries the annotation "edlc.winograd" ("input" or
"output"), by which edlc.schedules.winograd finds it. The transform matrices are written into
the expressions, zero terms left out and +-1 coefficients as plain adds: a value is a chain of
Selects over the transform index, one arm per row, which the schedule unrolls so that each arm
is straight-line code (and the loads the arms share are loaded once).

- WinogradInput: the padded (m+2) x (m+2) tile of each position gathered into a small buffer
  (the padding test is per pixel, the same for all channels), then V[e, p, c] = (B^T d B)[e].
- WinogradOutput: Y[n, h, w, c] = (A^T M A)[h % m, w % m] over the products of the tile
  (h // m, w // m), plus the bias; the group's epilogue (residual add, activation) follows
  in the same kernel.
"""

from __future__ import annotations

from collections.abc import Sequence

from edlc.lower import LowerContext, register_lowering
from edlc.passes.winograd import matrices, tiles_of

ANNOTATION = "edlc.winograd"


def _combination(coeffs: Sequence[float], terms: Sequence, dtype: str):
    """sum(c * t) over the non-zero coefficients, +-1 as plain adds and subtracts."""
    from tvm import tirx

    out = None
    for c, t in zip(coeffs, terms):
        if c == 0:
            continue
        if abs(c) != 1:
            t = t * tirx.const(abs(float(c)), dtype)
        if out is None:
            out = t if c > 0 else -t
        elif c > 0:
            out = out + t
        else:
            out = out - t
    return out if out is not None else tirx.const(0.0, dtype)


def _by_index(index, arms: Sequence):
    """arms[index] as a chain of Selects (folded to one arm once `index` is a constant)."""
    from tvm import tirx

    out = arms[-1]
    for k in range(len(arms) - 2, -1, -1):
        out = tirx.Select(index == k, arms[k], out)
    return out


# TVM puts a kernel's buffers up to this size on the stack (runtime::kMaxStackAlloca)
STACK_BYTES = 1024


def _bytes(dtype: str) -> int:
    return max(1, int("".join(ch for ch in str(dtype) if ch.isdigit()) or 32) // 8)


def _row_groups(rows: int, row_bytes: int) -> list[tuple[int, int]]:
    """(first row, rows) of the fewest equal groups whose rows fit STACK_BYTES."""
    for count in range(rows, 0, -1):
        if rows % count == 0 and count * row_bytes < STACK_BYTES:
            return [(first, count) for first in range(0, rows, count)]
    return [(first, 1) for first in range(rows)]


def winograd_input(x, m: int, pads: Sequence[int], rows: int | None = None):
    """TE: NHWC `x` -> [a*a, rows, C], a = m + 2: a row per tile, then zero rows up to `rows`."""
    from tvm import te, tirx

    n, h, w, c = (int(d) for d in x.shape)
    top, left, bottom, right = (int(p) for p in pads)
    th, tw = tiles_of(h + top + bottom - 2, m), tiles_of(w + left + right - 2, m)
    a = m + 2
    dtype = x.dtype
    bt, _, _ = matrices(m)
    tiles_total = n * th * tw
    rows = rows or tiles_total

    def gather(first):
        def fn(p, i, j, ch):
            row = p // tw % th * m + first + i - top
            col = p % tw * m + j - left
            inside = tirx.all(p < tiles_total, row >= 0, row < h, col >= 0, col < w)
            return tirx.if_then_else(inside, x[p // (th * tw), row, col, ch],
                                     tirx.const(0.0, dtype))
        return fn

    # the padded tile, gathered in groups of rows that each fit a CPU kernel's stack (TVM
    # allocates a larger buffer on the heap, in every iteration of the parallel loop)
    groups = _row_groups(a, a * c * _bytes(dtype) if c <= 16 else a * 16 * _bytes(dtype))
    tiles = [te.compute((rows, count, a, c), gather(first), name=f"winograd_tile{k}")
             for k, (first, count) in enumerate(groups)]

    def tile(p, i, j, ch):
        k = next(k for k, (first, count) in enumerate(groups) if first <= i < first + count)
        return tiles[k][p, i - groups[k][0], j, ch]

    # B^T d: row e1 of the tile's transform, per column j
    half = te.compute((rows, a, a, c), lambda p, e1, j, ch: _by_index(
        e1, [_combination(bt[r], [tile(p, i, j, ch) for i in range(a)], dtype) for r in range(a)]),
        name="winograd_input_rows")

    def transform(e, p, ch):  # (B^T d) B: column e2 of row e1
        e1, e2 = e // a, e % a
        return _by_index(e2, [_combination(bt[r], [half[p, e1, j, ch] for j in range(a)], dtype)
                              for r in range(a)])

    return te.compute((a * a, rows, c), transform, name="winograd_input",
                      attrs={ANNOTATION: "input"})


def winograd_output(prods, bias, m: int, size: Sequence[int]):
    """TE: [a*a, rows, C] (+ bias [C]) -> NHWC [N, OH, OW, C] (`size`: N, OH, OW); rows
    beyond the tiles are padding."""
    from tvm import te

    e_total, p_total, c = (int(d) for d in prods.shape)
    a = m + 2
    n, oh, ow = (int(s) for s in size)
    th, tw = tiles_of(oh, m), tiles_of(ow, m)
    dtype = prods.dtype
    _, _, at = matrices(m)

    # A^T M: output row r of the tile, per column j
    half = te.compute((n * th * tw, m, a, c), lambda p, r, j, ch: _by_index(
        r, [_combination(at[k], [prods[i * a + j, p, ch] for i in range(a)], dtype)
            for k in range(m)]), name="winograd_output_rows")

    def transform(b, y, x, ch):  # (A^T M) A: output column x % m of row y % m
        p = b * th * tw + y // m * tw + x // m
        value = _by_index(x % m, [_combination(at[k], [half[p, y % m, j, ch] for j in range(a)],
                                               dtype) for k in range(m)])
        return value + bias[ch] if bias is not None else value

    assert e_total == a * a
    return te.compute((n, oh, ow, c), transform, name="winograd_output",
                      attrs={ANNOTATION: "output", "edlc.winograd_tile": m})


@register_lowering("WinogradInput", "edlc")
def lower_input(ctx: LowerContext, node, inputs):
    rows = node.attrs.get("rows")
    return ctx.bb.emit_te(winograd_input, inputs[0], int(node.attrs["tile"]),
                          [int(p) for p in node.attrs["pads"]], int(rows) if rows else None,
                          primfunc_name_hint="winograd_input")


@register_lowering("WinogradOutput", "edlc")
def lower_output(ctx: LowerContext, node, inputs):
    bias = inputs[1] if len(inputs) > 1 else None
    return ctx.bb.emit_te(winograd_output, inputs[0], bias, int(node.attrs["tile"]),
                          [int(s) for s in node.attrs["size"]], primfunc_name_hint="winograd_output")
