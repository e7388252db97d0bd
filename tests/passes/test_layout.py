"""The layout pass: convs run in NHWC, transposes only at the edges, results unchanged.

Models are written in ONNX text with their weights listed as graph inputs; `conv_model` turns
every input but `x` into a seeded random initializer.
"""

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

import edlc
from edlc.ir.ops import evaluate, infer_types
from edlc.pass_manager import PassManager
from edlc.testing import zoo
from tests.conftest import assert_matches_ort, ort_run, parse

HEADER = '<ir_version: 8, opset_import: ["" : 17]>\n'


def conv_model(text: str, seed: int = 0) -> onnx.ModelProto:
    """Graph inputs other than `x` become initializers: BN variances in [0.5, 1.5], conv
    weights He-scaled, everything else standard normal."""
    model = onnx.parser.parse_model(HEADER + text)
    rng = np.random.default_rng(seed)
    keep, inits = [], []
    for vi in model.graph.input:
        if vi.name == "x":
            keep.append(vi)
            continue
        shape = [d.dim_value for d in vi.type.tensor_type.shape.dim]
        if vi.name.startswith("var"):
            arr = rng.uniform(0.5, 1.5, shape)
        else:
            fan_in = int(np.prod(shape[1:])) if len(shape) == 4 else 1
            arr = rng.standard_normal(shape) * np.sqrt(2.0 / fan_in)
        inits.append(numpy_helper.from_array(arr.astype(np.float32), vi.name))
    del model.graph.input[:]
    model.graph.input.extend(keep)
    model.graph.initializer.extend(inits)
    onnx.checker.check_model(model, full_check=True)  # declared shapes must be right
    return model


def run_layout(model: onnx.ModelProto) -> edlc.Graph:
    return PassManager(["layout"], verify_each=True).run(edlc.load_onnx(model))


def count(graph: edlc.Graph, op: str) -> int:
    return graph.op_histogram().get(op, 0)


def check_numerics(graph: edlc.Graph, model: onnx.ModelProto, seed: int = 1) -> None:
    shape = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    x = np.random.default_rng(seed).standard_normal(shape).astype(np.float32)
    assert_matches_ort(edlc.compile(graph, passes=[]), model, {"x": x})


def residual_model() -> onnx.ModelProto:
    return conv_model("""
    g (float[1, 8, 10, 10] x, float[8, 8, 3, 3] w1, float[8] b1, float[8] gamma, float[8] beta,
       float[8] mean, float[8] var, float[8, 8, 3, 3] w2, float[8, 1, 1] scale)
      => (float[1, 8, 10, 10] y) {
        c1 = Conv <pads = [1, 1, 1, 1]> (x, w1, b1)
        n1 = BatchNormalization <epsilon = 0.001> (c1, gamma, beta, mean, var)
        r1 = Relu(n1)
        c2 = Conv <pads = [1, 1, 1, 1]> (r1, w2)
        s = Mul(c2, scale)
        a = Add(s, r1)
        y = LeakyRelu <alpha = 0.1> (a)
    }""")


def test_conv_chain_with_residual_keeps_one_transpose_each_way():
    model = residual_model()
    g = run_layout(model)
    assert count(g, "Transpose") == 2
    assert count(g, "edlc::Conv") == 2 and count(g, "Conv") == 0
    assert count(g, "BatchNormalization") == 0  # became Mul + Add on the channel axis
    (first,) = [n for n in g.nodes if n.op == "Transpose" and n.inputs[0] is g.inputs[0]]
    assert first.attrs["perm"] == [0, 2, 3, 1]
    assert g.outputs[0].name == "y" and g.outputs[0].producer.op == "Transpose"
    assert g.outputs[0].type.shape == (1, 8, 10, 10)
    check_numerics(g, model)


