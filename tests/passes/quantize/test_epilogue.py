"""Float elementwise ops after an int8 op run in its kernel (edlc.passes.quantize.epilogue): a
residual Add (of an int8 tensor through DequantizeLinear, or of a float one), the ReLU after
it, GELU, and the QuantizeLinear that ends them."""

import numpy as np
import pytest

import edlc
from edlc.ir import Graph, TensorType
from edlc.ir.interpreter import run_graph
from edlc.passes.quantize import quantize
from edlc.passes.quantize.epilogue import fold_epilogues
from edlc.passes.quantize.params import activation_params, sqnr
from edlc.targets.x86 import host_features
from edlc.testing.zoo import bert_encoder, random_inputs, resnet18
from tests.passes.quantize.helpers import int8_op_graph, ort_exact


def _residual_block(rng, op, x_shape, w_shape, attrs, int8_residual: bool) -> Graph:
    """int8 op (float output) -> Add(residual) -> Relu -> QuantizeLinear."""
    g = int8_op_graph(rng, op, x_shape, w_shape, attrs=attrs, quantized_out=False, paired=True)
    c = g.outputs.pop()
    if int8_residual:
        r = g.add_input("r", TensorType(c.type.shape, "uint8"))
        rp = activation_params(-2.0, 5.0)
        res = g.add_node("DequantizeLinear", [r, g.constant(rp.scale), g.constant(rp.zero_point)],
                         name="dq").outputs[0]
    else:
        res = g.add_input("r", TensorType(c.type.shape, "float32"))
    y = g.add_node("Relu", [g.add_node("Add", [c, res], name="add").outputs[0]], name="relu").outputs[0]
    yp = activation_params(0.0, 30.0)
    g.outputs.append(g.add_node("QuantizeLinear", [y, g.constant(yp.scale), g.constant(yp.zero_point)],
                                name="q").outputs[0])
    return g


CASES = [("qconv2d", (1, 16, 9, 9), (32, 16, 3, 3), {"pads": [1, 1, 1, 1]}),
         ("qmatmul", (2, 7, 40), (40, 48), {})]


@pytest.mark.parametrize("op,x_shape,w_shape,attrs", CASES, ids=["conv", "matmul"])
@pytest.mark.parametrize("int8_residual", [True, False], ids=["int8-residual", "float-residual"])
def test_residual_add_relu_quantize_become_one_exact_kernel(rng, op, x_shape, w_shape, attrs, int8_residual):
    g = _residual_block(rng, op, x_shape, w_shape, attrs, int8_residual)
    assert fold_epilogues(g)
    (node,) = g.nodes
    body = node.attrs["epilogue"]
    assert [n.op for n in body.nodes] == (["DequantizeLinear"] if int8_residual else []) + ["Add", "Relu"]
    assert g.outputs[0].type.dtype == "uint8" and g.outputs[0].name == "q"
    m = edlc.compile(g, passes=[])
    assert m.manifest["kernels"] == 1
    shape = g.outputs[0].type.shape
    for _ in range(2):
        feeds = {"x": rng.integers(0, 256, x_shape).astype(np.uint8),
                 "r": rng.integers(0, 256, shape).astype(np.uint8) if int8_residual
                 else (rng.standard_normal(shape) * 3).astype(np.float32)}
        np.testing.assert_array_equal(m.run(feeds)["q"], run_graph(g, feeds)[0])
    # the QDQ form onnxruntime runs computes the same
    np.testing.assert_array_equal(ort_exact(g.to_onnx(), feeds)["q"], run_graph(g, feeds)[0])


def test_a_value_read_twice_is_not_folded(rng):
    g = int8_op_graph(rng, "qmatmul", (2, 5, 16), (16, 8), quantized_out=False)
    c = g.outputs[0]
    g.outputs.append(g.add_node("Relu", [c], name="relu").outputs[0])  # c: a graph output and read
    assert not fold_epilogues(g)
    g.outputs.remove(c)
    assert fold_epilogues(g)  # now the Relu is its only reader


