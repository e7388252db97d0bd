import numpy as np

import edlc
from edlc.ir.graph import Graph
from edlc.ir.types import TensorType
from edlc.pass_manager import PassManager, available_passes
from tests.conftest import assert_matches_ort, parse

HEAD = '<ir_version: 8, opset_import: ["" : 17]>'
CSE = "eliminate-common-subexpressions"


def after_cse(text: str) -> tuple:
    """The parsed model and its graph after CSE (verified)."""
    model = parse(HEAD + text)
    return model, run_cse(edlc.load_onnx(model))


def run_cse(g: Graph) -> Graph:
    return PassManager([CSE], verify_each=True).run(g)


def ops(g: Graph) -> list[str]:
    return [n.op for n in g.nodes]


def check_numerics(model, g: Graph, rng: np.random.Generator, **extra: np.ndarray) -> None:
    """The graph after CSE alone (no further passes) computes what onnxruntime does."""
    inputs = {v.name: rng.standard_normal(v.type.shape).astype(v.type.dtype)
              for v in g.inputs if v.name not in extra}
    assert_matches_ort(edlc.compile(g, passes=[]), model, {**inputs, **extra})


def test_registered_at_o1():
    assert available_passes()[CSE].min_opt_level == 1


def test_duplicate_nodes_merge_transitively(rng):
    model, g = after_cse("""
    g (float[2, 3] x) => (float[2, 3] y) {
        a1 = Exp(x)
        a2 = Exp(x)
        b1 = Neg(a1)
        b2 = Neg(a2)
        y = Sub(b1, b2)
    }""")
    assert ops(g) == ["Exp", "Neg", "Sub"]
    sub = g.nodes[2]
    assert sub.inputs[0] is sub.inputs[1]
    check_numerics(model, g, rng)


def test_commutative_operands_in_either_order_merge(rng):
    model, g = after_cse("""
    g (float[4] x, float[4] z) => (float[4] y) {
        a = Add(x, z)
        b = Add(z, x)
        c = Sub(x, z)
        d = Sub(z, x)
        e = Mul(a, c)
        f = Mul(b, d)
        y = Add(e, f)
    }""")
    assert ops(g) == ["Add", "Sub", "Sub", "Mul", "Mul", "Add"]
    check_numerics(model, g, rng)


def test_different_attributes_keep_nodes_apart(rng):
    model, g = after_cse("""
    g (float[2, 3] x) => (float[2, 3] y, float[2, 3] z, float[2, 3] w) {
        a = LeakyRelu <alpha = 0.1> (x)
        b = LeakyRelu <alpha = 0.2> (x)
        c = LeakyRelu <alpha = 0.1> (x)
        y = Add(a, b)
        s0 = Softmax <axis = 0> (x)
        s1 = Softmax <axis = 1> (x)
        s2 = Softmax <axis = 1> (x)
        z = Add(s0, s1)
        w = Sub(s2, c)
    }""")
    assert ops(g) == ["LeakyRelu", "LeakyRelu", "Add", "Softmax", "Softmax", "Add", "Sub"]
    w = g.nodes[-1]
    assert w.inputs[0] is g.nodes[4].outputs[0] and w.inputs[1] is g.nodes[0].outputs[0]
    check_numerics(model, g, rng)


def test_list_attributes_compare_by_value(rng):
    model, g = after_cse("""
    g (float[2, 3, 4] x) => (float[3, 4, 2] y, float[4, 2, 3] z) {
        a = Transpose <perm = [1, 2, 0]> (x)
        b = Transpose <perm = [1, 2, 0]> (x)
        c = Transpose <perm = [2, 0, 1]> (x)
        y = Add(a, b)
        z = Relu(c)
    }""")
    assert ops(g) == ["Transpose", "Transpose", "Add", "Relu"]
    check_numerics(model, g, rng)


def test_equal_constants_merge_and_their_readers_too(rng):
    model, g = after_cse("""
    g (float[2, 4] x) => (float[2, 4] y) {
        c1 = Constant <value = float[4] {1, 2, 3, 4}> ()
        c2 = Constant <value = float[4] {1, 2, 3, 4}> ()
        a = Mul(x, c1)
        b = Mul(x, c2)
        y = Sub(a, b)
    }""")
    assert ops(g) == ["Mul", "Sub"]
    assert len(g.constants()) == 1
    check_numerics(model, g, rng)


def test_constants_of_other_shape_dtype_or_sign_stay_apart(rng):
    model, g = after_cse("""
    g (float[2, 4] x) => (float[2, 4] y, float[2, 4] z) {
        row = Constant <value = float[4] {1, 1, 1, 1}> ()
        mat = Constant <value = float[1, 4] {1, 1, 1, 1}> ()
        a = Mul(x, row)
        b = Mul(x, mat)
        y = Sub(a, b)
        pz = Constant <value = float {0}> ()
        nz = Constant <value = float {-0.0}> ()
        c = Add(x, pz)
        d = Add(x, nz)
        z = Div(c, d)
    }""")
    assert ops(g) == ["Mul", "Mul", "Sub", "Add", "Add", "Div"]
    check_numerics(model, g, rng)


