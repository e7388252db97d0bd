"""If, Loop and Scan lowered by edlc.lower.control_flow, checked against onnxruntime."""

from __future__ import annotations

import numpy as np
import pytest

import edlc
from edlc.errors import LoweringError
from tests.conftest import ort_run, parse

RTOL, ATOL = 1e-4, 1e-5


def _check(module, model, feeds: dict) -> None:
    got = module.run(feeds)
    want = ort_run(model, feeds)
    assert sorted(got) == sorted(want)
    for name, w in want.items():
        assert got[name].shape == w.shape, name
        assert got[name].dtype == w.dtype, name
        np.testing.assert_allclose(got[name], w, rtol=RTOL, atol=ATOL, err_msg=name)


IF_RUNTIME = """
<ir_version: 8, opset_import: ["" : 17]>
g (bool c, float[4] x, float[4] w) => (float[4] y, float[4] z) {
  u = Mul(x, w)
  y, z = If (c) <
    then_branch = then_g () => (float[4] a, float[4] b) {
      a = Add(u, w)
      k = Constant <value = float {2}> ()
      b = Mul(a, k)
    },
    else_branch = else_g () => (float[4] a2, float[4] b2) {
      a2 = Sub(x, w)
      b2 = If (c) <
        then_branch = t2 () => (float[4] never) { never = Neg(x) },
        else_branch = e2 () => (float[4] inner) { inner = Relu(a2) }
      >
    }
  >
}
"""


def test_if_runtime_condition_both_branches(rng):
    """One compiled module, run on a true and a false condition; branches read outer values
    (u, w, x) and the else branch holds a nested If."""
    model = parse(IF_RUNTIME)
    module = edlc.compile(model, target="x86")
    x, w = rng.standard_normal((2, 4)).astype(np.float32)
    for c in (True, False):
        _check(module, model, {"c": np.array(c), "x": x, "w": w})


IF_CONSTANT = """
<ir_version: 8, opset_import: ["" : 17]>
g (float[3] x) => (float[3] y) {
  two = Constant <value = int64 {2}> ()
  three = Constant <value = int64 {3}> ()
  c = Less(two, three)
  y = If (c) <
    then_branch = t () => (float[3] a) { a = Exp(x) },
    else_branch = e () => (float[3] b) { b = Neg(x) }
  >
}
"""


def test_if_constant_condition_inlines_the_taken_branch(rng):
    model = parse(IF_CONSTANT)
    module = edlc.compile(model, target="x86")
    _check(module, model, {"x": rng.standard_normal(3).astype(np.float32)})


LOOP = """
<ir_version: 8, opset_import: ["" : 17]>
g (float[2] x, bool c, float[2] w) => (float[2] y, float[N, 2] s) {
  m = Constant <value = int64 {4}> ()
  y, s = Loop (m, c, x) <body = body (int64 i, bool cin, float[2] xin)
                                    => (bool cout, float[2] xout, float[2] sout) {
     cout = Identity(cin)
     f = Cast <to = 1> (i)
     t = Mul(w, f)
     xout = Add(xin, t)
     sout = Mul(xout, xout)
  }>
}
"""


def test_loop_constant_trip_count_carried_value_and_scan_output(rng):
    """The body reads the iteration number and an outer value; the initial condition is a
    run-time input, so false gives zero iterations and an empty scan output."""
    model = parse(LOOP)
    module = edlc.compile(model, target="x86")
    x, w = rng.standard_normal((2, 2)).astype(np.float32)
    for c in (True, False):
        _check(module, model, {"x": x, "c": np.array(c), "w": w})


