import numpy as np

import edlc
from edlc.rewrite import Rule, apply_rules, const, match, op, var
from tests.conftest import ort_run, parse

SILU = """
<ir_version: 8, opset_import: ["" : 17]>
g (float[2, 8] x) => (float[2, 8] y, float[2, 8] z) {
    s = Sigmoid(x)
    y = Mul(s, x)
    t = Sigmoid(y)
    z = Mul(y, t)
}
"""


def silu_rule() -> Rule:
    x = var("x")
    return Rule("fuse-silu", op("Mul", x, op("Sigmoid", x)),
                rewrite=lambda b, m: b.op("Mul", [m["x"], b.op("Sigmoid", [m["x"]])], name="silu"))


def test_same_var_twice_binds_the_same_value_in_either_order():
    g = edlc.load_onnx(parse(SILU))
    mul = g.nodes[1]
    (m,) = match(silu_rule().pattern, mul)
    assert m["x"] is g.inputs[0]
    assert [n.op for n in m.nodes] == ["Mul", "Sigmoid"]


def test_rewrite_keeps_output_names_and_numerics(rng):
    model = parse(SILU)
    g = edlc.load_onnx(model)
    x = var("x")
    rule = Rule("silu-to-swish", op("Mul", x, op("Sigmoid", x)),
                rewrite=lambda b, m: b.op("Div", [m["x"], b.op("Add", [b.constant(np.float32(1)), b.op("Exp", [b.op("Neg", [m["x"]])])])]))
    stats = apply_rules(g, [rule])
    g.verify()
    assert stats.applied == {"silu-to-swish": 2}
    assert [v.name for v in g.outputs] == ["y", "z"]
    assert "Sigmoid" not in g.op_histogram()
    xin = rng.standard_normal((2, 8)).astype(np.float32)
    got = edlc.compile(g).run({"x": xin})
    want = ort_run(model, {"x": xin})
    for k in want:
        np.testing.assert_allclose(got[k], want[k], rtol=1e-5, atol=1e-6)


def test_rejection_names_the_outside_reader():
    model = parse("""
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[4] x) => (float[4] y, float[4] s) {
        s = Sigmoid(x)
        y = Mul(x, s)
    }""")
    g = edlc.load_onnx(model)
    stats = apply_rules(g, [silu_rule()])
    assert not stats.modified
    assert len(stats.rejected) == 1
    assert "'s'" in stats.rejected[0].reason and "graph output" in stats.rejected[0].reason


def test_check_reason_and_constant_predicate():
    model = parse("""
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[4] x) => (float[4] y) {
        one = Constant <value = float[1] {2}> ()
        y = Mul(x, one)
    }""")
    g = edlc.load_onnx(model)
    rule = Rule("mul-by-one", op("Mul", var("x"), const("c")),
                check=lambda m: None if np.all(m["c"].const == 1) else f"factor is {m['c'].const.tolist()}, not 1",
                rewrite=lambda b, m: m["x"])
    stats = apply_rules(g, [rule])
    assert not stats.modified
    (line,) = stats.report()
    assert line.startswith("mul-by-one: Mul ") and line.endswith("not rewritten: factor is [2.0], not 1")


def test_rewrite_to_input_of_graph_output_is_declined():
    model = parse("""
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[4] x) => (float[4] y) {
        y = Identity(x)
    }""")
    g = edlc.load_onnx(model)
    rule = Rule("drop-identity", op("Identity", var("x")), rewrite=lambda b, m: m["x"])
    stats = apply_rules(g, [rule])
    assert not stats.modified and g.outputs[0].name == "y"
    assert "graph output" in stats.rejected[0].reason