def test_large_constants_merge_by_content(rng):
    g = Graph("big")
    x = g.add_input("x", TensorType((64, 64), "float32"))
    w = rng.standard_normal((64, 64)).astype(np.float32)
    w_changed = w.copy()
    w_changed[63, 63] += 1
    outs = [g.add_node("MatMul", [x, g.constant(arr, "w")]).outputs[0]
            for arr in (w, w.copy(), w_changed)]
    (y,) = g.add_node("Concat", outs, {"axis": 0}, output_names=["y"]).outputs
    g.outputs.append(y)
    g = run_cse(g)
    assert ops(g) == ["MatMul", "MatMul", "Concat"]
    assert len(g.constants()) == 2
    xin = rng.standard_normal((64, 64)).astype(np.float32)
    got = edlc.compile(g, passes=[]).run({"x": xin})["y"]
    want = np.concatenate([xin @ w, xin @ w, xin @ w_changed])
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_random_ops_are_never_merged():
    _, g = after_cse("""
    g (float[2, 3] x) => (float[2, 3] y) {
        a = RandomNormalLike(x)
        b = RandomNormalLike(x)
        y = Sub(a, b)
    }""")
    assert ops(g) == ["RandomNormalLike", "RandomNormalLike", "Sub"]


def test_two_graph_outputs_keep_their_nodes_and_names(rng):
    model, g = after_cse("""
    g (float[4] x) => (float[4] y, float[4] z) {
        y = Relu(x)
        z = Relu(x)
    }""")
    assert ops(g) == ["Relu", "Relu"]
    assert [v.name for v in g.outputs] == ["y", "z"]
    check_numerics(model, g, rng)


def test_duplicate_that_is_an_output_survives_in_place_of_the_first(rng):
    model, g = after_cse("""
    g (float[4] x) => (float[4] z, float[4] y) {
        a = Relu(x)
        z = Neg(a)
        y = Relu(x)
    }""")
    assert ops(g) == ["Relu", "Neg"]
    assert [v.name for v in g.outputs] == ["z", "y"]
    assert g.nodes[1].inputs[0] is g.outputs[1]
    check_numerics(model, g, rng)


def test_readers_of_a_duplicate_output_move_to_the_first(rng):
    model, g = after_cse("""
    g (float[4] x) => (float[4] y, float[4] z, float[4] w) {
        y = Relu(x)
        z = Relu(x)
        a = Neg(y)
        b = Neg(z)
        w = Add(a, b)
    }""")
    assert ops(g) == ["Relu", "Relu", "Neg", "Add"]
    assert [v.name for v in g.outputs] == ["y", "z", "w"]
    check_numerics(model, g, rng)


def test_subgraphs_are_merged_within_themselves_only(rng):
    model, g = after_cse("""
    g (bool c, float[4] x) => (float[4] y) {
        r = Relu(x)
        y = If(c) <
            then_branch = t () => (float[4] a) {
                p = Relu(x)
                q = Relu(x)
                a = Add(p, q)
            },
            else_branch = e () => (float[4] b) {
                b = Neg(r)
            }
        >
    }""")
    assert ops(g) == ["Relu", "If"]
    then_branch = g.nodes[1].attrs["then_branch"]
    assert ops(then_branch) == ["Relu", "Add"]  # not merged with the outer Relu(x)
    assert then_branch.nodes[0].inputs[0] is g.inputs[1]
    for cond in (True, False):
        check_numerics(model, g, rng, c=np.array(cond))


def test_nodes_with_subgraphs_are_never_merged():
    _, g = after_cse("""
    g (bool c, float[4] x) => (float[4] w) {
        y = If(c) <
            then_branch = t1 () => (float[4] a) { a = Neg(x) },
            else_branch = e1 () => (float[4] b) { b = Relu(x) }
        >
        z = If(c) <
            then_branch = t2 () => (float[4] a2) { a2 = Neg(x) },
            else_branch = e2 () => (float[4] b2) { b2 = Relu(x) }
        >
        w = Add(y, z)
    }""")
    assert ops(g) == ["If", "If", "Add"]


def test_nothing_to_merge_is_not_a_modification():
    pm = PassManager([CSE])
    pm.run(edlc.load_onnx(parse(HEAD + """
    g (float[4] x) => (float[4] y, float[4] z) {
        y = Relu(x)
        z = Relu(x)
    }""")))
    assert not pm.records[0].modified