LOOP_NO_COND = """
<ir_version: 8, opset_import: ["" : 17]>
g (float[2] x) => (float[2] y, float[3, 2] s, float[3, 1] idx) {
  m = Constant <value = int64 {3}> ()
  y, s, idx = Loop (m, , x) <body = body (int64 i, bool cin, float[2] xin)
                 => (bool cout, float[2] xout, float[2] sout, float[1] iout) {
     cout = Constant <value = bool {1}> ()
     two = Constant <value = int64 {2}> ()
     odd = Mod(i, two)
     one = Constant <value = int64 {1}> ()
     is_odd = Equal(odd, one)
     xout = If (is_odd) <
       then_branch = t () => (float[2] a) { a = Mul(xin, xin) },
       else_branch = e () => (float[2] b) { b = Add(xin, xin) }
     >
     sout = Identity(xin)
     f = Cast <to = 1> (i)
     ax = Constant <value = int64[1] {0}> ()
     iout = Unsqueeze(f, ax)
  }>
}
"""


def test_loop_without_condition_and_if_on_the_iteration_number(rng):
    model = parse(LOOP_NO_COND)
    module = edlc.compile(model, target="x86")
    _check(module, model, {"x": rng.standard_normal(2).astype(np.float32)})


LOOP_EARLY_EXIT = """
<ir_version: 8, opset_import: ["" : 17]>
g (float[3] x, float limit) => (float[3] y, float[K, 3] s) {
  m = Constant <value = int64 {6}> ()
  t = Constant <value = bool {1}> ()
  y, s = Loop (m, t, x) <body = body (int64 i, bool cin, float[3] xin)
                                    => (bool cout, float[3] xout, float[3] sout) {
     k = Constant <value = float {1.5}> ()
     xout = Mul(xin, k)
     total = ReduceSum <keepdims = 0> (xout)
     cout = Less(total, limit)
     sout = Identity(xout)
  }>
}
"""


@pytest.mark.parametrize("limit", [0.0, 5.0, 1e6])
def test_loop_data_dependent_exit(limit):
    """The body's condition depends on data: the loop stops after 1, some, or all 6 steps."""
    model = parse(LOOP_EARLY_EXIT)
    module = edlc.compile(model, target="x86")
    _check(module, model, {"x": np.array([0.5, 0.25, 1.0], np.float32),
                           "limit": np.array(limit, np.float32)})


LOOP_CONST = """
<ir_version: 8, opset_import: ["" : 17]>
g (float[2] x) => (float[2] y, float[N, 2] s) {
  m = Constant <value = int64 {M}> ()
  c = Constant <value = bool {C}> ()
  y, s = Loop (m, c, x) <body = body (int64 i, bool cin, float[2] xin)
                                    => (bool cout, float[2] xout, float[2] sout) {
     cout = Identity(cin)
     xout = Neg(xin)
     sout = Identity(xout)
  }>
}
"""


@pytest.mark.parametrize("trip,cond", [(0, 1), (3, 0)])
def test_loop_zero_iterations(trip, cond):
    """No iteration runs: the carried value passes through and the scan output is empty."""
    model = parse(LOOP_CONST.replace("{M}", f"{{{trip}}}").replace("{C}", f"{{{cond}}}"))
    module = edlc.compile(model, target="x86")
    _check(module, model, {"x": np.array([1.0, 2.0], np.float32)})


def test_loop_runtime_trip_count_is_a_clear_error():
    model = parse("""
    <ir_version: 8, opset_import: ["" : 17]>
    g (int64 m, float[2] x) => (float[2] y) {
      y = Loop (m, , x) <body = body (int64 i, bool cin, float[2] xin)
                                      => (bool cout, float[2] xout) {
         cout = Identity(cin)
         xout = Neg(xin)
      }>
    }
    """)
    with pytest.raises(LoweringError, match="run-time trip count is not supported yet"):
        edlc.compile(model, target="x86")


