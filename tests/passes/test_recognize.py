"""recognize: decomposed LayerNorm, GELU (erf and tanh) and attention become one op each."""

import math

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import edlc
from edlc.ir.interpreter import run_graph
from edlc.pass_manager import PassManager
from edlc.testing import zoo
from tests.conftest import ort_run


def _recognize(model):
    g = edlc.load_onnx(model)
    pm = PassManager(["recognize", "eliminate-dead-code"], verify_each=True)
    return pm.run(g), pm


def _check(graph, model, inputs, rtol=1e-4, atol=1e-4):
    got, want = edlc.compile(graph, passes=[]).run(inputs), ort_run(model, inputs)
    for k in want:
        np.testing.assert_allclose(got[k], want[k], rtol=rtol, atol=atol, err_msg=k)


def _model(nodes, x_shape, inits, opset=17):
    g = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, x_shape)],
        [numpy_helper.from_array(np.asarray(a, np.float32) if np.asarray(a).dtype.kind == "f" else np.asarray(a), n)
         for n, a in inits.items()])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])
    onnx.checker.check_model(m)
    return m


def test_bert_layer_has_layernorm_gelu_and_attention(rng):
    model = zoo.bert_encoder(seq=16, layers=1)
    g, pm = _recognize(model)
    ops = [n.qualified_op for n in g.nodes]
    assert ops.count("LayerNormalization") == 3
    assert ops.count("edlc::Gelu") == 1
    assert ops.count("edlc::Attention") == 1
    for banned in ("Erf", "Sqrt", "Pow", "ReduceMean", "Softmax"):
        assert banned not in ops
    inputs = zoo.random_inputs(model)
    _check(g, model, inputs)


@pytest.mark.parametrize("opset", [17, 18])
def test_layernorm_with_axes_attribute_or_input(rng, opset):
    gamma, beta = rng.standard_normal(8), rng.standard_normal(8)
    axes = {"axes": [-1]} if opset < 18 else {}
    axes_in = [] if opset < 18 else ["axes"]
    nodes = [helper.make_node("ReduceMean", ["x"] + axes_in, ["m"], **axes),
             helper.make_node("Sub", ["x", "m"], ["d"]),
             helper.make_node("Mul", ["d", "d"], ["sq"]),
             helper.make_node("ReduceMean", ["sq"] + axes_in, ["v"], **axes),
             helper.make_node("Add", ["v", "eps"], ["ve"]),
             helper.make_node("Sqrt", ["ve"], ["s"]),
             helper.make_node("Div", ["d", "s"], ["n"]),
             helper.make_node("Mul", ["n", "gamma"], ["y0"]),
             helper.make_node("Add", ["y0", "beta"], ["y"])]
    inits = {"gamma": gamma, "beta": beta, "eps": np.float32(1e-5)}
    if opset >= 18:
        inits["axes"] = np.array([-1], np.int64)
    model = _model(nodes, [2, 3, 8], inits, opset)
    g, _ = _recognize(model)
    assert [n.op for n in g.nodes] == ["LayerNormalization"]
    assert g.nodes[0].attrs == {"axis": 2, "epsilon": pytest.approx(1e-5)}
    _check(g, model, {"x": rng.standard_normal((2, 3, 8)).astype(np.float32)})


def test_layernorm_over_a_middle_axis_is_rejected_with_reason(rng):
    nodes = [helper.make_node("ReduceMean", ["x"], ["m"], axes=[1]),
             helper.make_node("Sub", ["x", "m"], ["d"]),
             helper.make_node("Pow", ["d", "two"], ["sq"]),
             helper.make_node("ReduceMean", ["sq"], ["v"], axes=[1]),
             helper.make_node("Add", ["v", "eps"], ["ve"]),
             helper.make_node("Sqrt", ["ve"], ["s"]),
             helper.make_node("Div", ["d", "s"], ["n"]),
             helper.make_node("Mul", ["n", "gamma"], ["y"])]
    model = _model(nodes, [2, 3, 8], {"gamma": np.ones(8), "two": np.float32(2), "eps": np.float32(1e-5)})
    g, pm = _recognize(model)
    assert "LayerNormalization" not in [n.op for n in g.nodes]
    assert any("are not the trailing axes" in line for line in pm.records[0].report)


def _gelu_erf_nodes(form):
    common = [helper.make_node("Div", ["x", "sqrt2"], ["t"]),
              helper.make_node("Erf", ["t"], ["e"]),
              helper.make_node("Add", ["e", "one"], ["a"])]
    if form == 0:
        return common + [helper.make_node("Mul", ["x", "half"], ["h"]), helper.make_node("Mul", ["h", "a"], ["y"])]
    if form == 1:
        return common + [helper.make_node("Mul", ["a", "half"], ["h"]), helper.make_node("Mul", ["x", "h"], ["y"])]
    return common + [helper.make_node("Mul", ["x", "a"], ["h"]), helper.make_node("Mul", ["half", "h"], ["y"])]


