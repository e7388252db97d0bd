"""bfloat16 kernels: the one vector form TVM 0.27 cannot build.

TVM legalizes bfloat16 in two steps: arithmetic is done in float32 (BF16ComputeLegalize, before
vectorization), and bfloat16 buffers become uint16 (BF16StorageLegalize, after). A vectorized
store of a loop-invariant bfloat16 value (a reduction's initial value, a broadcast element)
falls between them: it stays a `bfloat16xN` broadcast, and the build fails with "dtype mismatch
on BufferStore". Such loops are unrolled instead (their stores of one constant cost little, and
LLVM may still merge them); every other vector loop keeps its vectors.
"""

from __future__ import annotations

import tvm_ffi
from tvm import tirx

from edlc.schedules.analysis import vars_in


def _invariant_bf16_store(loop: tirx.For) -> bool:
    stores: list = []
    tvm_ffi.structural_walk(loop.body, (tirx.BufferStore, stores.append))
    return any(str(s.buffer.dtype) == "bfloat16" and loop.loop_var not in vars_in(s.value)
               for s in stores)


def unroll_invariant_bf16_stores(func: tirx.PrimFunc) -> tirx.PrimFunc:
    """`func` with each vectorized loop that stores a loop-invariant bfloat16 value unrolled."""
    def rewrite(loop, mutator):
        loop = mutator.default_mutate(loop)
        if loop.kind != tirx.ForKind.VECTORIZED or not _invariant_bf16_store(loop):
            return loop
        return tirx.For(loop.loop_var, loop.min, loop.extent, tirx.ForKind.UNROLLED, loop.body,
                        loop.thread_binding, loop.annotations)

    stores: list = []
    tvm_ffi.structural_walk(func.body, (tirx.BufferStore, stores.append))
    if not any(str(s.buffer.dtype) == "bfloat16" for s in stores):
        return func
    return tvm_ffi.structural_mutate(func, (tirx.For, rewrite))
