import numpy as np
import pytest

import edlc
from edlc import passes
from edlc.ir.graph import Graph
from edlc.pass_manager import PassManager, available_passes
from tests.conftest import assert_matches_ort, parse

HEAD = '<ir_version: 8, opset_import: ["" : 17]>'


def simplified(text: str) -> tuple:
    """The parsed model and its graph after `simplify` (verified)."""
    model = parse(HEAD + text)
    pm = PassManager(["simplify"], verify_each=True)
    return model, pm.run(edlc.load_onnx(model))


def ops(g: Graph) -> list[str]:
    return [n.op for n in g.nodes]


def random_inputs(g: Graph, rng: np.random.Generator) -> dict[str, np.ndarray]:
    out = {}
    for v in g.inputs:
        shape = v.type.shape
        if v.type.dtype == "bool":
            out[v.name] = rng.random(shape) < 0.5
        elif v.type.dtype.startswith(("int", "uint")):
            out[v.name] = rng.integers(-50, 50, shape).astype(v.type.dtype)
        else:
            out[v.name] = rng.standard_normal(shape).astype(v.type.dtype)
    return out


def check_numerics(model, g: Graph, rng: np.random.Generator) -> None:
    """The simplified graph alone (no further passes) computes what onnxruntime does."""
    assert_matches_ort(edlc.compile(g, passes=[]), model, random_inputs(g, rng))


def test_registered_at_o1_as_fixed_point():
    info = available_passes()["simplify"]
    assert info.min_opt_level == 1 and info.fixed_point


# ---- Identity and Dropout ------------------------------------------------------------------------
def test_identity_is_removed(rng):
    model, g = simplified("""
    g (float[2, 3] x) => (float[2, 3] y) {
        r = Relu(x)
        i = Identity(r)
        y = Neg(i)
    }""")
    assert ops(g) == ["Relu", "Neg"]
    check_numerics(model, g, rng)


def test_identity_producing_an_output_keeps_the_output_name(rng):
    model, g = simplified("""
    g (float[2, 3] x) => (float[2, 3] y) {
        r = Relu(x)
        y = Identity(r)
    }""")
    assert ops(g) == ["Relu"]
    assert [v.name for v in g.outputs] == ["y"]
    check_numerics(model, g, rng)


def test_identity_from_input_to_output_is_kept(rng):
    model, g = simplified("""
    g (float[2, 3] x) => (float[2, 3] y, float[2, 3] z) {
        y = Identity(x)
        z = Relu(x)
    }""")
    assert ops(g) == ["Identity", "Relu"]
    assert [v.name for v in g.outputs] == ["y", "z"]
    assert g.outputs[0] is not g.inputs[0]
    check_numerics(model, g, rng)


@pytest.mark.parametrize("call", [
    "d = Dropout(r)",
    "d = Dropout(r, ratio)",
    "d, mask = Dropout(r, ratio)",
    "d = Dropout(r, ratio, no)",
])
def test_inference_dropout_is_removed(call, rng):
    model, g = simplified(f"""
    g (float[2, 3] x) => (float[2, 3] y) {{
        ratio = Constant <value = float {{0.5}}> ()
        no = Constant <value = bool {{0}}> ()
        r = Relu(x)
        {call}
        y = Neg(d)
    }}""")
    assert ops(g) == ["Relu", "Neg"]
    check_numerics(model, g, rng)


def test_dropout_whose_mask_is_used_is_kept():
    _, g = simplified("""
    g (float[2, 3] x) => (float[2, 3] y, bool[2, 3] mask) {
        r = Relu(x)
        d, mask = Dropout(r)
        y = Neg(d)
    }""")
    assert ops(g) == ["Relu", "Dropout", "Neg"]


def test_training_dropout_is_kept():
    _, g = simplified("""
    g (float[2, 3] x, bool train) => (float[2, 3] y) {
        ratio = Constant <value = float {0.5}> ()
        d = Dropout(x, ratio, train)
        y = Neg(d)
    }""")
    assert ops(g) == ["Dropout", "Neg"]


# ---- Cast --------------------------------------------------------------------------------------
def test_cast_to_the_same_dtype_is_removed(rng):
    model, g = simplified("""
    g (float[4] x) => (float[4] y) {
        c = Cast <to = 1> (x)
        y = Relu(c)
    }""")
    assert ops(g) == ["Relu"]
    check_numerics(model, g, rng)


