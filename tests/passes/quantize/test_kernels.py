"""x86 int8 kernels on uint8 x int8 quads (edlc.lower.int8_packed.x86_quads): `vpmaddubsw` sums
two uint8 x int8 products in int16, exact while every such weight pair fits; the quantizer's
paired weights always do, and other weights take the int16-pair kernels, exact too."""

import numpy as np
import pytest

import edlc
from edlc.ir.interpreter import run_graph
from edlc.lower.int8_packed import u8_pairs_fit
from edlc.passes.quantize.params import PAIR_QMAX, pair_sums, quantize_weight
from edlc.targets.x86 import host_features
from tests.passes.quantize.helpers import int8_op_graph, ort_exact


def _asm(module) -> str:
    return module.executable.mod.imports[0].inspect_source("asm")


def test_pairs_fit_int16_only_up_to_128():
    w = np.zeros((2, 4, 1, 1), np.int8)
    w[0, :2, 0, 0] = [64, 64]
    w[1, 2:, 0, 0] = [-100, -28]  # |w0| + |w1| = 128: 255 * 128 = 32640 fits int16
    assert u8_pairs_fit(w)
    w[1, 3, 0, 0] = -29
    assert not u8_pairs_fit(w)
    w = np.array([[127, -127], [1, 1], [127, 127]], np.int8)  # [K, N]: pairs along K
    assert u8_pairs_fit(w)  # 127 + 1; the odd last row pairs with zero
    w[1, 1] = -2
    assert not u8_pairs_fit(w)


@pytest.mark.parametrize("axis,pair_axis,shape", [(0, 1, (8, 7, 3, 3)), (1, 0, (37, 24))])
def test_paired_weights_fit_and_lose_at_most_a_bit(rng, axis, pair_axis, shape):
    w = rng.standard_normal(shape).astype(np.float32)
    q, p = quantize_weight(w, axis, pair_axis)
    assert pair_sums(q, pair_axis).max() <= PAIR_QMAX and u8_pairs_fit(q, pair_axis)
    _, full = quantize_weight(w, axis)
    assert np.all(p.scale >= full.scale) and np.all(p.scale <= 2 * full.scale)


CASES = [("qconv2d", (1, 24, 9, 9), (32, 24, 3, 3), {"pads": [1, 1, 1, 1], "clip_min": 0.0}),
         ("qconv2d", (1, 3, 17, 17), (16, 3, 7, 7), {"pads": [3, 3, 3, 3], "strides": [2, 2]}),
         ("qmatmul", (2, 9, 40), (40, 48), {})]


