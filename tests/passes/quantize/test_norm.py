"""LayerNormalization and its QuantizeLinear as one op and one kernel (edlc.passes.quantize.norm,
edlc.lower.int8_norm)."""

import numpy as np
import pytest

import edlc
from edlc.ir import Graph, TensorType
from edlc.ir.interpreter import run_graph
from edlc.passes.quantize.norm import fuse_norm_quantize
from tests.passes.quantize.helpers import ort_exact


def _ln_quantize(rng, shape, *, float_reader: bool, bias: bool = True, axis: int = -1, zp_dtype="uint8") -> Graph:
    g = Graph("t")
    x = g.add_input("x", TensorType(shape, "float32"))
    normalized = shape[axis:]  # LayerNormalization normalizes from `axis` to the end
    ins = [x, g.constant(rng.standard_normal(normalized).astype(np.float32), "gamma")]
    if bias:
        ins.append(g.constant(rng.standard_normal(normalized).astype(np.float32), "beta"))
    y = g.add_node("LayerNormalization", ins, {"axis": axis, "epsilon": 1e-12}, name="ln").outputs[0]
    zp = np.array(120 if zp_dtype == "uint8" else -5, zp_dtype)
    q = g.add_node("QuantizeLinear", [y, g.constant(np.array(0.03, np.float32), "s"), g.constant(zp, "z")],
                   name="q").outputs[0]
    g.outputs.append(q)
    if float_reader:  # a residual Add reads the float output too
        g.outputs.append(g.add_node("Relu", [y], name="reader").outputs[0])
    return g


def _close_q(got, want):
    """One quantization step at most, rarely: the kernel sums in another order than numpy."""
    d = np.abs(got.astype(np.int64) - want.astype(np.int64))
    assert got.dtype == want.dtype and d.max() <= 1 and np.mean(d > 0) < 0.01


CASES = [((1, 128, 256), True, True, -1, "uint8"), ((2, 5, 24), False, True, -1, "int8"),
         ((3, 7, 20), False, False, -1, "uint8"), ((2, 6, 4, 8), True, True, 1, "uint8")]


@pytest.mark.parametrize("shape,float_reader,bias,axis,zp_dtype", CASES,
                         ids=["bert", "no-float-reader", "no-bias-odd-width", "inner-axis"])
def test_layer_norm_and_quantize_are_one_kernel(rng, shape, float_reader, bias, axis, zp_dtype):
    g = _ln_quantize(rng, shape, float_reader=float_reader, bias=bias, axis=axis, zp_dtype=zp_dtype)
    plain = g.copy()
    assert fuse_norm_quantize(g)
    assert [n.op for n in g.nodes] == ["qlayernorm"] + (["Relu"] if float_reader else [])
    node = g.nodes[0]
    assert node.attrs["float_output"] == int(float_reader) and len(node.outputs) == 1 + float_reader
    m = edlc.compile(g, passes=[])
    if axis == -1:  # one kernel (an inner axis lowers through the decomposition, one fused kernel too)
        assert m.manifest["kernels"] == 1 + float_reader
    for _ in range(2):
        feeds = {"x": (rng.standard_normal(shape) * 3 + 1).astype(np.float32)}
        want = run_graph(plain, feeds)
        got = m.run(feeds)
        assert [v.name for v in g.outputs] == [v.name for v in plain.outputs]
        _close_q(got["q"], want[0])
        np.testing.assert_array_equal(run_graph(g, feeds)[0], want[0])  # the op's reference
        if float_reader:
            np.testing.assert_allclose(got[g.outputs[1].name], want[1], rtol=1e-5, atol=1e-5)
        # the QDQ export: LayerNormalization and QuantizeLinear again
        _close_q(ort_exact(g.to_onnx(), feeds)["q"], want[0])


def test_a_layer_norm_quantized_twice_is_left_alone(rng):
    g = _ln_quantize(rng, (1, 4, 8), float_reader=False)
    y = g.nodes[0].outputs[0]
    g.outputs.append(g.add_node("QuantizeLinear", [y, g.constant(np.array(0.5, np.float32))], name="q2").outputs[0])
    assert not fuse_norm_quantize(g)