def test_exact_round_trip_cast_chain_is_removed(rng):
    model, g = simplified("""
    g (float[4] x) => (float[4] y) {
        wide = Cast <to = 11> (x)
        back = Cast <to = 1> (wide)
        y = Relu(back)
    }""")
    assert ops(g) == ["Relu"]
    check_numerics(model, g, rng)


def test_exact_widening_then_cast_becomes_one_cast(rng):
    model, g = simplified("""
    g (int8[4] x) => (float[4] y) {
        wide = Cast <to = 6> (x)
        y = Cast <to = 1> (wide)
    }""")
    assert ops(g) == ["Cast"]
    assert g.nodes[0].inputs[0] is g.inputs[0]
    assert [v.name for v in g.outputs] == ["y"]
    check_numerics(model, g, rng)


def test_int_float_int_cast_chain_is_kept(rng):
    model, g = simplified("""
    g (int32[4] x) => (int32[4] y) {
        f = Cast <to = 1> (x)
        y = Cast <to = 6> (f)
    }""")
    assert ops(g) == ["Cast", "Cast"]
    check_numerics(model, g, rng)


def test_narrowing_float_cast_chain_is_kept():
    _, g = simplified("""
    g (float[4] x) => (float[4] y) {
        h = Cast <to = 10> (x)
        y = Cast <to = 1> (h)
    }""")
    assert ops(g) == ["Cast", "Cast"]


@pytest.mark.parametrize(("src", "dst", "exact"), [
    ("float32", "float64", True), ("float16", "float32", True), ("bfloat16", "float32", True),
    ("float64", "float32", False), ("float16", "bfloat16", False), ("int32", "float32", False),
    ("int32", "float64", True), ("int64", "float64", False), ("int8", "float16", True),
    ("uint8", "int16", True), ("int8", "uint16", False), ("int64", "int32", False),
    ("bool", "float32", True), ("float32", "int32", False), ("int32", "bool", False),
])
def test_cast_exactness(src, dst, exact):
    assert passes.simplify.cast_is_exact(src, dst) is exact


# ---- Transpose ---------------------------------------------------------------------------------
def test_identity_transpose_is_removed(rng):
    model, g = simplified("""
    g (float[2, 3, 4] x) => (float[2, 3, 4] y) {
        t = Transpose <perm = [0, 1, 2]> (x)
        y = Relu(t)
    }""")
    assert ops(g) == ["Relu"]
    check_numerics(model, g, rng)


def test_transpose_pair_becomes_one_transpose(rng):
    model, g = simplified("""
    g (float[2, 3, 4] x) => (float[3, 4, 2] y) {
        t = Transpose <perm = [1, 0, 2]> (x)
        y = Transpose <perm = [0, 2, 1]> (t)
    }""")
    assert ops(g) == ["Transpose"]
    assert g.nodes[0].attrs["perm"] == [1, 2, 0]
    assert g.outputs[0].name == "y" and g.outputs[0].type.shape == (3, 4, 2)
    check_numerics(model, g, rng)


def test_transposes_that_cancel_are_removed(rng):
    model, g = simplified("""
    g (float[2, 3, 4] x) => (float[2, 3, 4] y) {
        t = Transpose (x)
        u = Transpose <perm = [2, 1, 0]> (t)
        y = Relu(u)
    }""")
    assert ops(g) == ["Relu"]
    check_numerics(model, g, rng)


def test_transpose_pair_whose_inner_has_other_readers(rng):
    model, g = simplified("""
    g (float[2, 3] x) => (float[3, 2] z, float[2, 3] y) {
        z = Transpose <perm = [1, 0]> (x)
        u = Transpose <perm = [1, 0]> (z)
        y = Relu(u)
    }""")
    assert ops(g) == ["Transpose", "Relu"]
    assert g.nodes[1].inputs[0] is g.inputs[0]
    check_numerics(model, g, rng)


# ---- reshape-like ops --------------------------------------------------------------------------
def test_reshape_to_the_same_shape_is_removed(rng):
    model, g = simplified("""
    g (float[2, 3] x) => (float[2, 3] y) {
        s = Constant <value = int64[2] {2, -1}> ()
        r = Reshape(x, s)
        y = Relu(r)
    }""")
    assert ops(g) == ["Relu"]
    check_numerics(model, g, rng)