def test_weights_are_pre_transposed_and_the_reference_agrees_with_onnx():
    model = residual_model()
    conv = next(n for n in run_layout(model).nodes if n.qualified_op == "edlc::Conv")
    assert conv.attrs["layout"] == "NHWC" and conv.attrs["kernel_layout"] == "OHWI"
    w = conv.inputs[1].const
    assert w.shape == (8, 3, 3, 8)
    x = np.random.default_rng(2).standard_normal((1, 10, 10, 8)).astype(np.float32)
    (got,) = evaluate(conv, [x, w, conv.inputs[2].const], {"": 17})
    want = ort_run(parse(HEADER + """
    g (float[1, 8, 10, 10] x, float[8, 8, 3, 3] w, float[8] b) => (float[1, 8, 10, 10] y) {
        y = Conv <pads = [1, 1, 1, 1]> (x, w, b)
    }"""), {"x": x.transpose(0, 3, 1, 2), "w": w.transpose(0, 3, 1, 2),
            "b": conv.inputs[2].const})["y"]
    np.testing.assert_allclose(got, want.transpose(0, 2, 3, 1), rtol=1e-5, atol=1e-5)


def test_depthwise_separable_block():
    model = conv_model("""
    g (float[1, 12, 9, 9] x, float[12, 1, 3, 3] wd, float[12] bd, float[16, 12, 1, 1] wp)
      => (float[1, 16, 5, 5] y) {
        lo = Constant <value = float {0.0}> ()
        hi = Constant <value = float {6.0}> ()
        d = Conv <group = 12, strides = [2, 2], pads = [1, 1, 1, 1]> (x, wd, bd)
        r = Clip(d, lo, hi)
        h = HardSwish(r)
        y = Conv(h, wp)
    }""")
    g = run_layout(model)
    assert count(g, "Transpose") == 2
    layouts = [n.attrs["kernel_layout"] for n in g.nodes if n.qualified_op == "edlc::Conv"]
    assert layouts == ["HWIO", "OHWI"]  # depthwise wants the output channel contiguous
    check_numerics(g, model)


def test_strided_dilated_grouped_conv_with_asymmetric_and_same_padding():
    model = conv_model("""
    g (float[1, 4, 11, 13] x, float[6, 4, 3, 3] w1, float[6, 3, 3, 2] w2) => (float[1, 6, 3, 3] y) {
        c = Conv <strides = [2, 2], pads = [0, 1, 2, 1], dilations = [1, 2]> (x, w1)
        s = Sigmoid(c)
        y = Conv <auto_pad = "SAME_UPPER", strides = [2, 2], group = 2> (s, w2)
    }""")
    g = run_layout(model)
    assert count(g, "Transpose") == 2
    assert all("auto_pad" not in n.attrs for n in g.nodes)
    check_numerics(g, model)


def pool_concat_model() -> onnx.ModelProto:
    return conv_model("""
    g (float[1, 3, 12, 12] x, float[8, 3, 3, 3] w1, float[4, 8, 1, 1] w2, float[4, 8, 3, 3] w3,
       float[8, 1, 1] bias) => (float[1, 8, 3, 3] y) {
        c = Conv <pads = [1, 1, 1, 1]> (x, w1)
        p = MaxPool <kernel_shape = [3, 3], strides = [2, 2], pads = [1, 1, 1, 1]> (c)
        a = Conv(p, w2)
        b = Conv <pads = [1, 1, 1, 1]> (p, w3)
        cat = Concat <axis = 1> (a, b)
        z = Add(cat, bias)
        y = AveragePool <kernel_shape = [3, 3], strides = [2, 2], ceil_mode = 1> (z)
    }""")


def test_maxpool_and_channel_concat_stay_in_nhwc():
    model = pool_concat_model()
    g = run_layout(model)
    assert count(g, "Transpose") == 2
    assert count(g, "edlc::MaxPool") == 1 and count(g, "edlc::AveragePool") == 1
    for node in g.nodes:  # the edlc ops' shape rules agree with the types the pass gave
        if node.domain == "edlc":
            assert infer_types(node, g.opset) == [node.outputs[0].type], node.name
    assert next(n for n in g.nodes if n.op == "Concat").attrs["axis"] == 3
    check_numerics(g, model)