SCAN = """
<ir_version: 8, opset_import: ["" : 17]>
g (float[2] w, float[2] s0, float[3] p0, float[4, 2] a, float[3, 4] b)
  => (float[2] s, float[3] p, float[4, 2] ys, float[3, 4] zs) {
  s, p, ys, zs = Scan (s0, p0, a, b) <
    num_scan_inputs = 2,
    scan_input_axes = [0, -1],
    scan_input_directions = [0, 1],
    scan_output_axes = [0, 1],
    scan_output_directions = [1, 0],
    body = body (float[2] si, float[3] pi, float[2] ai, float[3] bi)
                 => (float[2] so, float[3] po, float[2] yo, float[3] zo) {
      so = Add(si, ai)
      po = Mul(pi, bi)
      yo = Mul(so, w)
      zo = Sub(po, bi)
    }
  >
}
"""


def test_scan_directions_and_axes(rng):
    """Two states, a forward input on axis 0 and a reverse one on its last axis, a reversed
    scan output and one stacked on axis 1; the body reads an outer value."""
    model = parse(SCAN)
    module = edlc.compile(model, target="x86")
    feeds = {
        "w": rng.standard_normal(2).astype(np.float32),
        "s0": rng.standard_normal(2).astype(np.float32),
        "p0": rng.standard_normal(3).astype(np.float32),
        "a": rng.standard_normal((4, 2)).astype(np.float32),
        "b": rng.standard_normal((3, 4)).astype(np.float32),
    }
    _check(module, model, feeds)


def test_scan_opset8_batched(rng):
    model = parse("""
    <ir_version: 4, opset_import: ["" : 8]>
    g (float[2, 3] s0, float[2, 4, 3] x) => (float[2, 3] s, float[2, 4, 3] ys) {
      s, ys = Scan (, s0, x) <num_scan_inputs = 1, directions = [1],
        body = body (float[3] si, float[3] xi) => (float[3] so, float[3] yo) {
          so = Add(si, xi)
          yo = Mul(so, xi)
        }>
    }
    """)
    module = edlc.compile(model, target="x86")
    feeds = {"s0": rng.standard_normal((2, 3)).astype(np.float32),
             "x": rng.standard_normal((2, 4, 3)).astype(np.float32)}
    _check(module, model, feeds)


def test_two_ifs_with_intermediate_values_in_the_taken_branch():
    """TVM's KillAfterLastUse freed storage a later branch allocated from (a segfault)."""
    model = parse("""
    <ir_version: 8, opset_import: ["" : 17]>
    g (bool c, float[4] x) => (float[4] y, float[4] z) {
        y = If (c) <then_branch = t1 () => (float[4] a) { p = Relu(x)
                                                          a = Add(p, p) },
                    else_branch = e1 () => (float[4] b) { b = Neg(x) }>
        z = If (c) <then_branch = t2 () => (float[4] a2) { p2 = Relu(x)
                                                           a2 = Add(p2, p2) },
                    else_branch = e2 () => (float[4] b2) { b2 = Neg(x) }>
    }""")
    module = edlc.compile(model)
    x = np.arange(4, dtype=np.float32) - 1
    for cond in (True, False):
        _check(module, model, {"c": np.array(cond), "x": x})


def test_tensor_after_an_if_whose_branches_allocate_differently():
    """Found by the fuzzer: StaticPlanBlockMemory put the tensor after the If into storage only
    the else branch allocated, and the model segfaulted when the then branch ran."""
    import numpy as np
    import onnx.parser

    import edlc
    from tests.conftest import ort_run

    model = onnx.parser.parse_model("""<ir_version: 8, opset_import: ["" : 17]>
    g (float[4] x) => (float[4] y) <float c = {0}> {
      s = ReduceSum <keepdims = 0> (x)
      k = Greater(s, c)
      r = If (k) < then_branch = t () => (float[4] o) { o = Exp(x) },
                   else_branch = e () => (float[4] o) { o = Softplus(x) } >
      p = Pow(r, x)
      y = Sub(p, x)
    }""")
    module = edlc.compile(model, opt_level=0)
    for x in (np.ones(4, np.float32), -np.ones(4, np.float32)):  # both branches
        np.testing.assert_allclose(module.run({"x": x})["y"], ort_run(model, {"x": x})["y"], rtol=1e-5, atol=1e-5)