def test_resnet_blocks_end_in_uint8_in_one_kernel_each():
    model = resnet18(image=32)
    samples = [random_inputs(model, seed=i) for i in range(8)]
    g8, report = quantize(edlc.load_onnx(model), samples)
    top = [n.op for n in g8.nodes]
    # every residual Add and its ReLU run in the second conv of a block, which outputs uint8;
    # its input is the previous block's uint8 output (the residual is read quantized)
    assert "Add" not in top and "Relu" not in top and "DequantizeLinear" not in top
    assert "MaxPool" not in top and "qmaxpool" in top
    folded = [n for n in g8.nodes if n.attrs.get("epilogue") is not None]
    assert len(folded) == 8
    assert sum(n.outputs[0].type.dtype == "uint8" for n in folded) == 7  # the last feeds the float pool
    assert report.sqnr_db > 28
    m = edlc.compile(g8)
    qdq = g8.to_onnx()
    for s in samples[:4]:
        got = m.run(s)["logits"]
        np.testing.assert_allclose(got, run_graph(g8, s)[0], rtol=1e-5, atol=1e-5)
        # onnxruntime runs the QDQ form in float (its Conv sums float products): a residual
        # block output within 1e-6 of a rounding boundary may round the other way, one step
        assert sqnr(ort_exact(qdq, s)["logits"], got) > 40
    # the QDQ model imports back onto the same kernels
    back = edlc.compile(qdq)
    assert back.manifest["kernels"] == m.manifest["kernels"]
    np.testing.assert_array_equal(back.run(samples[0])["logits"], m.run(samples[0])["logits"])


def test_bert_gelu_and_residuals_run_in_the_matmuls():
    model = bert_encoder(seq=16, layers=2)
    samples = [random_inputs(model, seed=i) for i in range(8)]
    g8, report = quantize(edlc.load_onnx(model), samples)
    top = [n.op for n in g8.nodes]
    assert "Gelu" not in top and "DequantizeLinear" not in top
    bodies = [[b.op for b in n.attrs["epilogue"].nodes] for n in g8.nodes if n.attrs.get("epilogue") is not None]
    assert bodies.count(["Gelu"]) == 2 and bodies.count(["Add"]) == 4
    # Q, K and V feed int8 attention (edlc.qattention) directly: Q uint8, K and V int8
    qkv = [n for n in g8.nodes if n.op == "qmatmul" and "self" in n.name]
    assert [n.outputs[0].type.dtype for n in qkv] == ["uint8", "int8", "int8"] * 2
    assert [n.op for n in g8.nodes].count("qattention") == 2 and "Transpose" not in top
    assert report.sqnr_db > 28
    m = edlc.compile(g8)
    qdq = g8.to_onnx()
    for s in samples[:2]:
        # equal but where GELU (edlc's erf approximation, ~1e-7, against onnxruntime's erf)
        # lands on the other side of a rounding boundary: one step of one value, sometimes
        got, want = m.run(s)["last_hidden_state"], ort_exact(qdq, s)["last_hidden_state"]
        assert sqnr(want, got) > 50


def test_gelu_and_quantization_share_one_division(rng):
    """A GELU epilogue ending in QuantizeLinear is one expression (edlc.lower.quantized.
    gelu_quantize): one division per value, where GELU's erf and the quantization had one
    each. The values are the reference's but where the float32 rounding of the two forms
    differs across a rounding boundary (one step, rarely)."""
    g = int8_op_graph(rng, "qmatmul", (1, 64, 48), (48, 96), quantized_out=False, paired=True)
    c = g.outputs.pop()
    y = g.add_node("Gelu", [c], name="gelu", domain="edlc").outputs[0]
    yp = activation_params(-0.2, 6.0)
    g.outputs.append(g.add_node("QuantizeLinear", [y, g.constant(yp.scale), g.constant(yp.zero_point)],
                                name="q").outputs[0])
    assert fold_epilogues(g)
    (node,) = g.nodes
    assert [n.op for n in node.attrs["epilogue"].nodes] == ["Gelu"]
    m = edlc.compile(g, passes=[])
    assert m.manifest["kernels"] == 1
    for _ in range(3):
        x = rng.integers(0, 256, (1, 64, 48)).astype(np.uint8)
        got, want = m.run({"x": x})["q"].astype(int), run_graph(g, {"x": x})[0].astype(int)
        d = np.abs(got - want)
        assert d.max() <= 1 and np.mean(d > 0) < 0.01
        qdq = ort_exact(g.to_onnx(), {"x": x})["q"].astype(int)
        assert np.abs(qdq - want).max() <= 1
    if host_features()["avx2"] and not host_features()["avx512"]:  # one division per 8 values (AVX2: the loop does 16); two forms had 8
        assert m.executable.mod.imports[0].inspect_source("asm").count("vdivps") == 2
