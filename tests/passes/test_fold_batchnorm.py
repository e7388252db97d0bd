import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import edlc
from edlc.pass_manager import PassManager
from edlc.testing import zoo
from tests.conftest import ort_run

PIPELINE = ["fold-batchnorm", "fold-scale-bias"]


def model(nodes: list[onnx.NodeProto], inputs: dict[str, tuple], outputs: dict[str, tuple],
          inits: dict[str, np.ndarray]) -> onnx.ModelProto:
    """A float32 opset-17 model whose constants are initializers."""
    graph = helper.make_graph(
        nodes, "g",
        [helper.make_tensor_value_info(k, TensorProto.FLOAT, s) for k, s in inputs.items()],
        [helper.make_tensor_value_info(k, TensorProto.FLOAT, s) for k, s in outputs.items()],
        initializer=[numpy_helper.from_array(np.asarray(v), k) for k, v in inits.items()])
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    onnx.checker.check_model(m)
    return m


def bn_params(rng: np.random.Generator, c: int, prefix: str = "bn") -> dict[str, np.ndarray]:
    f = np.float32
    return {f"{prefix}.scale": rng.uniform(0.5, 1.5, c).astype(f),
            f"{prefix}.bias": rng.standard_normal(c).astype(f),
            f"{prefix}.mean": rng.standard_normal(c).astype(f),
            f"{prefix}.var": rng.uniform(0.5, 2.0, c).astype(f)}


def bn_node(x: str, y: str, prefix: str = "bn") -> onnx.NodeProto:
    ins = [x] + [f"{prefix}.{p}" for p in ("scale", "bias", "mean", "var")]
    return helper.make_node("BatchNormalization", ins, [y], name=prefix, epsilon=1e-3)


def randn(rng: np.random.Generator, *shape: int) -> np.ndarray:
    return rng.standard_normal(shape).astype(np.float32)


def fold(m: onnx.ModelProto, input_shapes=None) -> tuple[edlc.Graph, PassManager]:
    pm = PassManager(PIPELINE, verify_each=True)
    return pm.run(edlc.load_onnx(m, input_shapes)), pm


def report(pm: PassManager) -> list[str]:
    return [line for r in pm.records for line in r.report]


def ops(g: edlc.Graph) -> list[str]:
    return [n.op for n in g.nodes]