def test_exported_graph_runs_in_onnxruntime():
    """edlc's NHWC ops decompose to Transpose + ONNX op + Transpose on export."""
    for model in (residual_model(), pool_concat_model()):
        exported = run_layout(model).to_onnx()
        assert {n.domain for n in exported.graph.node} == {""}
        shape = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
        x = np.random.default_rng(3).standard_normal(shape).astype(np.float32)
        np.testing.assert_allclose(ort_run(exported, {"x": x})["y"], ort_run(model, {"x": x})["y"],
                                   rtol=1e-4, atol=1e-4)


def test_global_pool_flatten_gemm_puts_the_transpose_before_flatten():
    model = conv_model("""
    g (float[2, 3, 8, 8] x, float[16, 3, 3, 3] w, float[10, 16] fc, float[10] fb)
      => (float[2, 10] y) {
        c = Conv <pads = [1, 1, 1, 1]> (x, w)
        r = Relu(c)
        p = GlobalAveragePool(r)
        f = Flatten(p)
        y = Gemm <transB = 1> (f, fc, fb)
    }""")
    g = run_layout(model)
    assert count(g, "Transpose") == 2 and count(g, "edlc::GlobalAveragePool") == 1
    flatten = next(n for n in g.nodes if n.op == "Flatten")
    assert flatten.inputs[0].producer.op == "Transpose"
    check_numerics(g, model)


def test_unknown_op_between_convs_gets_a_transpose_each_side():
    model = conv_model("""
    g (float[1, 4, 6, 6] x, float[4, 4, 3, 3] w1, float[4, 4, 1, 1] w2) => (float[1, 4, 6, 6] y) {
        c = Conv <pads = [1, 1, 1, 1]> (x, w1)
        sm = Softmax <axis = 1> (c)
        y = Conv(sm, w2)
    }""")
    g = run_layout(model)
    assert count(g, "Transpose") == 4 and count(g, "Softmax") == 1
    check_numerics(g, model)


def test_what_it_cannot_convert_is_left_alone():
    model = parse(HEADER + """
    g (float[1, 2, 5, 5] x, float[2, 2, 3, 3] w, float[1, 2, 7] z, float[2, 2, 3] v)
      => (float[1, 2, 3, 3] y, float[1, 2, 5] y1) {
        y = Conv(x, w)
        y1 = Conv(z, v)
    }""")
    pm = PassManager(["layout"], verify_each=True)
    g = pm.run(edlc.load_onnx(model))
    assert [n.op for n in g.nodes] == ["Conv", "Conv"]  # weight not constant; 1-D conv
    assert not pm.records[0].modified


def test_existing_transpose_pairs_cancel():
    model = parse(HEADER + """
    g (float[1, 2, 3, 4] x) => (float[1, 2, 3, 4] y) {
        t = Transpose <perm = [0, 2, 3, 1]> (x)
        u = Transpose <perm = [0, 3, 1, 2]> (t)
        y = Relu(u)
    }""")
    g = run_layout(model)
    assert [n.op for n in g.nodes] == ["Relu"] and g.nodes[0].inputs[0] is g.inputs[0]


@pytest.mark.slow
def test_resnet18_at_opt_level_3_matches_onnxruntime():
    model = zoo.resnet18(image=64)
    g = run_layout(model)
    assert count(g, "Transpose") == 2 and count(g, "edlc::Conv") == 20
    inputs = zoo.random_inputs(model)
    assert_matches_ort(edlc.compile(model, opt_level=3), model, inputs)
    np.testing.assert_allclose(edlc.compile(g, passes=[]).run(inputs)["logits"],
                               ort_run(model, inputs)["logits"], rtol=1e-4, atol=1e-4)
