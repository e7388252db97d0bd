"""MatMulInteger and ConvInteger run on the int8 ops (edlc.passes.quantize.integer): int32
outputs exactly equal to onnxruntime's, for uint8/int8 inputs and weights, zero points absent,
per tensor, per output channel or column, per row, or computed at run time; and a model from
onnxruntime's own dynamic quantizer."""

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import edlc
from edlc.errors import LoweringError
from edlc.pass_manager import PassManager
from tests.conftest import ort_run

U8, I8 = TensorProto.UINT8, TensorProto.INT8
NP = {U8: np.uint8, I8: np.int8}
MCPUS = [None, "x86-64"]  # the host's kernels (AVX2: uint8 x int8 quads where pairs fit), int16 pairs


def _model(nodes, inputs, outputs: list[str], inits) -> onnx.ModelProto:
    """A checked model; the outputs' types come from ONNX's shape inference."""
    g = helper.make_graph(nodes, "g", inputs, [], [numpy_helper.from_array(a, n) for n, a in inits.items()])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    known = {v.name: v for v in onnx.shape_inference.infer_shapes(m, strict_mode=True).graph.value_info}
    m.graph.output.extend(known[name] for name in outputs)
    onnx.checker.check_model(m, full_check=True)
    return m


def _ints(rng, dtype, shape, half: bool = False) -> np.ndarray:
    """Random integers of the type's range; `half`: within 64 of its middle (weights whose pairs
    fit vpmaddubsw's int16 sums once uint8 is shifted to int8)."""
    info = np.iinfo(NP[dtype])
    mid = (int(info.min) + int(info.max) + 1) // 2
    lo, hi = (mid - 64, mid + 64) if half else (info.min, info.max)
    return rng.integers(lo, hi + 1, shape).astype(NP[dtype])


def _imported_ops(model) -> dict[str, int]:
    return PassManager(["import-qdq"]).run(edlc.load_onnx(model)).op_histogram()


def _matmul_integer(a, b, za=None, zb=None) -> np.ndarray:
    """MatMulInteger by the spec, zero points per row ([M]: ONNX's reference evaluator cannot
    broadcast it) and per column included."""
    a, b = a.astype(np.int64), b.astype(np.int64)
    if za is not None:
        a = a - (za[:, None] if za.ndim == 1 else za)
    if zb is not None:
        b = b - zb
    return np.matmul(a, b).astype(np.int32)


def _reference(model, feeds, ort: bool) -> dict[str, np.ndarray]:
    """onnxruntime's outputs, or ONNX's reference evaluator's where onnxruntime lacks a variant."""
    if ort:
        return ort_run(model, feeds)
    from onnx.reference import ReferenceEvaluator

    if model.graph.node[0].op_type == "MatMulInteger":
        env = {**feeds, **{t.name: numpy_helper.to_array(t) for t in model.graph.initializer}}
        return {n.output[0]: _matmul_integer(*[env.get(i) if i else None for i in n.input])
                for n in model.graph.node}
    outs = ReferenceEvaluator(model).run(None, feeds)
    return dict(zip([o.name for o in model.graph.output], outs))


def _check(model, feeds, ort: bool = True, mcpus=MCPUS):
    want = _reference(model, feeds, ort)
    for mcpu in mcpus:
        m = edlc.compile(model, target_options={"mcpu": mcpu} if mcpu else None)
        got = m.run(feeds)
        for name, w in want.items():
            assert got[name].dtype == np.int32, name
            np.testing.assert_array_equal(got[name], w, err_msg=f"{name} on {mcpu or 'the host'}")