@pytest.mark.parametrize("op,x_shape,w_shape,attrs", CASES, ids=["conv3x3", "conv7x7s2", "matmul"])
@pytest.mark.parametrize("act", ["uint8", "int8"])
def test_quads_are_exact_at_the_int16_limit(rng, op, x_shape, w_shape, attrs, act):
    """Weight pairs at |w0| + |w1| = 128 of one sign, activations at the extreme the zero point
    allows: the int16 sums reach 32640, exactly; then random data."""
    pair_axis = 1 if op == "qconv2d" else 0
    w = np.moveaxis(rng.integers(-64, 65, w_shape), pair_axis, 0).astype(np.int8)
    w[0::2][: w.shape[0] // 2] = 100
    w[1::2] = 28
    w = np.ascontiguousarray(np.moveaxis(w, 0, pair_axis))
    assert u8_pairs_fit(w, pair_axis) and pair_sums(w, pair_axis).max() == 128
    g = int8_op_graph(rng, op, x_shape, w_shape, attrs=attrs, act=act, quantized_out=False, weight=w)
    m = edlc.compile(g, passes=[])
    extreme = np.full(x_shape, 127 if act == "int8" else 255, act)
    lo, hi = (0, 256) if act == "uint8" else (-128, 128)
    for x in (extreme, rng.integers(lo, hi, x_shape).astype(act)):
        np.testing.assert_array_equal(m.run({"x": x})[g.outputs[0].name], run_graph(g, {"x": x})[0])
    if host_features()["avx2"] and not host_features()["vnni"]:
        asm = _asm(m)
        assert "vpmaddubsw" in asm and "vpmovsxbw" not in asm


def test_weights_whose_pairs_overflow_take_the_int16_pairs(rng):
    """127 + 127 against 255 would saturate vpmaddubsw's int16 sum: these weights run on the
    int16-pair kernel, and the result is exact."""
    w = np.full((16, 8, 3, 3), 127, np.int8)
    w[1::2] = -127
    assert not u8_pairs_fit(w)
    g = int8_op_graph(rng, "qconv2d", (1, 8, 6, 6), w.shape, attrs={"pads": [1, 1, 1, 1]},
                      quantized_out=False, weight=w)
    m = edlc.compile(g, passes=[])
    x = np.full((1, 8, 6, 6), 255, np.uint8)
    np.testing.assert_array_equal(m.run({"x": x})[g.outputs[0].name], run_graph(g, {"x": x})[0])
    if host_features()["avx2"] and not host_features()["vnni"]:
        asm = _asm(m)
        assert "vpmaddwd" in asm and "vpmaddubsw" not in asm


@pytest.mark.parametrize("mcpu,instructions", [("znver4", ["vpdpbusd"]), ("skylake-avx512", ["vpmaddubsw", "zmm"]),
                                               ("haswell", ["vpmaddubsw"]), ("znver3", ["vpmaddubsw"])])
def test_quad_instruction_per_cpu(rng, mcpu, instructions):
    """Cross-compiled only (the code may not run on this host): the generated assembly."""
    g = int8_op_graph(rng, "qconv2d", (1, 16, 8, 8), (32, 16, 3, 3), attrs={"pads": [1, 1, 1, 1]}, paired=True)
    asm = _asm(edlc.compile(g, passes=[], target_options={"mcpu": mcpu}))
    assert all(i in asm for i in instructions)
    assert "vpmulld" not in asm and "vpmovsxbw" not in asm


POOLS = [({"kernel_shape": [3, 3], "pads": [1, 1, 1, 1], "strides": [2, 2]}, (1, 8, 16, 16)),
         ({"kernel_shape": [3, 3], "pads": [1, 1, 1, 1], "strides": [2, 2], "ceil_mode": 1}, (2, 3, 9, 11)),
         ({"kernel_shape": [2, 2], "strides": [2, 2]}, (1, 5, 8, 7)),
         ({"kernel_shape": [3, 2], "pads": [2, 0, 1, 1], "strides": [1, 3]}, (1, 4, 9, 11))]


@pytest.mark.parametrize("attrs,shape", POOLS, ids=["3x3s2", "ceil", "2x2", "uneven"])
@pytest.mark.parametrize("dtype", ["uint8", "int8"])
def test_int8_maxpool_equals_onnx_maxpool(rng, attrs, shape, dtype):
    """edlc.qmaxpool (windows clamped to the input, no padding tests) computes ONNX's MaxPool,
    and the quantizer uses it for MaxPool on int8 data."""
    from edlc.ir import Graph, TensorType
    from edlc.passes.quantize.rewrite import int8_maxpools

    g = Graph("t")
    x = g.add_input("x", TensorType(shape, dtype))
    g.outputs.append(g.add_node("MaxPool", [x], dict(attrs), name="pool").outputs[0])
    feeds = {"x": rng.integers(-128 if dtype == "int8" else 0, 128 if dtype == "int8" else 256, shape).astype(dtype)}
    (want,) = run_graph(g, feeds)  # onnx's reference MaxPool
    assert int8_maxpools(g)
    (node,) = g.nodes
    assert (node.domain, node.op) == ("edlc", "qmaxpool") and g.outputs[0].type.shape == want.shape
    np.testing.assert_array_equal(run_graph(g, feeds)[0], want)
    np.testing.assert_array_equal(edlc.compile(g, passes=[]).run(feeds)[g.outputs[0].name], want)


LAYOUTS = [("NCHW", "NHWC"), ("NHWC", "NHWC"), ("NHWC", "NCHW")]
CONVS = [((1, 16, 9, 9), (32, 16, 3, 3), {"pads": [1, 1, 1, 1]}),
         ((1, 24, 10, 10), (16, 24, 3, 3), {"pads": [1, 0, 1, 2], "strides": [2, 2]}),
         ((1, 3, 17, 15), (16, 3, 7, 7), {"pads": [3, 3, 3, 3], "strides": [2, 2]})]


@pytest.mark.parametrize("x_shape,w_shape,attrs", CONVS, ids=["3x3", "3x3s2", "7x7s2-3ch"])
@pytest.mark.parametrize("in_layout,out_layout", LAYOUTS, ids=["-".join(p) for p in LAYOUTS])
@pytest.mark.parametrize("paired", [True, False], ids=["quads", "pairs"])
def test_nhwc_convs_are_exact(rng, x_shape, w_shape, attrs, in_layout, out_layout, paired):
    """qconv2d with NHWC input and/or output (the int8-layout pass's choice between int8 convs)
    computes the NCHW conv transposed: exactly, on the uint8 quads (channel or kernel-column
    quads) and on the int16 pairs; its QDQ form (transposes around Conv) in onnxruntime too."""
    from edlc.passes.quantize.ops import NCHW_TO_NHWC

    shape = tuple(x_shape[i] for i in NCHW_TO_NHWC) if in_layout == "NHWC" else x_shape
    g = int8_op_graph(rng, "qconv2d", shape, w_shape, attrs=dict(attrs, in_layout=in_layout, out_layout=out_layout),
                      paired=paired)
    m = edlc.compile(g, passes=[])
    x = rng.integers(0, 256, shape).astype(np.uint8)
    want = run_graph(g, {"x": x})[0]
    np.testing.assert_array_equal(m.run({"x": x})[g.outputs[0].name], want)
    np.testing.assert_array_equal(ort_exact(g.to_onnx(), {"x": x})[g.outputs[0].name], want)
    nchw = int8_op_graph(np.random.default_rng(0), "qconv2d", x_shape, w_shape, attrs=attrs, paired=paired)
    assert want.shape == (tuple(nchw.outputs[0].type.shape[i] for i in NCHW_TO_NHWC)
                          if out_layout == "NHWC" else nchw.outputs[0].type.shape)


def test_int8_layout_pass_runs_resnet_convs_on_nhwc():
    """After the int8-layout pass every conv writes NHWC; the first reads the NCHW model input;
    one Transpose remains, before the float pooling; the result is the NCHW graph's, exactly."""
    from edlc.driver import optimize
    from edlc.passes.quantize import quantize
    from edlc.testing.zoo import random_inputs, resnet18

    model = resnet18(image=32)
    samples = [random_inputs(model, seed=i) for i in range(4)]
    g8, _ = quantize(edlc.load_onnx(model), samples)
    opt, _ = optimize(g8.copy(), 2)
    convs = [n for n in opt.nodes if n.op == "qconv2d"]
    assert all(n.attrs["out_layout"] == "NHWC" for n in convs)
    assert [n.attrs.get("in_layout", "NCHW") for n in convs].count("NCHW") == 1
    assert [n.attrs.get("layout") for n in opt.nodes if n.op == "qmaxpool"] == ["NHWC"]
    assert opt.op_histogram().get("Transpose") == 1
    m, m0 = edlc.compile(g8), edlc.compile(g8, opt_level=0)  # -O0: no int8-layout pass
    for s in samples[:2]:
        np.testing.assert_array_equal(m.run(s)["logits"], m0.run(s)["logits"])


def test_int8_layout_pass_leaves_depthwise_models_alone():
    from edlc.driver import optimize
    from edlc.passes.quantize import quantize
    from edlc.testing.zoo import mobilenet_v2, random_inputs

    model = mobilenet_v2(image=32)
    g8, _ = quantize(edlc.load_onnx(model), [random_inputs(model, seed=i) for i in range(2)])
    opt, _ = optimize(g8.copy(), 2)
    assert not any(n.attrs.get("out_layout") == "NHWC" for n in opt.nodes)
    assert "Transpose" not in opt.op_histogram()


@pytest.mark.parametrize("attrs,shape", POOLS, ids=["3x3s2", "ceil", "2x2", "uneven"])
def test_nhwc_int8_maxpool(rng, attrs, shape):
    from edlc.ir import Graph, TensorType
    from edlc.passes.quantize.ops import NCHW_TO_NHWC

    g = Graph("t")
    x = g.add_input("x", TensorType(shape, "uint8"))
    g.outputs.append(g.add_node("MaxPool", [x], dict(attrs), name="pool").outputs[0])
    feeds = {"x": rng.integers(0, 256, shape).astype(np.uint8)}
    (want,) = run_graph(g, feeds)
    h = Graph("t")
    xh = h.add_input("x", TensorType(tuple(shape[i] for i in NCHW_TO_NHWC), "uint8"))
    h.outputs.append(h.add_node("qmaxpool", [xh], dict(attrs, layout="NHWC"), domain="edlc", name="pool").outputs[0])
    feeds = {"x": feeds["x"].transpose(NCHW_TO_NHWC).copy()}
    want = want.transpose(NCHW_TO_NHWC)
    np.testing.assert_array_equal(run_graph(h, feeds)[0], want)
    np.testing.assert_array_equal(edlc.compile(h, passes=[]).run(feeds)[h.outputs[0].name], want)
    np.testing.assert_array_equal(ort_exact(h.to_onnx(), feeds)[h.outputs[0].name], want)
