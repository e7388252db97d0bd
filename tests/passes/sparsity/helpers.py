"""Small models for the sparsity tests, written with onnx.helper."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper

from tests.conftest import make_model, tensor_info

ZERO = [1, 5]  # channels of conv1/conv2 that are all zero (a residual group)


def _conv(name, x, w, b, **attrs):
    return helper.make_node("Conv", [x, w, b], [name], name=name, **attrs)


def residual_cnn(rng: np.random.Generator, zero: bool = True) -> onnx.ModelProto:
    """conv1-BN-relu, conv2 + residual, depthwise + Clip, 1x1 conv3 * scale, Concat, pool,
    Reshape, Gemm. With `zero`, channels ZERO of the residual group and channel 2 of conv3
    are exactly zero, so pruning exactly those keeps the output."""
    f = np.float32
    w1, b1 = rng.standard_normal((8, 4, 3, 3)).astype(f), rng.standard_normal(8).astype(f)
    w2, b2 = rng.standard_normal((8, 8, 3, 3)).astype(f) * 0.3, rng.standard_normal(8).astype(f)
    w3, b3 = rng.standard_normal((6, 8, 1, 1)).astype(f), rng.standard_normal(6).astype(f)
    wd, bd = rng.standard_normal((8, 1, 3, 3)).astype(f), rng.standard_normal(8).astype(f)
    mean, beta = rng.standard_normal(8).astype(f), rng.standard_normal(8).astype(f)
    if zero:
        for a in (w1, b1, w2, b2, wd, bd, mean, beta):
            a[ZERO] = 0
        w3[2], b3[2] = 0, 0
    inits = {
        "w1": w1, "b1": b1, "w2": w2, "b2": b2, "w3": w3, "b3": b3, "wd": wd, "bd": bd,
        "gamma": rng.uniform(0.5, 1.5, 8).astype(f), "beta": beta, "mean": mean,
        "var": rng.uniform(0.5, 1.5, 8).astype(f),
        "scale": rng.uniform(0.5, 2, (1, 6, 1, 1)).astype(f),
        "lo": np.array(0, f), "hi": np.array(6, f), "shape": np.array([1, 14], np.int64),
        "wf": rng.standard_normal((5, 14)).astype(f), "bf": rng.standard_normal(5).astype(f),
    }
    nodes = [
        _conv("conv1", "x", "w1", "b1", pads=[1, 1, 1, 1]),
        helper.make_node("BatchNormalization", ["conv1", "gamma", "beta", "mean", "var"], ["bn1"], name="bn1"),
        helper.make_node("Relu", ["bn1"], ["r1"], name="relu1"),
        _conv("conv2", "r1", "w2", "b2", pads=[1, 1, 1, 1]),
        helper.make_node("Add", ["conv2", "r1"], ["s"], name="add"),
        helper.make_node("Relu", ["s"], ["r2"], name="relu2"),
        _conv("dw", "r2", "wd", "bd", pads=[1, 1, 1, 1], group=8),
        helper.make_node("Clip", ["dw", "lo", "hi"], ["d"], name="clip"),
        _conv("conv3", "r2", "w3", "b3"),
        helper.make_node("Mul", ["conv3", "scale"], ["c3"], name="scale"),
        helper.make_node("Concat", ["c3", "d"], ["cat"], name="cat", axis=1),
        helper.make_node("GlobalAveragePool", ["cat"], ["gap"], name="gap"),
        helper.make_node("Reshape", ["gap", "shape"], ["flat"], name="flat"),
        helper.make_node("Gemm", ["flat", "wf", "bf"], ["logits"], name="fc", transB=1),
    ]
    return make_model(nodes, [tensor_info("x", [1, 4, 8, 8])], [tensor_info("logits", [1, 5])], inits)
