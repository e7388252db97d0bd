"""The verifier on graphs built by hand (the API accepts an edlc.Graph): broken links, types
that do not fit their constants, malformed dims; compile verifies such a graph on entry."""

import pytest

import edlc
from edlc.errors import ModelError
from edlc.ir import Graph, TensorType, Value
from tests.ir.test_graph import tiny


def test_a_constant_must_fit_its_type():
    g = tiny()
    w = g.nodes[0].inputs[1]
    w.type = TensorType((2, 4), "float32")
    with pytest.raises(ModelError, match=r"constant 'w' .* holds an array of shape \[4, 2\] but is typed float32\[2, 4\]"):
        g.verify()


@pytest.mark.parametrize("shape", [(1, -4), (1, ""), (1, 2.5)])
def test_malformed_dims(shape):
    g = tiny()
    g.inputs[0].type = TensorType(shape, "float32")
    with pytest.raises(ModelError, match="value 'x' .* has a malformed shape"):
        g.verify()


def test_compile_verifies_a_hand_built_graph_first():
    g = tiny()
    ghost = Value("ghost", TensorType((1, 4), "float32"))  # produced by nothing
    g.nodes[0].set_input(0, ghost)
    with pytest.raises(ModelError, match=r"node 'MatMul' \(MatMul\): input 0 'ghost' is used before it is defined or is dangling"):
        edlc.compile(g)


def test_binding_a_hand_built_graph_checks_the_size():
    g = Graph("g")
    x = g.add_input("x", TensorType(("n", 4), "float32"))
    g.outputs.append(g.add_node("Relu", [x]).outputs[0])
    with pytest.raises(edlc.EdlcError, match=r"input 'x' bound to \[-1, 4\] has a negative dim"):
        edlc.compile(g, input_shapes={"x": (-1, 4)})
