"""Reductions that are not contractions: pooling, mean / sum, the max and sum of softmax, the
statistics of layer norm.

Each output element keeps its own sequential reduction (so results do not change), but the
reduction loops move outside a vector of neighbouring output elements: the vector lanes are
independent accumulators, and the outer output axes run in parallel.
"""

from __future__ import annotations

import math

from tvm import s_tir, tirx

from edlc.schedules.analysis import CPU, BlockInfo
from edlc.schedules.elementwise import PARALLEL_MIN_ELEMENTS, vector_widths, vectorizable


def apply(sch: s_tir.Schedule, info: BlockInfo, cpu: CPU) -> bool:
    store = info.store
    if store is None or info.block.init is None:
        return False
    if not all(isinstance(ix, tirx.Var) for ix in store.indices):
        return False
    ext = {v.name: e for v, e in zip(info.vars, info.extents)}
    loop = {v.name: lp for v, lp in zip(info.vars, info.loops)}
    out = [ix.name for ix in store.indices]
    reduce = [v.name for v in info.reduce]
    if set(out) != {v.name for v in info.spatial}:
        return False
    big = [v for v in out if ext[v] > 1]
    if not big:
        return False
    v = big[-1]
    width = next((w for w in vector_widths(cpu) if ext[v] % w == 0), None) \
        if vectorizable(info, {v}) else None
    if width is None:
        # keep the nest (and the running value in a register); parallelize its outer loops
        outer = [loop[n] for n in out]
        sch.reorder(*outer, *[loop[n] for n in reduce])
        par = sch.fuse(*outer[:-1]) if len(outer) > 2 else outer[0]
        if cpu.cores > 1 and math.prod(info.extents) >= PARALLEL_MIN_ELEMENTS and \
                int(sch.get(par).extent) > 1:
            sch.parallel(par)
        return True
    outer = [loop[n] for n in out if n != v]
    vo, inner = sch.split(loop[v], [None, width])
    outer.append(vo)
    sch.reorder(*outer, *[loop[n] for n in reduce], inner)
    par = sch.fuse(*outer) if len(outer) > 1 else outer[0]
    if cpu.cores > 1 and math.prod(info.extents) >= PARALLEL_MIN_ELEMENTS and \
            int(sch.get(par).extent) > 1:
        sch.parallel(par)
    sch.vectorize(inner)
    sch.decompose_reduction(info.rv, loop[reduce[0]])
    return True
