"""Malformed models: each class is refused with one line naming the node, op and value at
fault, before onnx's checker (whose messages name protobuf fields) and before any tensor is
allocated."""

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import edlc
from edlc.errors import ModelError, ShapeError
from edlc.frontend.onnx_checks import MAX_RANK, max_tensor_bytes
from tests.conftest import tensor_info


def _model(nodes, inputs, outputs, inits=(), opsets=(("", 17),)):
    g = helper.make_graph(nodes, "g", inputs, outputs, list(inits))
    m = helper.make_model(g, opset_imports=[helper.make_opsetid(d, v) for d, v in opsets])
    m.ir_version = 8
    return m


def _unary(x="x", y="y", op="Relu", name="n1", **kw):
    return helper.make_node(op, [x], [y], name=name, **kw)


X, Y = tensor_info("x", [2]), tensor_info("y", [2])


def _refused(model, match, cls=ModelError):
    with pytest.raises(cls, match=match) as info:
        edlc.load_onnx(model)
    assert "\n" not in str(info.value)
    return str(info.value)


def test_cycles_name_their_nodes():
    m = _model([helper.make_node("Add", ["x", "b"], ["a"], name="n1"), _unary("a", "b", name="n2")], [X],
               [tensor_info("b", [2])])
    _refused(m, r"cycle: node 'n1' \(Add\) -> node 'n2' \(Relu\) -> node 'n1' \(Add\)")
    _refused(_model([helper.make_node("Add", ["x", "a"], ["a"], name="self")], [X], [tensor_info("a", [2])]),
             r"cycle: node 'self' \(Add\) -> node 'self'")


def test_nodes_out_of_order_are_sorted():
    m = _model([_unary("a", "y", name="second"), _unary("x", "a", name="first")], [X], [Y])
    assert [n.name for n in edlc.load_onnx(m).nodes] == ["first", "second"]


def test_dangling_values_are_named():
    _refused(_model([helper.make_node("Add", ["x", "ghost"], ["y"], name="n1")], [X], [Y]),
             r"node 'n1' \(Add\): input 'ghost' is not a graph input, an initializer or the output")
    _refused(_model([_unary()], [X], [tensor_info("z", [2])]), "graph output 'z' is not produced")


@pytest.mark.parametrize("nodes, inputs, inits, match", [
    ([_unary(name="a"), _unary(name="b")], [X], [], r"'y' is defined twice: by node 'a' \(Relu\) and by node 'b'"),
    ([_unary()], [X, X], [], "'x' is defined twice: by a graph input and by a graph input"),
    ([_unary("x", "x")], [X], [], r"'x' is defined twice: by a graph input and by node 'n1' \(Relu\)"),
    ([helper.make_node("Add", ["x", "w"], ["y"])], [X],
     [numpy_helper.from_array(np.ones(2, np.float32), "w")] * 2, "'w' is defined twice: by an initializer"),
])
def test_duplicate_names(nodes, inputs, inits, match):
    _refused(_model(nodes, inputs, [Y], inits), match)


def test_wrong_initializer_sizes():
    w = numpy_helper.from_array(np.ones(2, np.float32), "w")
    w.dims[:] = [3]
    _refused(_model([helper.make_node("Add", ["x", "w"], ["y"])], [X], [Y], [w]), r"tensor name: w.*12 bytes")
    bad = numpy_helper.from_array(np.ones(2, np.float32), "c")
    bad.dims[:] = [4, 1]  # inside a Constant node: not seen by onnx's checker
    m = _model([helper.make_node("Constant", [], ["c"], name="k", value=bad), helper.make_node("Add", ["x", "c"], ["y"])],
               [X], [Y])
    _refused(m, r"tensor name: c\).*Name: k OpType: Constant")


def test_domains_and_ops():
    foo = helper.make_node("Foo", ["x"], ["y"], name="n1", domain="com.example")
    _refused(_model([foo], [X], [Y]), r"node 'n1' \(com.example::Foo\): domain 'com.example' is not in the model's opset_import")
    _refused(_model([_unary(op="Frob")], [X], [Y]), r"node 'n1' \(Frob\): 'Frob' is not an op of domain 'ai.onnx'")
    ln = helper.make_node("LayerNormalization", ["x", "x"], ["y"], name="ln")
    _refused(_model([ln], [X], [Y], opsets=(("", 13),)), "'LayerNormalization' does not exist in opset 13")


@pytest.mark.parametrize("opsets, match", [
    ((), "imports no ONNX opset"),
    ((("com.example", 1),), "imports no ONNX opset"),
    ((("", 6),), "opset 6 is older"),
    ((("", 999),), "opset 999 is newer than the newest"),
    ((("", 17), ("ai.onnx", 17)), "lists domain 'ai.onnx' twice"),
])
def test_opset_imports(opsets, match):
    _refused(_model([_unary()], [X], [Y], opsets=opsets), match)


def test_memory_bombs_are_refused_before_allocating():
    huge = tensor_info("x", [10**9, 10**9])
    msg = _refused(_model([_unary()], [huge], [tensor_info("y", ["a", "b"])]), r"input 'x' would take", ShapeError)
    assert "of memory" in msg
    _refused(_model([_unary()], [tensor_info("x", [-3, 2])], [tensor_info("y", ["a", "b"])]), "negative dim -3")
    deep = tensor_info("x", [1] * (MAX_RANK + 1))
    _refused(_model([_unary()], [deep], [tensor_info("y", None)]), f"rank {MAX_RANK + 1}", ShapeError)
    shape = numpy_helper.from_array(np.array([10**6, 10**6], np.int64), "s")
    cos = helper.make_node("ConstantOfShape", ["s"], ["y"], name="fill")
    _refused(_model([cos], [], [tensor_info("y", ["a", "b"])], [shape]),
             r"output 'y' of node 'fill' \(ConstantOfShape\) would take 4.0 TB", ShapeError)