@pytest.mark.parametrize("form", [0, 1, 2])
def test_gelu_erf_forms(rng, form):
    inits = {"sqrt2": np.float32(math.sqrt(2)), "one": np.float32(1), "half": np.float32(0.5)}
    model = _model(_gelu_erf_nodes(form), [4, 16], inits)
    g, _ = _recognize(model)
    assert [(n.qualified_op, n.attrs) for n in g.nodes] == [("edlc::Gelu", {"approximate": "none"})]
    x = rng.standard_normal((4, 16)).astype(np.float32) * 3
    _check(g, model, {"x": x})
    np.testing.assert_allclose(run_graph(g, {"x": x})[0], ort_run(model, {"x": x})["y"], rtol=1e-5, atol=1e-6)


def test_gelu_tanh_form_and_opset20_uses_the_standard_op(rng):
    nodes = [helper.make_node("Pow", ["x", "three"], ["c"]),
             helper.make_node("Mul", ["c", "a"], ["ca"]),
             helper.make_node("Add", ["x", "ca"], ["p"]),
             helper.make_node("Mul", ["p", "k"], ["pk"]),
             helper.make_node("Tanh", ["pk"], ["t"]),
             helper.make_node("Add", ["t", "one"], ["t1"]),
             helper.make_node("Mul", ["x", "half"], ["h"]),
             helper.make_node("Mul", ["h", "t1"], ["y"])]
    inits = {"three": np.float32(3), "a": np.float32(0.044715), "k": np.float32(math.sqrt(2 / math.pi)),
             "one": np.float32(1), "half": np.float32(0.5)}
    model = _model(nodes, [4, 16], inits)
    g, _ = _recognize(model)
    assert [(n.qualified_op, n.attrs) for n in g.nodes] == [("edlc::Gelu", {"approximate": "tanh"})]
    _check(g, model, {"x": rng.standard_normal((4, 16)).astype(np.float32)})
    g20, _ = _recognize(_model(nodes, [4, 16], inits, opset=20))
    assert [n.qualified_op for n in g20.nodes] == ["Gelu"]


def test_gelu_with_wrong_constant_is_left_alone():
    inits = {"sqrt2": np.float32(2.0), "one": np.float32(1), "half": np.float32(0.5)}
    g, pm = _recognize(_model(_gelu_erf_nodes(0), [4, 16], inits))
    assert "Erf" in [n.op for n in g.nodes]
    assert any("not 1/sqrt(2)" in line for line in pm.records[0].report)


@pytest.mark.parametrize("scale_op", ["Div", "Mul", None])
def test_attention_without_mask(rng, scale_op):
    nodes = [helper.make_node("MatMul", ["x", "kT"], ["s"])]
    last = "s"
    if scale_op:
        nodes.append(helper.make_node(scale_op, ["s", "scale"], ["ss"]))
        last = "ss"
    nodes += [helper.make_node("Softmax", [last], ["p"], axis=-1), helper.make_node("MatMul", ["p", "v"], ["y"])]
    inits = {"kT": rng.standard_normal((2, 8, 5)), "v": rng.standard_normal((2, 5, 8)), "scale": np.float32(2.0)}
    model = _model(nodes, [2, 3, 8], inits)
    g, _ = _recognize(model)
    assert [n.qualified_op for n in g.nodes] == ["edlc::Attention"]
    want_scale = {"Div": 0.5, "Mul": 2.0, None: 1.0}[scale_op]
    assert g.nodes[0].attrs["scale"] == pytest.approx(want_scale)
    m = edlc.compile(g, passes=[])
    x = rng.standard_normal((2, 3, 8)).astype(np.float32)
    np.testing.assert_allclose(m.run({"x": x})["y"], ort_run(model, {"x": x})["y"], rtol=1e-4, atol=1e-5)
    assert m.manifest["kernels"] == 1  # the whole attention is one kernel


def test_recognized_graph_exports_and_runs_in_onnxruntime(rng):
    model = zoo.bert_encoder(seq=16, layers=1)
    g, _ = _recognize(model)
    out = g.to_onnx()
    onnx.checker.check_model(out)
    assert len(out.graph.node) < len(model.graph.node)
    inputs = zoo.random_inputs(model)
    np.testing.assert_allclose(ort_run(out, inputs)["last_hidden_state"],
                               ort_run(model, inputs)["last_hidden_state"], rtol=1e-4, atol=1e-4)
