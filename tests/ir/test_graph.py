import networkx as nx
import numpy as np
import pytest

from edlc.errors import ModelError
from edlc.ir import Graph, TensorType


def tiny() -> Graph:
    g = Graph("tiny")
    x = g.add_input("x", TensorType((1, 4), "float32"))
    w = g.constant(np.ones((4, 2), np.float32), "w")
    (m,) = g.add_node("MatMul", [x, w]).outputs
    (r,) = g.add_node("Relu", [m]).outputs
    g.outputs.append(r)
    return g


def test_types_are_inferred_and_use_def_links_kept():
    g = tiny()
    mm, relu = g.nodes
    assert mm.outputs[0].type == TensorType((1, 2), "float32")
    assert mm.outputs[0].users == [relu]
    y = g.add_node("Sigmoid", [g.inputs[0]]).outputs[0]
    relu.set_input(0, y)
    assert mm.outputs[0].users == []
    assert y.uses == [(relu, 0)]
    g.toposort()
    g.verify()


def test_remove_node_refuses_while_used_and_dead_code_goes():
    g = tiny()
    with pytest.raises(ValueError, match="still used"):
        g.remove_node(g.nodes[0])
    g.outputs = [g.nodes[0].outputs[0]]
    g.remove_node(g.nodes[1])
    assert [n.op for n in g.nodes] == ["MatMul"]
    g.verify()


def test_verifier_catches_use_before_definition():
    g = tiny()
    g.nodes.reverse()
    with pytest.raises(ModelError, match="used before it is defined"):
        g.verify()
    g.toposort()
    g.verify()


def test_toposort_reports_cycles():
    g = tiny()
    mm, relu = g.nodes
    mm.set_input(0, relu.outputs[0])
    with pytest.raises(ModelError, match="cycle"):
        g.toposort()


def test_printer_copy_and_networkx():
    g = tiny()
    text = str(g)
    assert "graph tiny(%x: float32[1, 4]) -> (%relu)" in text
    assert "MatMul(%x, %w: const float32[4, 2])" in text
    c = g.copy()
    c.verify()
    assert str(c) == text
    c.nodes[1].op = "Sigmoid"
    assert g.nodes[1].op == "Relu"  # deep copy
    nxg = g.to_networkx()
    assert isinstance(nxg, nx.DiGraph) and list(nx.topological_sort(nxg)) == g.nodes


def test_freeze_input_makes_a_constant():
    g = Graph("f")
    x = g.add_input("x", TensorType((2,), "float32"))
    s = g.add_input("shape", TensorType((2,), "int64"))
    (y,) = g.add_node("Reshape", [x, s], output_types=[TensorType(None, "float32")]).outputs
    g.outputs.append(y)
    g.freeze_input("shape", np.array([1, 2], np.int64))
    assert [v.name for v in g.inputs] == ["x"]
    assert g.nodes[0].inputs[1].is_constant
    with pytest.raises(ModelError, match="expects"):
        g.freeze_input("x", np.zeros((3,), np.float32))


def test_unique_names():
    g = tiny()
    assert g.unique_name("x") != "x"
    n = g.add_node("Relu", [g.outputs[0]], name="Relu")
    assert n.name != g.nodes[1].name