def test_reshape_pair_becomes_one_reshape(rng):
    model, g = simplified("""
    g (float[2, 3, 4] x) => (float[4, 6] y) {
        s1 = Constant <value = int64[2] {6, 4}> ()
        s2 = Constant <value = int64[2] {4, 6}> ()
        a = Reshape(x, s1)
        y = Reshape(a, s2)
    }""")
    assert ops(g) == ["Reshape"]
    assert g.nodes[0].inputs[0] is g.inputs[0]
    np.testing.assert_array_equal(g.nodes[0].inputs[1].const, [4, 6])
    check_numerics(model, g, rng)


def test_reshape_pair_with_symbolic_dims_keeps_the_outer_shape():
    _, g = simplified("""
    g (float[N, 3, 4] x) => (float[M, 6] y) {
        s1 = Constant <value = int64[2] {-1, 4}> ()
        s2 = Constant <value = int64[2] {-1, 6}> ()
        a = Reshape(x, s1)
        y = Reshape(a, s2)
    }""")
    assert ops(g) == ["Reshape"]
    assert g.nodes[0].inputs[0] is g.inputs[0]
    np.testing.assert_array_equal(g.nodes[0].inputs[1].const, [-1, 6])


def test_reshape_pair_with_copied_dim_and_symbolic_shape_is_kept():
    _, g = simplified("""
    g (float[N, 12] x) => (float[N, 3, 4] y) {
        s1 = Constant <value = int64[3] {0, 4, 3}> ()
        s2 = Constant <value = int64[3] {0, 3, 4}> ()
        a = Reshape(x, s1)
        y = Reshape(a, s2)
    }""")
    assert ops(g) == ["Reshape", "Reshape"]


def test_unsqueeze_squeeze_pair_cancels_with_symbolic_dims():
    _, g = simplified("""
    g (float[N, 4] x) => (float[N, 4] y) {
        axes = Constant <value = int64[1] {1}> ()
        u = Unsqueeze(x, axes)
        s = Squeeze(u, axes)
        y = Relu(s)
    }""")
    assert ops(g) == ["Relu"]
    assert g.nodes[0].inputs[0] is g.inputs[0]


def test_squeeze_unsqueeze_pair_cancels(rng):
    model, g = simplified("""
    g (float[2, 1, 4] x) => (float[2, 1, 4] y) {
        axes = Constant <value = int64[1] {-2}> ()
        s = Squeeze(x, axes)
        u = Unsqueeze(s, axes)
        y = Relu(u)
    }""")
    assert ops(g) == ["Relu"]
    check_numerics(model, g, rng)


def test_unsqueeze_squeeze_on_other_axes_is_kept():
    _, g = simplified("""
    g (float[N, 1] x) => (float[1, N] y) {
        a0 = Constant <value = int64[1] {0}> ()
        a2 = Constant <value = int64[1] {2}> ()
        u = Unsqueeze(x, a0)
        y = Squeeze(u, a2)
    }""")
    assert ops(g) == ["Unsqueeze", "Squeeze"]


def test_flatten_to_the_same_shape_is_removed(rng):
    model, g = simplified("""
    g (float[2, 3] x) => (float[2, 3] y) {
        f = Flatten <axis = 1> (x)
        y = Relu(f)
    }""")
    assert ops(g) == ["Relu"]
    check_numerics(model, g, rng)


# ---- neutral elements --------------------------------------------------------------------------
@pytest.mark.parametrize("expr", [
    "Mul(x, c1)", "Mul(c1, x)", "Add(x, c0)", "Add(c0, x)", "Sub(x, c0)", "Div(x, c1)",
    "Pow(x, c1)", "Mul(x, one_row)", "Add(x, zeros)",
])
def test_neutral_element_is_removed(expr, rng):
    model, g = simplified(f"""
    g (float[2, 4] x) => (float[2, 4] y) {{
        c0 = Constant <value = float {{0}}> ()
        c1 = Constant <value = float[1] {{1}}> ()
        one_row = Constant <value = float[1, 4] {{1, 1, 1, 1}}> ()
        zeros = Constant <value = float[2, 4] {{0, 0, 0, 0, 0, 0, 0, 0}}> ()
        t = {expr}
        y = Relu(t)
    }}""")
    assert ops(g) == ["Relu"]
    assert g.nodes[0].inputs[0] is g.inputs[0]
    check_numerics(model, g, rng)


