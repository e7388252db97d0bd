"""The int8 rule (edlc.schedules.int8): packed int8 accumulators become one x86 multiply-add
instruction per block (vpmaddwd, or VNNI's vpdpwssd), and stay bit-exact with the reference."""

import numpy as np
import pytest

import edlc
from edlc.ir.interpreter import run_graph
from edlc.schedules.int8 import Isa, isa_of
from edlc.targets.x86 import host_features
from tests.passes.quantize.helpers import int8_input, int8_op_graph

CASES = [
    ("qconv2d", (1, 20, 9, 9), (32, 20, 3, 3), {"pads": [1, 1, 1, 1], "clip_min": 0.0}, "uint8"),
    ("qconv2d", (2, 16, 10, 10), (24, 16, 1, 1), {"strides": [2, 2]}, "int8"),
    ("qmatmul", (2, 6, 40), (40, 48), {}, "uint8"),
]


def _asm(module) -> str:
    return module.executable.mod.imports[0].inspect_source("asm")


@pytest.mark.parametrize("op,x_shape,w_shape,attrs,act", CASES, ids=["conv3x3", "conv1x1s2", "matmul"])
def test_packed_int8_kernels_are_exact_and_use_the_instruction(rng, op, x_shape, w_shape, attrs, act):
    g = int8_op_graph(rng, op, x_shape, w_shape, attrs=attrs, act=act)
    m = edlc.compile(g, passes=[])
    x = int8_input(rng, x_shape, act)
    np.testing.assert_array_equal(m.run({"x": x})[g.outputs[0].name], run_graph(g, {"x": x})[0])
    if not host_features()["avx2"]:
        pytest.skip("the host has no AVX2")
    want = "vpdpwssd" if host_features()["vnni"] and host_features()["avx512"] else "vpmaddwd"
    assert want in _asm(m)


@pytest.mark.parametrize("mcpu,instruction", [("znver4", "vpdpbusd"), ("skylake-avx512", "vpmaddwd"),
                                              ("haswell", "vpmaddwd")])
def test_instruction_per_cpu(rng, mcpu, instruction):
    """Cross-compiled only (the code may not run on this host): the generated assembly. These
    weights use the full int8 range: int16 pairs, except with VNNI, whose vpdpbusd adds uint8 x
    int8 quads in int32 (tests/passes/quantize/test_kernels.py has the paired weights)."""
    g = int8_op_graph(rng, "qconv2d", (1, 16, 8, 8), (32, 16, 3, 3), attrs={"pads": [1, 1, 1, 1]})
    asm = _asm(edlc.compile(g, passes=[], target_options={"mcpu": mcpu}))
    assert instruction in asm
    assert "vpmulld" not in asm  # no int32 multiplies left in the accumulation


def test_isa_choice():
    def has(*features):
        return lambda f: f in features

    assert isa_of(has("avx2", "avx512bw", "avx512vnni")) == Isa(16, "vnni", 32)
    assert isa_of(has("avx2", "avx512bw")).kind == "avx512"
    assert isa_of(has("avx2")).lanes == 8
    assert isa_of(has()) is None


def _twin_weight(rng, k: int, n: int) -> np.ndarray:
    """A [K, N] int8 matrix at the edge of the twin range: the four weights of an int16 lane of
    the twin kernel sum to exactly 128 in |w| in some lanes (255 * 128 fits int16)."""
    w = rng.integers(-32, 33, (k, n)).astype(np.int8)
    w[0:2, 0], w[4:6, 0] = 32, -32
    return w


@pytest.mark.parametrize("mcpu,twin", [("haswell", True), ("znver3", True), ("skylake-avx512", False),
                                       ("znver4", False)])
def test_twin_quads_per_cpu(rng, mcpu, twin):
    """Cross-compiled only: a matmul whose weights fit the twin range takes the twin form on AVX2
    (two vpmaddubsw added with vpaddw before one vpmaddwd), not on AVX-512 (VNNI's vpdpbusd,
    or plain quads)."""
    from edlc.lower.int8_packed import u8_twins_fit

    w = _twin_weight(rng, 64, 32)
    assert u8_twins_fit(w)
    g = int8_op_graph(rng, "qmatmul", (1, 8, 64), (64, 32), weight=w)
    asm = _asm(edlc.compile(g, passes=[], target_options={"mcpu": mcpu}))
    assert ("vpaddw" in asm) == twin


@pytest.mark.parametrize("limit", [32, 64], ids=["twins", "pairs-only"])
def test_twin_quads_are_exact(rng, limit):
    """Weights in the twin range (|w| <= 32: any four sum to 128 at most) run as twin quads,
    weights in the paired range only (|w| <= 64) as plain quads; both bit-exact with the
    reference on full-range uint8 data, the largest values included."""
    from edlc.lower.int8_packed import u8_pairs_fit, u8_twins_fit

    w = _twin_weight(rng, 256, 48) if limit == 32 else rng.integers(-64, 65, (256, 48)).astype(np.int8)
    assert u8_pairs_fit(w) and u8_twins_fit(w) == (limit == 32)
    g = int8_op_graph(rng, "qmatmul", (2, 12, 256), (256, 48), weight=w)
    m = edlc.compile(g, passes=[])
    for x in (int8_input(rng, (2, 12, 256)), np.full((2, 12, 256), 255, np.uint8)):
        np.testing.assert_array_equal(m.run({"x": x})[g.outputs[0].name], run_graph(g, {"x": x})[0])
    if host_features()["avx2"] and not host_features()["avx512"]:
        assert ("vpaddw" in _asm(m)) == (limit == 32)
