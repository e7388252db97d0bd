"""Inlining of the elementwise blocks FuseTIR leaves around an anchor (bias reshapes, adds,
activations): each becomes part of its consumer, so a fused kernel is one loop nest instead of
one pass over memory per op."""

from __future__ import annotations

import contextlib

from tvm import s_tir, tirx

from edlc.schedules.analysis import Load, is_expensive, is_param, root_blocks


def is_identity_copy(block: s_tir.SBlock) -> bool:
    """`B[i, j, ...] = A[i, j, ...]` (maybe with a cast): free to inline anywhere."""
    store = block.body
    if not isinstance(store, tirx.BufferStore):
        return False
    value = store.value.value if isinstance(store.value, tirx.Cast) else store.value
    if not isinstance(value, Load) or len(value.indices) != len(store.indices):
        return False
    return all(a.same_as(b) for a, b in zip(value.indices, store.indices))


def inline_elementwise(sch: s_tir.Schedule, is_anchor) -> None:
    """Inline each spatial block that is neither a kernel output nor worth keeping.

    Kept: producers of an anchor (`is_anchor(rv)`) other than plain copies, since inlining a
    padding or a transform into the anchor's innermost loop would repeat it per multiply-add;
    and expensive blocks (exp, erf, ...) with several consumers, which would be recomputed.
    """
    func = sch.mod["main"]
    for rv in root_blocks(sch):
        block = sch.get(rv)
        if any(iv.iter_type != tirx.IterVar.DataPar for iv in block.iter_vars):
            continue
        store = block.body
        if not isinstance(store, tirx.BufferStore) or is_param(func, store.buffer):
            continue
        consumers = sch.get_consumers(rv)
        if not consumers:
            continue
        if len(consumers) > 1 and is_expensive(store.value):
            continue
        if any(is_anchor(c) for c in consumers) and not is_identity_copy(block):
            continue
        with contextlib.suppress(s_tir.ScheduleError):
            sch.compute_inline(rv)