def test_a_huge_binding_is_refused():
    m = _model([_unary()], [tensor_info("x", ["n", 1024])], [tensor_info("y", ["n", 1024])])
    n = max_tensor_bytes() // 4096 + 1
    with pytest.raises(ShapeError, match=rf"input 'x' bound to \[{n}, 1024\]"):
        edlc.load_onnx(m, {"x": (n, 1024)})


def test_sparse_constant_dims_are_checked_before_densifying():
    sparse = helper.make_sparse_tensor(helper.make_tensor("v", TensorProto.FLOAT, [1], [1.0]),
                                       helper.make_tensor("i", TensorProto.INT64, [1], [0]), [10**6, 10**6])
    m = _model([helper.make_node("Constant", [], ["y"], name="k", sparse_value=sparse)], [], [tensor_info("y", ["a", "b"])])
    _refused(m, r"node 'k' \(Constant\): attribute 'sparse_value' would take 4.0 TB", ShapeError)
    small = helper.make_sparse_tensor(helper.make_tensor("v", TensorProto.FLOAT, [2], [1.0, 2.0]),
                                      helper.make_tensor("i", TensorProto.INT64, [2], [1, 4]), [2, 3])
    m = _model([helper.make_node("Constant", [], ["y"], name="k", sparse_value=small)], [], [tensor_info("y", [2, 3])])
    np.testing.assert_array_equal(edlc.load_onnx(m).outputs[0].const, [[0, 1, 0], [0, 2, 0]])


def test_window_attributes_beyond_any_real_model():
    pool = helper.make_node("AveragePool", ["x"], ["y"], name="pool", kernel_shape=[1, 1], pads=[0, 0, 2**31 - 1, 0])
    _refused(_model([pool], [tensor_info("x", [1, 1, 4, 4])], [tensor_info("y", ["a", "b", "c", "d"])]),
             r"node 'pool' \(AveragePool\): attribute 'pads' holds 2147483647; edlc accepts at most 1048576")


def test_axes_beyond_any_rank():
    """onnx's shape inference crashes the process on LayerNormalization's axis 2^31."""
    ln = helper.make_node("LayerNormalization", ["x", "s"], ["y"], axis=2**31)
    s = numpy_helper.from_array(np.ones(2, np.float32), "s")
    _refused(_model([ln], [X], [Y], [s]),
             r"node 'LayerNormalization_0' \(LayerNormalization\): attribute 'axis' holds 2147483648; "
             "edlc accepts at most 32")


@pytest.mark.parametrize("attrs, match", [
    ({}, "needs exactly one of the attributes value, value_float"),
    ({"value_float": 1.0, "value_int": 2}, "has \\['value_float', 'value_int'\\]"),
])
def test_constant_nodes_need_one_value(attrs, match):
    node = helper.make_node("Constant", [], ["c"], name="k", **attrs)
    m = _model([node, helper.make_node("Add", ["x", "c"], ["y"])], [X], [Y])
    with pytest.raises(ModelError, match=match):
        edlc.load_onnx(m)


def test_element_types_edlc_lacks():
    w = helper.make_tensor("w", TensorProto.FLOAT4E2M1, [2], [1.0, 2.0])
    m = _model([helper.make_node("Cast", ["w"], ["y"], to=TensorProto.FLOAT)], [], [Y], [w])
    _refused(m, "initializer 'w' has element type FLOAT4E2M1, which edlc does not support")


def test_names_that_are_not_utf8():
    data = _model([_unary()], [X], [Y]).SerializeToString().replace(b"Relu", b"Re\xffu")
    m = onnx.ModelProto()
    m.ParseFromString(data)  # protobuf hands the invalid text back as bytes
    _refused(m, r"the op_type of node #0 in the main graph is not valid UTF-8 text \(b'Re\\xffu'\)")


def test_onnx_checker_messages_stay_on_one_line():
    m = _model([helper.make_node("Relu", ["x", "x"], ["y"], name="two")], [X], [Y])
    assert "Name: two" in _refused(m, "invalid ONNX model: Node\\(two\\)")


def test_checked_models_are_not_changed_in_place():
    m = _model([_unary("a", "y", name="second"), _unary("x", "a", name="first")], [X], [Y])
    before = m.SerializeToString()
    edlc.load_onnx(m)
    assert m.SerializeToString() == before


@pytest.mark.parametrize("shape, match", [(("n", 4), "a shape is a sequence of ints"),
                                          ((2**70, 4), "would take"), ((-1, 4), "negative dim -1")])
def test_bindings_are_checked_like_declared_shapes(shape, match):
    m = _model([_unary()], [tensor_info("x", ["n", 4])], [tensor_info("y", ["n", 4])])
    with pytest.raises((ShapeError, ModelError), match=match):
        edlc.load_onnx(m, {"x": shape})


def test_einsum_equations_are_parsed_first():
    """onnx's shape inference never returns on some malformed equations."""
    node = helper.make_node("Einsum", ["x"], ["y"], name="sum", equation="...ii />...i")
    _refused(_model([node], [tensor_info("x", [3, 5, 5])], [tensor_info("y", [3, 5])]),
             r"node 'sum' \(Einsum\): attribute 'equation': '...ii />...i' is not an einsum equation")