# (x dtype, w dtype, x zero point, w zero point, attrs); zero points None, "const" (a constant
# scalar), "input" (a scalar computed at run time, as DynamicQuantizeLinear gives it), "channel"
CONV_CASES = {
    "onnxruntime": [(U8, I8, None, None, {}), (U8, U8, "const", "const", {"pads": [1, 1, 1, 1]}),
                    (I8, I8, "const", None, {"pads": [0, 1, 2, 1], "strides": [2, 2]}),
                    (U8, U8, "input", "const", {"pads": [1, 1, 1, 1], "strides": [2, 1]}),
                    (U8, I8, "input", None, {}), (U8, U8, "input", "const", {"group": 2, "pads": [1, 1, 1, 1]}),
                    (U8, U8, "input", "const", {"auto_pad": "SAME_UPPER", "strides": [2, 2]}),
                    (I8, I8, "input", None, {"dilations": [2, 2], "pads": [2, 1, 2, 1]})],
    # onnxruntime 1.32 has no per-channel weight zero point, and its int8 x uint8 ConvInteger
    # disagrees with ONNX's reference
    "reference": [(I8, I8, "const", "channel", {"pads": [1, 1, 1, 1]}),
                  (U8, U8, "input", "channel", {"group": 2, "pads": [1, 0, 1, 0]}),
                  (I8, U8, "input", "const", {"group": 2, "pads": [1, 1, 1, 1]})],
}


