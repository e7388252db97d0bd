"""Small valid models the mutation fuzzer starts from: each one exercises a different part of
the importer and the passes (shape subgraphs to fold, patterns to fuse and recognize,
subgraphs, Constant nodes, external data), and each is small enough that a mutated copy
imports in milliseconds."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import onnx
import onnx.parser
from onnx import TensorProto, helper, numpy_helper

# the file an external-data seed reads its weights from, next to the model
EXTERNAL_FILE = "weights.bin"


def _parse(text: str) -> onnx.ModelProto:
    model = onnx.parser.parse_model(text)
    onnx.checker.check_model(model)
    return model


def mlp() -> onnx.ModelProto:
    """MatMul + Add + Relu with a symbolic batch (fuse, fold)."""
    return _parse("""
    <ir_version: 8, opset_import: ["" : 17]>
    mlp (float[N, 4] x) => (float[N, 3] y) {
        w = Constant <value = float[4, 3] {1,2,3,4,5,6,7,8,9,10,11,12}> ()
        b = Constant <value = float[3] {0.5, -1, 2}> ()
        m = MatMul(x, w)
        a = Add(m, b)
        y = Relu(a)
    }""")


def convnet() -> onnx.ModelProto:
    """Conv + BatchNormalization + Clip + pooling + Gemm (fold-batchnorm, fuse, layout)."""
    rng = np.random.default_rng(0)
    inits = {
        "w": rng.standard_normal((4, 3, 3, 3)).astype(np.float32),
        "cb": np.zeros(4, np.float32),
        "scale": np.ones(4, np.float32), "bias": np.zeros(4, np.float32),
        "mean": np.zeros(4, np.float32), "var": np.ones(4, np.float32),
        "lo": np.array(0, np.float32), "hi": np.array(6, np.float32),
        "fw": rng.standard_normal((5, 4)).astype(np.float32), "fb": np.zeros(5, np.float32),
    }
    nodes = [
        helper.make_node("Conv", ["x", "w", "cb"], ["c"], name="conv", pads=[1, 1, 1, 1]),
        helper.make_node("BatchNormalization", ["c", "scale", "bias", "mean", "var"], ["n"], name="bn"),
        helper.make_node("Clip", ["n", "lo", "hi"], ["r"], name="clip"),
        helper.make_node("MaxPool", ["r"], ["p"], name="pool", kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("GlobalAveragePool", ["p"], ["g"], name="gap"),
        helper.make_node("Flatten", ["g"], ["f"], name="flatten"),
        helper.make_node("Gemm", ["f", "fw", "fb"], ["y"], name="fc", transB=1),
    ]
    graph = helper.make_graph(
        nodes, "convnet", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 5])],
        [numpy_helper.from_array(a, n) for n, a in inits.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def shape_chain() -> onnx.ModelProto:
    """An exporter's Shape -> Gather -> Unsqueeze -> Concat -> Reshape chain (fold-constants)."""
    return _parse("""
    <ir_version: 8, opset_import: ["" : 17]>
    chain (float[B, 2, 6] x) => (float[B, 12] y) {
        s = Shape(x)
        i = Constant <value = int64[1] {0}> ()
        b = Gather <axis = 0> (s, i)
        m = Constant <value = int64[1] {12}> ()
        t = Concat <axis = 0> (b, m)
        r = Reshape(x, t)
        y = Softmax <axis = -1> (r)
    }""")


def layernorm_gelu() -> onnx.ModelProto:
    """Decomposed LayerNorm and erf-GELU as torch exports them (recognize)."""
    return _parse("""
    <ir_version: 8, opset_import: ["" : 17]>
    block (float[1, 4, 8] x) => (float[1, 4, 8] y) {
        mu = ReduceMean <axes = [-1]> (x)
        d = Sub(x, mu)
        two = Constant <value = float {2}> ()
        sq = Pow(d, two)
        var = ReduceMean <axes = [-1]> (sq)
        eps = Constant <value = float {1e-5}> ()
        ve = Add(var, eps)
        sd = Sqrt(ve)
        n = Div(d, sd)
        r2 = Constant <value = float {1.4142135}> ()
        q = Div(n, r2)
        e = Erf(q)
        one = Constant <value = float {1}> ()
        e1 = Add(e, one)
        h = Mul(n, e1)
        half = Constant <value = float {0.5}> ()
        y = Mul(h, half)
    }""")


def branches() -> onnx.ModelProto:
    """If with two branches reading an outer value, and a Loop (subgraph import and passes)."""
    return _parse("""
    <ir_version: 8, opset_import: ["" : 17]>
    branches (float[2, 3] x, bool c) => (float[2, 3] y, float[2, 3] z) {
        y = If (c) <
            then_branch = g1 () => (float[2, 3] t) { t = Relu(x) },
            else_branch = g2 () => (float[2, 3] e) { e = Neg(x) }
        >
        n = Constant <value = int64 {3}> ()
        z = Loop (n, , x) <
            body = b (int64 i, bool cond, float[2, 3] acc) => (bool co, float[2, 3] out) {
                co = Identity(cond)
                out = Add(acc, x)
            }
        >
    }""")


def mixed_types() -> onnx.ModelProto:
    """Casts, comparisons, Where, Gather on int64, Transpose, Concat, Split, Slice."""
    return _parse("""
    <ir_version: 8, opset_import: ["" : 17]>
    mixed (float[2, 6] x, int64[3] ids) => (float[3, 6] y, float[6, 2] t, float[2, 3] s) {
        z = Constant <value = float {0}> ()
        p = Greater(x, z)
        w = Where(p, x, z)
        g = Gather <axis = 0> (w, ids)
        k = Cast <to = 7> (g)
        f = Cast <to = 1> (k)
        y = Add(f, g)
        t = Transpose <perm = [1, 0]> (x)
        sp = Constant <value = int64[2] {3, 3}> ()
        a, b = Split <axis = 1> (x, sp)
        st = Constant <value = int64[1] {0}> ()
        en = Constant <value = int64[1] {3}> ()
        ax = Constant <value = int64[1] {1}> ()
        sl = Slice(x, st, en, ax)
        c = Concat <axis = 0> (a, b)
        s = Max(sl, a)
    }""")


def external_weights() -> tuple[onnx.ModelProto, dict[str, bytes]]:
    """A MatMul whose weight lives in EXTERNAL_FILE beside the model."""
    w = numpy_helper.from_array(np.arange(12, dtype=np.float32).reshape(4, 3), "w")
    data = w.raw_data
    w.ClearField("raw_data")
    w.data_location = TensorProto.EXTERNAL
    for key, value in (("location", EXTERNAL_FILE), ("offset", "0"), ("length", str(len(data)))):
        entry = w.external_data.add()
        entry.key, entry.value = key, value
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")], "external",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])], [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model, {EXTERNAL_FILE: data}


SEEDS: dict[str, Callable[[], onnx.ModelProto]] = {
    "mlp": mlp, "convnet": convnet, "shape_chain": shape_chain,
    "layernorm_gelu": layernorm_gelu, "branches": branches, "mixed_types": mixed_types,
}


def seed_models() -> dict[str, onnx.ModelProto]:
    """Every in-memory seed by name (the external-data seed comes with its file)."""
    models = {name: make() for name, make in SEEDS.items()}
    models["external_weights"] = external_weights()[0]
    return models
