"""Helpers for the quantization tests: a small CNN, int8 op graphs, exact onnxruntime runs."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper

from edlc.ir import Graph, TensorType
from edlc.passes.quantize.params import activation_params, quantize_bias, quantize_weight
from edlc.testing.reference import ort_outputs
from tests.conftest import make_model, tensor_info


def ort_exact(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """onnxruntime without its QDQ fusion: its fused u8s8 kernels saturate int16 sums on CPUs
    without VNNI (vpmaddubsw), so only the unfused QDQ graph is a bit-exact reference."""
    return ort_outputs(model, feeds, basic=True)


def small_cnn(rng: np.random.Generator, image: int = 16) -> onnx.ModelProto:
    """conv-relu-pool, conv-relu-pool, flatten, linear: a digits-style classifier."""
    w1 = (rng.standard_normal((8, 1, 3, 3)) * 0.5).astype(np.float32)
    w2 = (rng.standard_normal((16, 8, 3, 3)) * 0.2).astype(np.float32)
    side = image // 4
    wf = (rng.standard_normal((16 * side * side, 10)) * 0.1).astype(np.float32)
    inits = {"w1": w1, "b1": (rng.standard_normal(8) * 0.1).astype(np.float32),
             "w2": w2, "b2": (rng.standard_normal(16) * 0.1).astype(np.float32),
             "wf": wf, "bf": (rng.standard_normal(10) * 0.1).astype(np.float32)}
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1], name="conv1"),
             helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
             helper.make_node("MaxPool", ["r1"], ["p1"], kernel_shape=[2, 2], strides=[2, 2], name="pool1"),
             helper.make_node("Conv", ["p1", "w2", "b2"], ["c2"], pads=[1, 1, 1, 1], name="conv2"),
             helper.make_node("Relu", ["c2"], ["r2"], name="relu2"),
             helper.make_node("MaxPool", ["r2"], ["p2"], kernel_shape=[2, 2], strides=[2, 2], name="pool2"),
             helper.make_node("Flatten", ["p2"], ["f"], name="flatten"),
             helper.make_node("MatMul", ["f", "wf"], ["mm"], name="fc"),
             helper.make_node("Add", ["mm", "bf"], ["logits"], name="fc_bias")]
    return make_model(nodes, [tensor_info("x", [1, 1, image, image])], [tensor_info("logits", [1, 10])], inits)


def samples_for(rng: np.random.Generator, shape, n: int = 8) -> list[dict[str, np.ndarray]]:
    return [{"x": rng.standard_normal(shape).astype(np.float32)} for _ in range(n)]


def int8_op_graph(rng: np.random.Generator, op: str, x_shape, w_shape, *, attrs=None,
                  quantized_out: bool = True, act: str = "uint8", bias: bool = True,
                  paired: bool = False, weight: np.ndarray | None = None) -> Graph:
    """One edlc int8 op on an int8 input, with random per-channel weights (in the paired
    range with `paired`; or the given int8 `weight`)."""
    g = Graph("t")
    x = g.add_input("x", TensorType(tuple(x_shape), act))
    xp = activation_params(-1.0, 3.0, act)
    axis = 0 if op == "qconv2d" else 1
    wq, wp = quantize_weight(rng.standard_normal(w_shape).astype(np.float32), axis,
                             (1 if op == "qconv2d" else 0) if paired else None)
    if weight is not None:
        wq = weight
    yp = activation_params(-20.0, 20.0, act)
    n_out = w_shape[axis]
    ins = [x, g.constant(xp.scale), g.constant(xp.zero_point), g.constant(wq, "w"),
           g.constant(wp.scale), g.constant(wp.zero_point),
           g.constant(yp.scale) if quantized_out else None,
           g.constant(yp.zero_point) if quantized_out else None]
    if bias:
        ins.append(g.constant(quantize_bias(rng.standard_normal(n_out).astype(np.float32), xp.scale, wp.scale)))
    node = g.add_node(op, ins, dict(attrs or {}), domain="edlc", name=op)
    g.outputs.append(node.outputs[0])
    return g


def int8_input(rng: np.random.Generator, shape, act: str = "uint8") -> np.ndarray:
    lo, hi = (0, 256) if act == "uint8" else (-128, 128)
    return rng.integers(lo, hi, shape).astype(act)