def _conv_model(rng, cases):
    nodes, inputs, outputs, inits, feeds = [], [], [], {}, {}
    for i, (xd, wd, xz, wz, attrs) in enumerate(cases):
        c, o = 8, 16
        x, w = f"x{i}", f"w{i}"
        inputs.append(helper.make_tensor_value_info(x, xd, [1, c, 7, 9]))
        feeds[x] = _ints(rng, xd, (1, c, 7, 9))
        inits[w] = _ints(rng, wd, (o, c // attrs.get("group", 1), 3, 3), half=i % 2 == 1)
        ins = [x, w, "", ""]
        if xz == "const":
            ins[2] = f"xz{i}"
            inits[ins[2]] = _ints(rng, xd, ())
        elif xz == "input":
            ins[2] = f"xz{i}"
            inputs.append(helper.make_tensor_value_info(ins[2], xd, []))
            feeds[ins[2]] = _ints(rng, xd, ())
        if wz is not None:
            ins[3] = f"wz{i}"
            inits[ins[3]] = _ints(rng, wd, () if wz == "const" else (o,))
        while not ins[-1]:
            ins.pop()
        nodes.append(helper.make_node("ConvInteger", ins, [f"y{i}"], name=f"conv{i}", kernel_shape=[3, 3], **attrs))
        outputs.append(f"y{i}")
    return _model(nodes, inputs, outputs, inits), feeds


@pytest.mark.parametrize("against", list(CONV_CASES))
def test_conv_integer_variants(rng, against):
    model, feeds = _conv_model(rng, CONV_CASES[against])
    imported = PassManager(["import-qdq"]).run(edlc.load_onnx(model))
    hist = imported.op_histogram()
    assert hist["edlc::qconv2d"] == len(model.graph.node) and "ConvInteger" not in hist
    _check(model, feeds, against == "onnxruntime")
    if against == "onnxruntime":  # exported back to ONNX, the int8 ops are ConvInteger again
        want, back = ort_run(model, feeds), ort_run(imported.to_onnx(), feeds)
        for name in want:
            np.testing.assert_array_equal(back[name], want[name])


# (A dtype, B dtype, A shape, A zero point, B zero point); zero points None, "const", "input",
# "row" (a constant [M]), "row input" (a run-time [M]), "column" (a constant [N]); "B input":
# B itself a run-time input (a product TVM's int32 MatMulInteger computes)
# onnxruntime's uint8 x int8 MatMulInteger saturates int16 sums on AVX2 without VNNI: its cases
# of those types sit at odd places, where B's pairs fit (`_ints` half); the reference has one
# of the full range
MATMUL_CASES = {
    "onnxruntime": [(U8, U8, [2, 3, 16], "const", "const"), (U8, I8, [5, 16], None, None),
                    (I8, I8, [4, 16], "input", None), (U8, I8, [16], "const", None),
                    (U8, U8, [1, 7, 16], "input", "const"), (U8, I8, [6, 16], "const", "B input"),
                    (U8, U8, [3, 16], "input", "column")],
    "reference": [(U8, I8, [5, 16], "row", "const"), (I8, U8, [3, 16], "row input", "column"),
                  (U8, U8, [2, 5, 16], "row input", None), (U8, I8, [4, 16], "input", None)],
}


def _matmul_model(rng, cases):
    nodes, inputs, outputs, inits, feeds = [], [], [], {}, {}
    for i, (ad, bd, shape, az, bz) in enumerate(cases):
        k, n = shape[-1], 24
        a, b = f"a{i}", f"b{i}"
        inputs.append(helper.make_tensor_value_info(a, ad, shape))
        feeds[a] = _ints(rng, ad, shape)
        if bz == "B input":
            inputs.append(helper.make_tensor_value_info(b, bd, [k, n]))
            feeds[b], bz = _ints(rng, bd, (k, n), half=True), None
        else:
            inits[b] = _ints(rng, bd, (k, n), half=i % 2 == 1)
        ins = [a, b, "", ""]
        rows = shape[-2] if len(shape) > 1 else 1
        if az is not None:
            ins[2] = f"az{i}"
            zshape = () if az in ("const", "input") else (rows,) if len(shape) == 2 else (*shape[:-1], 1)
            if az.endswith("input"):
                inputs.append(helper.make_tensor_value_info(ins[2], ad, list(zshape)))
                feeds[ins[2]] = _ints(rng, ad, zshape)
            else:
                inits[ins[2]] = _ints(rng, ad, zshape)
        if bz is not None:
            ins[3] = f"bz{i}"
            inits[ins[3]] = _ints(rng, bd, () if bz == "const" else (n,))
        while not ins[-1]:
            ins.pop()
        nodes.append(helper.make_node("MatMulInteger", ins, [f"y{i}"], name=f"matmul{i}"))
        outputs.append(f"y{i}")
    return _model(nodes, inputs, outputs, inits), feeds


@pytest.mark.parametrize("against", list(MATMUL_CASES))
def test_matmul_integer_variants(rng, against):
    model, feeds = _matmul_model(rng, MATMUL_CASES[against])
    hist = _imported_ops(model)
    runtime_b = sum(c[4] == "B input" for c in MATMUL_CASES[against])
    assert hist["edlc::qmatmul"] == len(model.graph.node) - runtime_b
    assert hist.get("MatMulInteger", 0) == runtime_b
    _check(model, feeds, against == "onnxruntime")


def _float_cnn(rng) -> onnx.ModelProto:
    """conv-relu, conv-relu, flatten, linear: float, for onnxruntime's dynamic quantizer."""
    inits = {"w1": rng.standard_normal((8, 3, 3, 3)).astype(np.float32) * 0.3,
             "b1": rng.standard_normal(8).astype(np.float32) * 0.1,
             "w2": rng.standard_normal((8, 8, 3, 3)).astype(np.float32) * 0.2,
             "wf": rng.standard_normal((512, 10)).astype(np.float32) * 0.05,
             "bf": rng.standard_normal(10).astype(np.float32)}
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1], name="conv1"),
             helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
             helper.make_node("Conv", ["r1", "w2"], ["c2"], pads=[1, 1, 1, 1], strides=[2, 2], name="conv2"),
             helper.make_node("Relu", ["c2"], ["r2"], name="relu2"),
             helper.make_node("Flatten", ["r2"], ["f"], name="flatten"),
             helper.make_node("MatMul", ["f", "wf"], ["m"], name="fc"),
             helper.make_node("Add", ["m", "bf"], ["y"], name="fc_bias")]
    return _model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 16, 16])], ["y"], inits)


