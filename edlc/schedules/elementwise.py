"""Fallback for spatial (elementwise, broadcast, transpose, padding, layout) blocks: vectorize
the contiguous inner loops and parallelize the rest, so no kernel stays a scalar
single-threaded loop nest."""

from __future__ import annotations

import math

from tvm import s_tir, tirx

from edlc.schedules.analysis import (
    CPU,
    BlockInfo,
    has_if_then_else,
    loads_in,
    vector_unsafe,
)

# below this many elements a parallel region costs more than it saves
PARALLEL_MIN_ELEMENTS = 1 << 16


def vector_widths(cpu: CPU) -> list[int]:
    return sorted({w for w in (cpu.lanes, cpu.lanes // 2, 4) if w >= 4}, reverse=True)


def stores_in_loop_order(info: BlockInfo) -> bool:
    """Whether the block writes its output at its loop vars in loop order, so that the
    innermost loops walk contiguous memory."""
    store = info.store
    if store is None:
        return False
    names = [v.name for v in info.vars]
    return (all(isinstance(ix, tirx.Var) for ix in store.indices)
            and [ix.name for ix in store.indices] == names)


def vectorizable(info: BlockInfo, lanes_over: set) -> bool:
    """Whether vectorizing over the vars `lanes_over` keeps the block vector code: TVM
    scalarizes a vectorized loop whose if_then_else (padding) condition varies across lanes,
    which is slower than a plain loop."""
    store = info.store
    return (store is not None and not has_if_then_else(store.value, lanes_over)
            and not vector_unsafe(store.value))


def transposed_axis(info: BlockInfo) -> int | None:
    """Position of the loop that is the innermost (contiguous) dim of the block's largest
    read, when that is not the block's innermost loop: a transpose."""
    loads = sorted(loads_in(info.store.value), key=lambda ld: -len(ld.indices))
    if not loads or not isinstance(loads[0].indices[-1], tirx.Var):
        return None
    names = [v.name for v in info.vars]
    last = loads[0].indices[-1].name
    if last not in names or last == names[-1]:
        return None
    return names.index(last)


def _tile_transpose(sch, info: BlockInfo, cpu: CPU, a: int) -> bool:
    """Walk a transpose in square tiles so that each cache line read is used whole."""
    loops, ext = list(info.loops), list(info.extents)
    width = next((w for w in vector_widths(cpu) if ext[-1] % w == 0 and ext[a] % w == 0), None)
    if width is None:
        return False
    ao, ai = sch.split(loops[a], [None, width])
    bo, bi = sch.split(loops[-1], [None, width])
    outer = [lp for k, lp in enumerate(loops[:-1]) if k != a] + [ao, bo]
    sch.reorder(*outer, ai, bi)
    par = sch.fuse(*outer)
    if cpu.cores > 1 and math.prod(ext) >= PARALLEL_MIN_ELEMENTS:
        sch.parallel(par)
    sch.vectorize(bi)
    return True


def apply(sch: s_tir.Schedule, info: BlockInfo, cpu: CPU) -> bool:
    loops, ext = list(info.loops), list(info.extents)
    total = math.prod(ext)
    if total <= 1:
        return False
    vector = None
    ordered = stores_in_loop_order(info)
    names = [v.name for v in info.vars]
    if ordered:
        a = transposed_axis(info)
        if a is not None and vectorizable(info, {names[a], names[-1]}) and \
                _tile_transpose(sch, info, cpu, a):
            return True
    if ordered:
        for width in vector_widths(cpu):
            size = 1
            for k in range(len(loops) - 1, -1, -1):
                size *= ext[k]
                if size % width == 0 and vectorizable(info, set(names[k:])):
                    inner = sch.fuse(*loops[k:]) if len(loops) - k > 1 else loops[k]
                    rest, vector = sch.split(inner, [None, width])
                    loops = loops[:k] + [rest]
                    break
            if vector is not None:
                break
    outer = sch.fuse(*loops) if len(loops) > 1 else loops[0]
    # a padding copy (a condition per element, scalar) pays for threads at a quarter the size
    minimum = PARALLEL_MIN_ELEMENTS // 4 if has_if_then_else(info.store.value) else PARALLEL_MIN_ELEMENTS
    if cpu.cores > 1 and total >= minimum:
        sch.parallel(outer)
    if vector is not None:
        sch.vectorize(vector)
    return True
