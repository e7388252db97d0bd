import numpy as np

import edlc
from edlc.pass_manager import PassManager
from tests.conftest import ort_run, parse

SHAPE_CHAIN = """
<ir_version: 8, opset_import: ["" : 17]>
g (float[B, S, 8] x) => (float[B, S2] y) {
    s = Shape(x)
    i0 = Constant <value = int64[1] {0}> ()
    b = Gather <axis = 0> (s, i0)
    minus1 = Constant <value = int64[1] {-1}> ()
    t = Concat <axis = 0> (b, minus1)
    y = Reshape(x, t)
}
"""


def test_shape_chain_becomes_static_after_binding(rng):
    model = parse(SHAPE_CHAIN)
    g = edlc.load_onnx(model, {"x": (2, 3, 8)})
    pm = PassManager(["fold-constants", "eliminate-dead-code"], verify_each=True)
    g = pm.run(g)
    assert [n.op for n in g.nodes] == ["Reshape"]
    np.testing.assert_array_equal(g.nodes[0].inputs[1].const, [2, -1])
    assert g.outputs[0].type.shape == (2, 24)
    x = rng.standard_normal((2, 3, 8)).astype(np.float32)
    m = edlc.compile(model, input_shapes={"x": (2, 3, 8)})
    np.testing.assert_array_equal(m.run({"x": x})["y"], ort_run(model, {"x": x})["y"])


def test_large_broadcasts_are_not_folded():
    model = parse("""
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[1] x) => (float[1024, 1024] y) {
        shape = Constant <value = int64[2] {1024, 1024}> ()
        big = ConstantOfShape <value = float[1] {1}> (shape)
        y = Add(big, x)
    }""")
    g = PassManager(["fold-constants"]).run(edlc.load_onnx(model))
    assert [n.op for n in g.nodes] == ["ConstantOfShape", "Add"]


def test_constant_subgraph_is_evaluated():
    model = parse("""
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[3] x) => (float[3] y) {
        a = Constant <value = float[3] {1, 2, 3}> ()
        b = Exp(a)
        c = Mul(b, a)
        y = Add(x, c)
    }""")
    g = PassManager(["fold-constants", "eliminate-dead-code"]).run(edlc.load_onnx(model))
    assert [n.op for n in g.nodes] == ["Add"]
    np.testing.assert_allclose(g.nodes[0].inputs[1].const, np.exp([1, 2, 3]) * [1, 2, 3], rtol=1e-6)