def test_integer_neutral_element_is_removed(rng):
    model, g = simplified("""
    g (int32[3] x) => (int32[3] y) {
        one = Constant <value = int32[3] {1, 1, 1}> ()
        t = Mul(x, one)
        y = Abs(t)
    }""")
    assert ops(g) == ["Abs"]
    check_numerics(model, g, rng)


def test_zero_that_broadcasts_to_a_larger_shape_is_kept(rng):
    model, g = simplified("""
    g (float[4] x) => (float[2, 4] y) {
        zeros = Constant <value = float[2, 4] {0, 0, 0, 0, 0, 0, 0, 0}> ()
        t = Add(x, zeros)
        y = Relu(t)
    }""")
    assert ops(g) == ["Add", "Relu"]
    assert g.outputs[0].type.shape == (2, 4)
    check_numerics(model, g, rng)


def test_non_neutral_constants_and_operand_order_are_respected(rng):
    model, g = simplified("""
    g (float[4] x) => (float[4] y, float[4] z, float[4] w) {
        c0 = Constant <value = float {0}> ()
        c1 = Constant <value = float {1}> ()
        two = Constant <value = float[4] {1, 1, 2, 1}> ()
        y = Mul(x, two)
        z = Sub(c0, x)
        w = Div(c1, x)
    }""")
    assert ops(g) == ["Mul", "Sub", "Div"]
    check_numerics(model, g, rng)


def test_neutral_element_on_a_graph_input_output_is_kept(rng):
    model, g = simplified("""
    g (float[4] x) => (float[4] y) {
        c1 = Constant <value = float {1}> ()
        y = Mul(x, c1)
    }""")
    assert ops(g) == ["Mul"]
    assert [v.name for v in g.outputs] == ["y"]
    check_numerics(model, g, rng)


# ---- shape no-ops ------------------------------------------------------------------------------
@pytest.mark.parametrize("expr", [
    "Expand(x, shape_same)", "Expand(x, shape_ones)", "Concat <axis = 0> (x)", "Sum(x)",
    "Slice(x, starts, ends_big, axes)", "Slice(x, starts, ends_dims)", "Pad(x, pads)",
    "Tile(x, repeats)",
])
def test_shape_no_op_is_removed(expr, rng):
    model, g = simplified(f"""
    g (float[2, 3] x) => (float[2, 3] y) {{
        shape_same = Constant <value = int64[2] {{2, 3}}> ()
        shape_ones = Constant <value = int64[1] {{1}}> ()
        starts = Constant <value = int64[2] {{0, -3}}> ()
        ends_big = Constant <value = int64[2] {{9223372036854775807, 3}}> ()
        ends_dims = Constant <value = int64[2] {{2, 100}}> ()
        axes = Constant <value = int64[2] {{0, 1}}> ()
        pads = Constant <value = int64[4] {{0, 0, 0, 0}}> ()
        repeats = Constant <value = int64[2] {{1, 1}}> ()
        t = {expr}
        y = Relu(t)
    }}""")
    assert ops(g) == ["Relu"]
    check_numerics(model, g, rng)


@pytest.mark.parametrize(("expr", "shape"), [
    ("Expand(x, shape_wide)", "4, 2, 3"), ("Slice(x, starts, ends_short)", "1, 3"),
    ("Pad(x, pads)", "2, 4"), ("Tile(x, repeats)", "2, 6"), ("Concat <axis = 0> (x, x)", "4, 3"),
])
def test_shape_changing_op_is_kept(expr, shape, rng):
    model, g = simplified(f"""
    g (float[2, 3] x) => (float[{shape}] y) {{
        shape_wide = Constant <value = int64[3] {{4, 2, 3}}> ()
        starts = Constant <value = int64[1] {{0}}> ()
        ends_short = Constant <value = int64[1] {{1}}> ()
        pads = Constant <value = int64[4] {{0, 1, 0, 0}}> ()
        repeats = Constant <value = int64[2] {{1, 2}}> ()
        t = {expr}
        y = Relu(t)
    }}""")
    assert len(g.nodes) == 2
    check_numerics(model, g, rng)


