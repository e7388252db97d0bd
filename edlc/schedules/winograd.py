"""Schedules of the Winograd transforms (edlc.lower.winograd; the pass: edlc.passes.winograd).

Both are memory-bound: per tile position they read a few vectors of channels and write a few.
The rules keep channels in vector lanes, unroll the transform index (each arm of its Select
chain becomes straight-line code, the loads the arms share loaded once) and run the tile
positions in parallel:

    input:   parallel(tile, channel block)
               gather the padded (m+2)^2 tile of this channel block      <- vectorized
               e in (m+2)^2 (unrolled): V[e, tile, lanes] = (B^T d B)[e]  <- vectorized
    output:  parallel(n, tile row, tile column, channel block)
               i, j in m x m (unrolled): Y[.., lanes] = epilogue((A^T M A)[i, j] + bias)

The group's epilogue blocks (residual add, activation) are inlined into the output
transform first: one pass over the output.
"""

from __future__ import annotations

import math

from tvm import s_tir

from edlc.schedules.analysis import CPU, block_info, root_blocks
from edlc.schedules.elementwise import vector_widths

ANNOTATION = "edlc.winograd"


def blocks(sch: s_tir.Schedule) -> dict[str, object]:
    """The annotated Winograd blocks of the kernel: kind ("input" / "output") -> block rv."""
    found = {}
    for rv in root_blocks(sch):
        kind = sch.get(rv).annotations.get(ANNOTATION)
        if kind is not None:
            found[str(kind)] = rv
    return found


def _width(channels: int, cpu: CPU) -> int | None:
    return next((w for w in vector_widths(cpu) if channels % w == 0), None)


def _split_channels(sch, loop, channels: int, cpu: CPU):
    width = _width(channels, cpu)
    if width is None:
        return loop, None
    outer, inner = sch.split(loop, [None, width])
    return outer, inner


def _parallel(sch, loop, cpu: CPU) -> None:
    if cpu.cores > 1 and int(sch.get(loop).extent) > 1:
        sch.parallel(loop)


def _stage_at(sch, block, loop, width) -> None:
    """Compute a stage of the transform (the tile gather, the first matrix product) per
    iteration of `loop`: its loops unrolled but the channels, which run in vector lanes."""
    sch.compute_at(block, loop)
    loops = sch.get_loops(block)
    below = loops[len(loops) - len(sch.get(block).iter_vars):]
    for lp in below[1:-1]:
        sch.unroll(lp)
    if width is not None and int(sch.get(below[-1]).extent) == width:
        sch.vectorize(below[-1])


def _producer_chain(sch, rv) -> list:
    """The stages feeding `rv` inside the kernel, nearest first."""
    chain, frontier = [], [rv]
    while frontier:
        nxt = []
        for b in frontier:
            for producer in sch.get_producers(b):
                if producer not in chain:
                    chain.append(producer)
                    nxt.append(producer)
        frontier = nxt
    return chain


def schedule_input(sch: s_tir.Schedule, rv, cpu: CPU) -> None:
    info = block_info(sch, rv)
    e, p, c = info.loops
    a = math.isqrt(info.extents[0])
    width = _width(info.extents[2], cpu)
    e1, e2 = sch.split(e, [a, a])
    co, ci = _split_channels(sch, c, info.extents[2], cpu)
    sch.reorder(p, co, e1, e2, *([ci] if ci is not None else []))
    outer = sch.fuse(p, co)
    _parallel(sch, outer, cpu)
    rows, *gathers = _producer_chain(sch, rv)
    _stage_at(sch, rows, e1, width)  # B^T d, one row of it at a time: a small buffer
    for gather in gathers:  # the padded tile, per tile position
        _stage_at(sch, gather, outer, width)
    sch.unroll(e1)
    sch.unroll(e2)
    if ci is not None:
        sch.vectorize(ci)


def schedule_output(sch: s_tir.Schedule, rv, cpu: CPU) -> None:
    # the epilogue (residual add, activation) into the transform: one write of the output
    while True:
        consumers = sch.get_consumers(rv)
        if len(consumers) != 1:
            break
        try:
            sch.reverse_compute_inline(consumers[0])
        except s_tir.ScheduleError:
            break
    m = int(sch.get(rv).annotations["edlc.winograd_tile"])
    info = block_info(sch, rv)
    n, h, w, c = info.loops
    width = _width(info.extents[3], cpu)
    th, i = sch.split(h, [None, m])
    tw, j = sch.split(w, [None, m])
    co, ci = _split_channels(sch, c, info.extents[3], cpu)
    sch.reorder(n, th, tw, co, i, j, *([ci] if ci is not None else []))
    outer = sch.fuse(n, th, tw, co)
    _parallel(sch, outer, cpu)
    for stage in _producer_chain(sch, rv):  # A^T M, one row of it at a time
        _stage_at(sch, stage, i, width)
    sch.unroll(i)
    sch.unroll(j)
    if ci is not None:
        sch.vectorize(ci)


def apply(sch: s_tir.Schedule, cpu: CPU) -> bool:
    """Schedule the Winograd blocks of `sch` in place; False when it has none. Raises a
    ScheduleError where a step does not apply (the caller works on a copy)."""
    found = blocks(sch)
    if not found:
        return False
    if "input" in found:
        schedule_input(sch, found["input"], cpu)
    if "output" in found:
        schedule_output(sch, found["output"], cpu)
    return True


__all__ = ["apply", "blocks"]
