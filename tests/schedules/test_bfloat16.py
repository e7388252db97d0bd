"""A vectorized store of a loop-invariant bfloat16 value (TVM 0.27 cannot legalize it) is
unrolled; every other loop keeps its vectors."""

import ml_dtypes
import numpy as np
import pytest
import tvm
from tvm.script import tirx as T

from edlc.schedules.bfloat16 import unroll_invariant_bf16_stores

TARGET = {"kind": "llvm"}


@T.prim_func
def fill(a: T.Buffer((16,), "bfloat16"), b: T.Buffer((16,), "bfloat16")):
    T.func_attr({"global_symbol": "main"})
    for i in T.vectorized(16):
        a[i] = T.bfloat16(1.5)
    for i in T.vectorized(16):
        b[i] = a[i] * T.bfloat16(2)


def _build(func):
    return tvm.tirx.build(tvm.IRModule({"main": func}), target=tvm.target.Target(TARGET))


def test_invariant_bfloat16_stores_are_unrolled_and_build():
    with pytest.raises(Exception, match="dtype mismatch on BufferStore"):
        _build(fill)  # if TVM builds this one day, unroll_invariant_bf16_stores can go
    fixed = unroll_invariant_bf16_stores(fill)
    assert "T.unroll(16)" in fixed.script() and "T.vectorized(16)" in fixed.script()
    a, b = (tvm.runtime.tensor(np.zeros(16, ml_dtypes.bfloat16)) for _ in range(2))
    _build(fixed)["main"](a, b)
    assert (a.numpy() == 1.5).all() and (b.numpy() == 3).all()


def test_other_functions_are_left_as_they_are():
    @T.prim_func
    def scale(a: T.Buffer((16,), "float32")):
        for i in T.vectorized(16):
            a[i] = T.float32(0)

    assert unroll_invariant_bf16_stores(scale).same_as(scale)
