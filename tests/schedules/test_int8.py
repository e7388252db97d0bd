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