def test_slice_of_a_symbolic_dim_needs_an_open_end():
    _, g = simplified("""
    g (float[N] x) => (float[M] y, float[K] z) {
        starts = Constant <value = int64[1] {0}> ()
        open_end = Constant <value = int64[1] {9223372036854775807}> ()
        some_end = Constant <value = int64[1] {1000}> ()
        a = Slice(x, starts, open_end)
        y = Relu(a)
        b = Slice(x, starts, some_end)
        z = Relu(b)
    }""")
    assert ops(g) == ["Relu", "Slice", "Relu"]


# ---- double ops --------------------------------------------------------------------------------
def test_double_negation_and_idempotent_ops(rng):
    model, g = simplified("""
    g (float[4] x, bool[4] b) => (float[4] y, bool[4] c, float[4] z) {
        n1 = Neg(x)
        n2 = Neg(n1)
        y = Abs(n2)
        b1 = Not(b)
        b2 = Not(b1)
        c = And(b2, b)
        r1 = Relu(x)
        r2 = Relu(r1)
        z = Relu(r2)
    }""")
    assert ops(g) == ["Abs", "And", "Relu"]
    assert g.nodes[0].inputs[0] is g.inputs[0]
    assert [v.name for v in g.outputs] == ["y", "c", "z"]
    assert g.nodes[-1].outputs[0] is g.outputs[2]
    check_numerics(model, g, rng)


def test_different_unary_ops_in_a_row_are_kept():
    _, g = simplified("""
    g (float[4] x) => (float[4] y) {
        a = Neg(x)
        b = Abs(a)
        c = Relu(b)
        y = Neg(c)
    }""")
    assert ops(g) == ["Neg", "Abs", "Relu", "Neg"]


# ---- graph outputs, subgraphs, the pipeline ----------------------------------------------------
def test_chain_collapses_to_a_fixed_point(rng):
    model, g = simplified("""
    g (float[2, 3] x) => (float[3, 2] y) {
        t = Transpose <perm = [1, 0]> (x)
        u = Transpose <perm = [1, 0]> (t)
        c = Cast <to = 11> (u)
        d = Cast <to = 1> (c)
        one = Constant <value = float[1] {1}> ()
        e = Mul(one, d)
        f = Identity(e)
        y = Transpose <perm = [1, 0]> (f)
    }""")
    assert ops(g) == ["Transpose"]
    assert g.outputs[0].name == "y"
    check_numerics(model, g, rng)


def test_subgraph_output_is_not_replaced_by_an_outer_value(rng):
    model, g = simplified("""
    g (bool c, float[4] x) => (float[4] y) {
        r = Relu(x)
        y = If(c) <
            then_branch = t () => (float[4] a) {
                a = Identity(r)
            },
            else_branch = e () => (float[4] b) {
                n = Neg(r)
                m = Identity(n)
                one = Constant <value = float {1}> ()
                b = Mul(m, one)
            }
        >
    }""")
    then_branch, else_branch = g.nodes[1].attrs["then_branch"], g.nodes[1].attrs["else_branch"]
    assert ops(then_branch) == ["Identity"]
    assert ops(else_branch) == ["Neg"]
    assert else_branch.outputs[0].name == "b"
    for cond in (True, False):
        inputs = {"c": np.array(cond), "x": rng.standard_normal(4).astype(np.float32)}
        assert_matches_ort(edlc.compile(g, passes=[]), model, inputs)


def test_report_is_empty_and_unchanged_graph_is_not_modified():
    pm = PassManager(["simplify"])
    pm.run(edlc.load_onnx(parse(HEAD + """
    g (float[4] x) => (float[4] y) {
        two = Constant <value = float {2}> ()
        y = Mul(x, two)
    }""")))
    (record,) = pm.records
    assert not record.modified and record.report == []


# ---- Gemm with a constant transposed weight ----------------------------------------------------
def test_gemm_weight_is_transposed_once_at_compile_time(rng):
    w = ", ".join(str(round(v, 3)) for v in np.linspace(-1, 1, 12))
    model, g = simplified(f"""
    g (float[2, 4] x) => (float[2, 3] y) <float[3, 4] w = {{{w}}}, float[3] b = {{0.5, -1, 2}}> {{
        y = Gemm<transB = 1, alpha = 0.5>(x, w, b)
    }}""")
    (gemm,) = g.nodes
    assert gemm.attrs["transB"] == 0 and gemm.inputs[1].const.shape == (4, 3)
    check_numerics(model, g, rng)