def assert_numerics(g: edlc.Graph, m: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> None:
    got = edlc.compile(g, passes=[]).run(feeds)
    want = ort_run(m, feeds)
    assert list(got) == list(want)
    for name in want:
        np.testing.assert_allclose(got[name], want[name], rtol=1e-4, atol=1e-5, err_msg=name)


# ---- BatchNormalization ----------------------------------------------------------------------


@pytest.mark.parametrize("group, bias", [(1, True), (1, False), (2, False), (8, True)],
                         ids=["bias", "no-bias", "grouped", "depthwise"])
def test_conv_bn_becomes_one_conv(rng, group, bias):
    inits = {"w": randn(rng, 8, 8 // group, 3, 3), **bn_params(rng, 8)}
    conv_in = ["x", "w"]
    if bias:
        inits["b"] = randn(rng, 8)
        conv_in.append("b")
    m = model([helper.make_node("Conv", conv_in, ["c"], name="conv", group=group, pads=[1] * 4),
               bn_node("c", "y")],
              {"x": (1, 8, 6, 6)}, {"y": (1, 8, 6, 6)}, inits)
    g, pm = fold(m)
    assert ops(g) == ["Conv"]
    assert g.nodes[0].name == "conv" and g.nodes[0].attrs["group"] == group
    assert [v.name for v in g.outputs] == ["y"]
    assert report(pm) == []
    assert_numerics(g, m, {"x": randn(rng, 1, 8, 6, 6)})


@pytest.mark.parametrize("trans_b", [0, 1])
def test_gemm_bn_becomes_one_gemm(rng, trans_b):
    w = randn(rng, 6, 5) if trans_b else randn(rng, 5, 6)
    inits = {"w": w, "c": randn(rng, 6), **bn_params(rng, 6)}
    gemm = helper.make_node("Gemm", ["x", "w", "c"], ["g"], name="fc", transB=trans_b,
                            alpha=0.5, beta=2.0)
    m = model([gemm, bn_node("g", "y")], {"x": (3, 5)}, {"y": (3, 6)}, inits)
    g, _ = fold(m)
    assert ops(g) == ["Gemm"]
    assert g.nodes[0].attrs["alpha"] == 1.0 and g.nodes[0].attrs["beta"] == 1.0
    assert_numerics(g, m, {"x": randn(rng, 3, 5)})


def test_gemm_without_c_gets_a_bias(rng):
    inits = {"w": randn(rng, 5, 6), **bn_params(rng, 6)}
    m = model([helper.make_node("Gemm", ["x", "w"], ["g"], name="fc"), bn_node("g", "y")],
              {"x": (3, 5)}, {"y": (3, 6)}, inits)
    g, _ = fold(m)
    assert ops(g) == ["Gemm"] and len(g.nodes[0].inputs) == 3
    assert_numerics(g, m, {"x": randn(rng, 3, 5)})


def test_matmul_bn_becomes_gemm(rng):
    inits = {"w": randn(rng, 5, 6), **bn_params(rng, 6)}
    m = model([helper.make_node("MatMul", ["x", "w"], ["mm"], name="mm"), bn_node("mm", "y")],
              {"x": (4, 5)}, {"y": (4, 6)}, inits)
    g, _ = fold(m)
    assert ops(g) == ["Gemm"]
    assert_numerics(g, m, {"x": randn(rng, 4, 5)})


def test_matmul_add_bn_becomes_gemm(rng):
    inits = {"w": randn(rng, 5, 6), "b": randn(rng, 6), **bn_params(rng, 6)}
    m = model([helper.make_node("MatMul", ["x", "w"], ["mm"], name="mm"),
               helper.make_node("Add", ["mm", "b"], ["a"], name="add"), bn_node("a", "y")],
              {"x": (4, 5)}, {"y": (4, 6)}, inits)
    g, _ = fold(m)
    assert ops(g) == ["Gemm"]
    assert_numerics(g, m, {"x": randn(rng, 4, 5)})


def test_matmul_bn_over_rows_is_rejected(rng):
    # [B, C, N] MatMul output: BN normalizes C, which the weight's columns do not index.
    inits = {"w": randn(rng, 5, 6), **bn_params(rng, 3)}
    m = model([helper.make_node("MatMul", ["x", "w"], ["mm"], name="mm"), bn_node("mm", "y")],
              {"x": (2, 3, 5)}, {"y": (2, 3, 6)}, inits)
    g, pm = fold(m)
    assert ops(g) == ["MatMul", "BatchNormalization"]
    (line,) = report(pm)
    assert line.startswith("fold-bn-into-matmul: BatchNormalization 'bn' not rewritten")
    assert "normalizes axis 1 of the MatMul 'mm' output (rank 3)" in line


def test_bn_after_conv_read_elsewhere_is_rejected(rng):
    inits = {"w": randn(rng, 4, 3, 1, 1), **bn_params(rng, 4)}
    m = model([helper.make_node("Conv", ["x", "w"], ["c"], name="conv"), bn_node("c", "y"),
               helper.make_node("Relu", ["c"], ["r"], name="relu")],
              {"x": (1, 3, 4, 4)}, {"y": (1, 4, 4, 4), "r": (1, 4, 4, 4)}, inits)
    g, pm = fold(m)
    assert ops(g) == ["Conv", "BatchNormalization", "Relu"]
    (line,) = report(pm)
    assert "'c' (from Conv 'conv') is also read by Relu 'relu'" in line
    assert_numerics(g, m, {"x": randn(rng, 1, 3, 4, 4)})


def test_standalone_bn_stays(rng):
    m = model([helper.make_node("Relu", ["x"], ["r"], name="relu"), bn_node("r", "y")],
              {"x": (1, 4, 3, 3)}, {"y": (1, 4, 3, 3)}, bn_params(rng, 4))
    g, pm = fold(m)
    assert ops(g) == ["Relu", "BatchNormalization"] and report(pm) == []


def test_training_mode_bn_is_rejected(rng):
    inits = {"w": randn(rng, 4, 3, 1, 1), **bn_params(rng, 4)}
    bn = bn_node("c", "y")
    bn.attribute.append(helper.make_attribute("training_mode", 1))
    m = model([helper.make_node("Conv", ["x", "w"], ["c"], name="conv"), bn],
              {"x": (2, 3, 4, 4)}, {"y": (2, 4, 4, 4)}, inits)
    g, pm = fold(m)
    assert ops(g) == ["Conv", "BatchNormalization"]
    assert "training_mode=1" in report(pm)[0]


# ---- Mul/Add/Sub/Div by constants --------------------------------------------------------------


def test_conv_scale_bias_chain_folds(rng):
    f = np.float32
    inits = {"w": randn(rng, 4, 3, 3, 3), "s": rng.uniform(0.5, 2, (4, 1, 1)).astype(f),
             "t": randn(rng, 1, 4, 1, 1), "u": np.array(0.25, f), "d": np.array([3.0], f)}
    m = model([helper.make_node("Conv", ["x", "w"], ["c"], name="conv"),
               helper.make_node("Mul", ["s", "c"], ["m"], name="mul"),
               helper.make_node("Add", ["m", "t"], ["a"], name="add"),
               helper.make_node("Sub", ["u", "a"], ["n"], name="rsub"),
               helper.make_node("Div", ["n", "d"], ["q"], name="div"),
               helper.make_node("Relu", ["q"], ["y"], name="relu")],
              {"x": (1, 3, 7, 7)}, {"y": (1, 4, 5, 5)}, inits)
    g, pm = fold(m)
    assert ops(g) == ["Conv", "Relu"] and report(pm) == []
    assert_numerics(g, m, {"x": randn(rng, 1, 3, 7, 7)})


def test_conv_bn_then_scale_folds(rng):
    inits = {"w": randn(rng, 4, 3, 3, 3), "s": randn(rng, 1, 4, 1, 1), **bn_params(rng, 4)}
    m = model([helper.make_node("Conv", ["x", "w"], ["c"], name="conv"), bn_node("c", "b"),
               helper.make_node("Mul", ["b", "s"], ["y"], name="mul")],
              {"x": (1, 3, 5, 5)}, {"y": (1, 4, 3, 3)}, inits)
    g, _ = fold(m)
    assert ops(g) == ["Conv"] and [v.name for v in g.outputs] == ["y"]
    assert_numerics(g, m, {"x": randn(rng, 1, 3, 5, 5)})


def test_spatially_varying_mul_is_rejected(rng):
    inits = {"w": randn(rng, 4, 3, 3, 3), "mask": randn(rng, 1, 1, 5, 5)}
    m = model([helper.make_node("Conv", ["x", "w"], ["c"], name="conv", pads=[1] * 4),
               helper.make_node("Mul", ["c", "mask"], ["y"], name="mul")],
              {"x": (1, 3, 5, 5)}, {"y": (1, 4, 5, 5)}, inits)
    g, pm = fold(m)
    assert ops(g) == ["Conv", "Mul"]
    (line,) = report(pm)
    assert line == ("fold-conv-scale-bias: Mul 'mul' not rewritten: constant of shape (1, 1, 5, 5) "
                    "varies along axis 2 of the Conv 'conv' output; only a scalar or per-channel "
                    "(axis 1) constant folds into its weights")


def test_flat_channel_vector_broadcasts_over_width_and_is_rejected(rng):
    # a [C] constant over NCHW broadcasts along W, not along the channels
    inits = {"w": randn(rng, 4, 3, 1, 1), "b": randn(rng, 4)}
    m = model([helper.make_node("Conv", ["x", "w"], ["c"], name="conv"),
               helper.make_node("Add", ["c", "b"], ["y"], name="add")],
              {"x": (1, 3, 4, 4)}, {"y": (1, 4, 4, 4)}, inits)
    g, pm = fold(m)
    assert ops(g) == ["Conv", "Add"]
    assert "varies along axis 3" in report(pm)[0]


def test_gemm_scale_bias_folds(rng):
    # C of shape [M, 1] becomes an [M, N] bias once scaled per column
    inits = {"w": randn(rng, 6, 5), "c": randn(rng, 3, 1), "s": randn(rng, 6),
             "t": randn(rng, 1, 6)}
    m = model([helper.make_node("Gemm", ["x", "w", "c"], ["g"], name="fc", transA=1, transB=1,
                                beta=0.5),
               helper.make_node("Mul", ["g", "s"], ["m"], name="mul"),
               helper.make_node("Sub", ["m", "t"], ["y"], name="sub")],
              {"x": (5, 3)}, {"y": (3, 6)}, inits)
    g, _ = fold(m)
    assert ops(g) == ["Gemm"] and g.nodes[0].inputs[2].const.shape == (3, 6)
    assert_numerics(g, m, {"x": randn(rng, 5, 3)})


def test_matmul_scale_bias_folds_into_weight_and_bias_add(rng):
    f = np.float32
    inits = {"w": randn(rng, 5, 6), "b": randn(rng, 6), "s": rng.uniform(1, 2, (1, 1, 6)).astype(f),
             "d": np.array(2.0, f), "t": randn(rng, 6)}
    m = model([helper.make_node("MatMul", ["x", "w"], ["mm"], name="mm"),
               helper.make_node("Add", ["b", "mm"], ["a"], name="add"),
               helper.make_node("Mul", ["a", "s"], ["m"], name="mul"),
               helper.make_node("Div", ["m", "d"], ["q"], name="div"),
               helper.make_node("Add", ["q", "t"], ["y"], name="add2")],
              {"x": (2, 3, 5)}, {"y": (2, 3, 6)}, inits)
    g, _ = fold(m)
    assert ops(g) == ["MatMul", "Add"]
    assert_numerics(g, m, {"x": randn(rng, 2, 3, 5)})


def test_constant_chains_merge(rng):
    f = np.float32
    inits = {"a": randn(rng, 4), "b": np.array(3.0, f), "c": randn(rng, 3, 1),
             "d": randn(rng, 3, 1)}
    m = model([helper.make_node("Mul", ["x", "a"], ["m1"], name="m1"),
               helper.make_node("Mul", ["b", "m1"], ["m2"], name="m2"),
               helper.make_node("Add", ["m2", "c"], ["a1"], name="a1"),
               helper.make_node("Add", ["a1", "d"], ["y"], name="a2")],
              {"x": (2, 3, 4)}, {"y": (2, 3, 4)}, inits)
    g, _ = fold(m)
    assert ops(g) == ["Mul", "Add"]
    assert g.nodes[0].inputs[1].const.shape == (4,) and g.nodes[1].inputs[1].const.shape == (3, 1)
    assert_numerics(g, m, {"x": randn(rng, 2, 3, 4)})


def test_growing_constant_chain_is_rejected(rng):
    inits = {"a": randn(rng, 3, 1), "b": randn(rng, 1, 4)}
    m = model([helper.make_node("Mul", ["x", "a"], ["m"], name="m1"),
               helper.make_node("Mul", ["m", "b"], ["y"], name="m2")],
              {"x": (3, 4)}, {"y": (3, 4)}, inits)
    g, pm = fold(m)
    assert ops(g) == ["Mul", "Mul"]
    assert "would make a larger constant of shape (3, 4)" in report(pm)[0]


# ---- a whole network ---------------------------------------------------------------------------


def test_resnet18_has_no_batchnorm_left():
    m = zoo.resnet18(batch=1, image=64)
    g, pm = fold(m)
    hist = g.op_histogram()
    assert "BatchNormalization" not in hist and hist["Conv"] == 20
    assert report(pm) == []
    feeds = zoo.random_inputs(m)
    got = edlc.compile(g, passes=[]).run(feeds)
    want = ort_run(m, feeds)
    np.testing.assert_allclose(got["logits"], want["logits"], rtol=1e-4, atol=1e-5)