@pytest.mark.parametrize("weights", ["QUInt8", "QInt8"])
def test_onnxruntime_dynamic_quantization(rng, tmp_path, weights):
    """quantize_dynamic's model (DynamicQuantizeLinear -> ConvInteger / MatMulInteger -> Cast ->
    Mul by the scales) runs its convs and matmul on the int8 ops, with onnxruntime's outputs
    (int8 weights: ONNX's reference, as onnxruntime's uint8 x int8 kernels saturate on AVX2)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    onnx.save(_float_cnn(rng), tmp_path / "float.onnx")
    quantize_dynamic(tmp_path / "float.onnx", tmp_path / "dynamic.onnx", weight_type=getattr(QuantType, weights))
    model = onnx.load(tmp_path / "dynamic.onnx")
    ops = [n.op_type for n in model.graph.node]
    assert ops.count("ConvInteger") == 2 and ops.count("MatMulInteger") == 1 and "DynamicQuantizeLinear" in ops
    imported = PassManager(["import-qdq"]).run(edlc.load_onnx(model))
    hist = imported.op_histogram()
    assert hist["edlc::qconv2d"] == 2 and hist["edlc::qmatmul"] == 1
    assert "ConvInteger" not in hist and "MatMulInteger" not in hist
    if weights == "QInt8":  # symmetric int8 weights: no zero point, the packed kernels' form
        assert all(n.inputs[5] is None for n in imported.nodes if n.domain == "edlc")
    m = edlc.compile(model)
    for _ in range(3):
        feeds = {"x": rng.standard_normal((1, 3, 16, 16)).astype(np.float32)}
        want = _reference(model, feeds, weights == "QUInt8")["y"]
        np.testing.assert_allclose(m.run(feeds)["y"], want, rtol=1e-5, atol=1e-5)


def test_unsupported_variants_name_the_node_and_input(rng):
    w3 = _ints(rng, U8, (4, 2, 3))
    conv1d = _model([helper.make_node("ConvInteger", ["x", "w"], ["y"], name="c1d")],
                    [helper.make_tensor_value_info("x", U8, [1, 2, 9])], ["y"], {"w": w3})
    with pytest.raises(LoweringError, match=r"node 'c1d' \(ConvInteger\): input 'x' has rank 3; only 2-D"):
        edlc.compile(conv1d)
    w = _ints(rng, U8, (4, 2, 3, 3))
    bad_zp = _model([helper.make_node("ConvInteger", ["x", "w", "", "wz"], ["y"], name="c")],
                    [helper.make_tensor_value_info("x", U8, [1, 2, 5, 5])], ["y"],
                    {"w": w, "wz": _ints(rng, U8, (2,))})
    with pytest.raises(LoweringError, match=r"node 'c' \(ConvInteger\): input 'w_zero_point' has shape \[2\]"):
        edlc.compile(bad_zp)


def test_conv_integer_with_a_run_time_weight(rng):
    """Every input computed at run time (as in ONNX's node tests): the node stays ConvInteger
    and runs on int16 operands, exactly."""
    ins = [helper.make_tensor_value_info("x", U8, [2, 4, 6, 5]), helper.make_tensor_value_info("w", U8, [6, 2, 3, 3]),
           helper.make_tensor_value_info("xz", U8, []), helper.make_tensor_value_info("wz", U8, [])]
    model = _model([helper.make_node("ConvInteger", ["x", "w", "xz", "wz"], ["y"], name="c", group=2,
                                     pads=[1, 0, 1, 2], strides=[1, 2])], ins, ["y"], {})
    assert _imported_ops(model) == {"ConvInteger": 1}
    feeds = {"x": _ints(rng, U8, (2, 4, 6, 5)), "w": _ints(rng, U8, (6, 2, 3, 3)),
             "xz": _ints(rng, U8, ()), "wz": _ints(rng, U8, ())}
    _check(model, feeds, mcpus=[None])
