"""A small model zoo built in code with `onnx.helper` and seeded random weights.

Tests and benchmarks need realistic models without network access or torch: these graphs have
the same structure, op mix and parameter counts as torchvision's ResNet-18 and MobileNetV2 and
as a BERT encoder exported by `torch.onnx` (opset 17), so the frontend, the graph passes and the
lowering see what they would see on real exports. Weights are random but scaled so that fp32
activations stay O(1) through every layer, which keeps comparisons against onnxruntime
well-conditioned.

BatchNormalization is kept as separate nodes and LayerNorm/GELU are written decomposed, exactly
as exporters write them, because folding and fusing them is the compiler's job.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

__all__ = [
    "OPSET",
    "IR_VERSION",
    "ZOO",
    "bert_encoder",
    "mobilenet_v2",
    "parameter_count",
    "random_inputs",
    "resnet18",
]

OPSET = 17
# IR 8 is the oldest IR that carries opset 17; older consumers (TVM's ONNX importer, older
# onnxruntime builds) reject newer IR versions that onnx.helper would stamp by default.
IR_VERSION = 8

Dim = int | str


class _Builder:
    """Collects nodes and initializers, enforcing unique node, value and initializer names."""

    def __init__(self, seed: int):
        self.rng = np.random.default_rng(seed)
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self._node_names: set[str] = set()
        self._value_names: set[str] = set()

    def _claim_value(self, name: str) -> None:
        if name in self._value_names:
            raise ValueError(f"duplicate value name {name!r}")
        self._value_names.add(name)

    def add_input_name(self, name: str) -> None:
        self._claim_value(name)

    def init(self, name: str, array: np.ndarray) -> str:
        """Add an initializer; returns its name."""
        self._claim_value(name)
        self.initializers.append(numpy_helper.from_array(np.asarray(array), name))
        return name

    def const(self, name: str, value: float | int | Sequence[int], dtype=np.float32) -> str:
        """A small constant initializer (scalar or 1-D), created once and shared by name."""
        if name in self._value_names:
            return name
        return self.init(name, np.array(value, dtype=dtype))

    def normal(self, name: str, shape: Sequence[int], std: float, mean: float = 0.0) -> str:
        data = self.rng.standard_normal(tuple(shape), dtype=np.float32) * np.float32(std)
        return self.init(name, data + np.float32(mean))

    def uniform(self, name: str, shape: Sequence[int], low: float, high: float) -> str:
        return self.init(name, self.rng.uniform(low, high, tuple(shape)).astype(np.float32))

    def node(
        self,
        op: str,
        inputs: Sequence[str],
        name: str,
        output: str | None = None,
        **attrs,
    ) -> str:
        """Add a node named `name`; its single output is `output` (default: the node name)."""
        if name in self._node_names:
            raise ValueError(f"duplicate node name {name!r}")
        self._node_names.add(name)
        out = output or name
        self._claim_value(out)
        self.nodes.append(helper.make_node(op, list(inputs), [out], name=name, **attrs))
        return out

    def model(
        self,
        graph_name: str,
        inputs: list[onnx.ValueInfoProto],
        outputs: list[onnx.ValueInfoProto],
        doc: str,
    ) -> onnx.ModelProto:
        graph = helper.make_graph(
            self.nodes, graph_name, inputs, outputs, initializer=self.initializers
        )
        model = helper.make_model(
            graph,
            opset_imports=[helper.make_opsetid("", OPSET)],
            producer_name="edlc.testing.zoo",
            doc_string=doc,
        )
        model.ir_version = IR_VERSION
        return model

    # -- CNN building blocks ------------------------------------------------------------------

    def conv(
        self,
        x: str,
        name: str,
        cin: int,
        cout: int,
        k: int,
        stride: int = 1,
        group: int = 1,
        bias: bool = False,
    ) -> str:
        """Conv with He-normal weights (std sqrt(2 / fan_in)), torch-style 'same' padding."""
        fan_in = cin // group * k * k
        w = self.normal(f"{name}.weight", (cout, cin // group, k, k), math.sqrt(2.0 / fan_in))
        ins = [x, w]
        if bias:
            ins.append(self.normal(f"{name}.bias", (cout,), 0.01))
        p = k // 2
        return self.node(
            "Conv",
            ins,
            name,
            kernel_shape=[k, k],
            strides=[stride, stride],
            pads=[p, p, p, p],
            dilations=[1, 1],
            group=group,
        )

    def bn(self, x: str, name: str, c: int, gamma: tuple[float, float] = (0.8, 1.2)) -> str:
        """Inference BatchNormalization with plausible trained-looking statistics."""
        ins = [
            x,
            self.uniform(f"{name}.weight", (c,), *gamma),
            self.normal(f"{name}.bias", (c,), 0.1),
            self.normal(f"{name}.running_mean", (c,), 0.1),
            self.uniform(f"{name}.running_var", (c,), 0.5, 1.5),
        ]
        return self.node("BatchNormalization", ins, name, epsilon=1e-5, momentum=0.9)

    def relu6(self, x: str, name: str) -> str:
        lo = self.const("relu6.min", 0.0)
        hi = self.const("relu6.max", 6.0)
        return self.node("Clip", [x, lo, hi], name)

    def classifier(self, x: str, name: str, cin: int, classes: int) -> str:
        """torch.nn.Linear as exported: Gemm with transB=1 and a [out, in] weight."""
        w = self.normal(f"{name}.weight", (classes, cin), 1.0 / math.sqrt(cin))
        b = self.normal(f"{name}.bias", (classes,), 0.01)
        return self.node("Gemm", [x, w, b], name, output="logits", alpha=1.0, beta=1.0, transB=1)


def _value_info(name: str, elem_type: int, shape: Sequence[Dim]) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, elem_type, list(shape))


def _check_dim(name: str, value: Dim) -> None:
    if isinstance(value, str):
        if not value:
            raise ValueError(f"{name}: a symbolic dimension needs a non-empty name")
    elif isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int or a symbolic name, got {value!r}")


# ----------------------------------------------------------------------------------------------
# ResNet-18
# ----------------------------------------------------------------------------------------------


def resnet18(batch: int | str = 1, image: int = 224, seed: int = 0) -> onnx.ModelProto:
    """torchvision-style ResNet-18 (11,689,512 parameters) with unfolded BatchNormalization.

    The classic conv/BN/ReLU/residual CNN: exercises BN folding, conv+add+relu fusion, pooling
    and Gemm. `batch` may be a name (e.g. "N") to make the batch dimension symbolic.
    Input "input" [batch, 3, image, image] float32; output "logits" [batch, 1000].
    """
    _check_dim("batch", batch)
    _check_dim("image", image)
    g = _Builder(seed)
    g.add_input_name("input")

    x = g.conv("input", "conv1", 3, 64, 7, stride=2)
    x = g.bn(x, "bn1", 64)
    x = g.node("Relu", [x], "relu")
    x = g.node("MaxPool", [x], "maxpool", kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])

    cin = 64
    for stage, cout in enumerate([64, 128, 256, 512], start=1):
        for block in range(2):
            stride = 2 if (stage > 1 and block == 0) else 1
            p = f"layer{stage}.{block}"
            identity = x
            y = g.conv(x, f"{p}.conv1", cin, cout, 3, stride=stride)
            y = g.bn(y, f"{p}.bn1", cout)
            y = g.node("Relu", [y], f"{p}.relu1")
            y = g.conv(y, f"{p}.conv2", cout, cout, 3)
            # A smaller last-BN gamma (like zero-init-residual, softened) keeps the residual
            # stream from doubling its variance at every block.
            y = g.bn(y, f"{p}.bn2", cout, gamma=(0.3, 0.6))
            if stride != 1 or cin != cout:
                identity = g.conv(x, f"{p}.downsample.0", cin, cout, 1, stride=stride)
                identity = g.bn(identity, f"{p}.downsample.1", cout, gamma=(0.5, 0.8))
            y = g.node("Add", [y, identity], f"{p}.add")
            x = g.node("Relu", [y], f"{p}.relu2")
            cin = cout

    x = g.node("GlobalAveragePool", [x], "avgpool")
    x = g.node("Flatten", [x], "flatten", axis=1)
    g.classifier(x, "fc", 512, 1000)

    return g.model(
        "resnet18",
        [_value_info("input", TensorProto.FLOAT, [batch, 3, image, image])],
        [_value_info("logits", TensorProto.FLOAT, [batch, 1000])],
        "ResNet-18 (torchvision layout), random weights",
    )


# ----------------------------------------------------------------------------------------------
# MobileNetV2
# ----------------------------------------------------------------------------------------------

# (expansion t, output channels c, repeats n, first stride s), as in the paper and torchvision.
_MOBILENET_V2_SETTINGS = [
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
]


def mobilenet_v2(batch: int | str = 1, image: int = 224, seed: int = 0) -> onnx.ModelProto:
    """torchvision-style MobileNetV2 (3,504,872 parameters), width 1.0.

    Inverted residuals with depthwise (group=channels) convs and ReLU6 as opset-13 Clip with
    min/max inputs: exercises grouped-conv lowering, Clip handling and BN folding into depthwise
    convs. `batch` may be a name to make it symbolic.
    Input "input" [batch, 3, image, image] float32; output "logits" [batch, 1000].
    """
    _check_dim("batch", batch)
    _check_dim("image", image)
    g = _Builder(seed)
    g.add_input_name("input")

    x = g.conv("input", "features.0.conv", 3, 32, 3, stride=2)
    x = g.bn(x, "features.0.bn", 32)
    x = g.relu6(x, "features.0.relu6")

    cin = 32
    idx = 1
    for t, c, n, s in _MOBILENET_V2_SETTINGS:
        for i in range(n):
            stride = s if i == 0 else 1
            p = f"features.{idx}"
            hidden = cin * t
            y = x
            if t != 1:
                y = g.conv(y, f"{p}.expand", cin, hidden, 1)
                y = g.bn(y, f"{p}.expand.bn", hidden)
                y = g.relu6(y, f"{p}.expand.relu6")
            y = g.conv(y, f"{p}.depthwise", hidden, hidden, 3, stride=stride, group=hidden)
            y = g.bn(y, f"{p}.depthwise.bn", hidden)
            y = g.relu6(y, f"{p}.depthwise.relu6")
            y = g.conv(y, f"{p}.project", hidden, c, 1)
            # The projection is linear (no activation); a residual adds to it when shapes allow.
            residual = stride == 1 and cin == c
            y = g.bn(y, f"{p}.project.bn", c, gamma=(0.3, 0.6) if residual else (0.8, 1.2))
            if residual:
                y = g.node("Add", [y, x], f"{p}.add")
            x = y
            cin = c
            idx += 1

    x = g.conv(x, f"features.{idx}.conv", cin, 1280, 1)
    x = g.bn(x, f"features.{idx}.bn", 1280)
    x = g.relu6(x, f"features.{idx}.relu6")
    x = g.node("GlobalAveragePool", [x], "avgpool")
    x = g.node("Reshape", [x, g.const("flatten.shape", [-1, 1280], np.int64)], "flatten")
    g.classifier(x, "classifier.1", 1280, 1000)

    return g.model(
        "mobilenet_v2",
        [_value_info("input", TensorProto.FLOAT, [batch, 3, image, image])],
        [_value_info("logits", TensorProto.FLOAT, [batch, 1000])],
        "MobileNetV2 (torchvision layout), random weights",
    )


# ----------------------------------------------------------------------------------------------
# BERT encoder
# ----------------------------------------------------------------------------------------------


def _layer_norm(
    g: _Builder, x: str, name: str, hidden: int, eps: float = 1e-12, output: str | None = None
) -> str:
    """LayerNorm over the last axis, decomposed the way torch.onnx writes it below opset 17's
    fused op: ReduceMean, Sub, Pow, ReduceMean, Add eps, Sqrt, Div, Mul gamma, Add beta."""
    gamma = g.normal(f"{name}.weight", (hidden,), 0.05, mean=1.0)
    beta = g.normal(f"{name}.bias", (hidden,), 0.05)
    two = g.const("const.two", 2.0)
    epsilon = g.const(f"const.layernorm_eps.{eps:g}", eps)
    mean = g.node("ReduceMean", [x], f"{name}.mean", axes=[-1], keepdims=1)
    d = g.node("Sub", [x, mean], f"{name}.sub")
    sq = g.node("Pow", [d, two], f"{name}.pow")
    var = g.node("ReduceMean", [sq], f"{name}.var", axes=[-1], keepdims=1)
    ve = g.node("Add", [var, epsilon], f"{name}.add_eps")
    std = g.node("Sqrt", [ve], f"{name}.sqrt")
    n = g.node("Div", [d, std], f"{name}.div")
    y = g.node("Mul", [n, gamma], f"{name}.mul_gamma")
    return g.node("Add", [y, beta], f"{name}.add_beta", output=output)


def _linear(g: _Builder, x: str, name: str, cin: int, cout: int) -> str:
    """torch.nn.Linear on a 3-D input as exported: MatMul by a [in, out] weight, then Add."""
    w = g.normal(f"{name}.weight", (cin, cout), 1.0 / math.sqrt(cin))
    b = g.normal(f"{name}.bias", (cout,), 0.02)
    y = g.node("MatMul", [x, w], f"{name}.matmul")
    return g.node("Add", [y, b], f"{name}.add")


def _gelu_erf(g: _Builder, x: str, name: str) -> str:
    """Exact GELU as exported from torch: x * 0.5 * (1 + erf(x / sqrt(2)))."""
    sqrt2 = g.const("const.sqrt2", math.sqrt(2.0))
    one = g.const("const.one", 1.0)
    half = g.const("const.half", 0.5)
    t = g.node("Div", [x, sqrt2], f"{name}.div")
    e = g.node("Erf", [t], f"{name}.erf")
    a = g.node("Add", [e, one], f"{name}.add")
    h = g.node("Mul", [x, half], f"{name}.mul_half")
    return g.node("Mul", [h, a], f"{name}.mul")


def _split_heads(g: _Builder, x: str, name: str, hidden: int, shape: str, perm: list[int]) -> str:
    """Q/K/V projection, Reshape to [b, s, heads, d], Transpose to the head-major layout."""
    y = _linear(g, x, name, hidden, hidden)
    y = g.node("Reshape", [y, shape], f"{name}.reshape")
    return g.node("Transpose", [y], f"{name}.transpose", perm=perm)


def bert_encoder(
    batch: int | str = 1,
    seq: int = 128,
    hidden: int = 256,
    layers: int = 4,
    heads: int = 4,
    ffn: int = 1024,
    vocab: int = 1000,
    seed: int = 0,
    dynamic_shapes: bool = False,
    max_positions: int = 512,
) -> onnx.ModelProto:
    """A BERT-style encoder written op for op as `torch.onnx.export` (opset 17) writes it.

    Exercises the transformer path: embedding Gathers, decomposed LayerNorm and erf-GELU (for
    pattern fusion), Reshape/Transpose head splitting, batched MatMul, additive mask + Softmax.

    Inputs "input_ids" and "attention_mask", int64 [batch, seq]; output "last_hidden_state"
    float32 [batch, seq, hidden]. `batch` may be a name to make it symbolic. With
    `dynamic_shapes`, batch and seq are symbolic ("batch", "seq") and every Reshape target and
    the position-id slice are computed at run time with Shape -> Gather -> Unsqueeze -> Concat
    chains, as exporters emit them, so a compiler must bind input shapes and fold these first.
    """
    _check_dim("batch", batch)
    for name, v in [
        ("seq", seq),
        ("hidden", hidden),
        ("layers", layers),
        ("heads", heads),
        ("ffn", ffn),
        ("vocab", vocab),
        ("max_positions", max_positions),
    ]:
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{name} must be a positive int, got {v!r}")
    if hidden % heads:
        raise ValueError(f"hidden ({hidden}) must be divisible by heads ({heads})")
    if seq > max_positions:
        raise ValueError(f"seq ({seq}) exceeds max_positions ({max_positions})")
    head_dim = hidden // heads

    g = _Builder(seed)
    g.add_input_name("input_ids")
    g.add_input_name("attention_mask")
    i64 = np.int64

    # -- embeddings: word + position, then LayerNorm ----------------------------------------
    word = g.normal("embeddings.word_embeddings.weight", (vocab, hidden), 0.5)
    pos = g.normal("embeddings.position_embeddings.weight", (max_positions, hidden), 0.5)
    if dynamic_shapes:
        # position_ids buffer [1, max_positions] sliced to [:, :seq], seq read off input_ids.
        ids_all = g.init("embeddings.position_ids", np.arange(max_positions, dtype=i64)[None])
        ids_shape = g.node("Shape", ["input_ids"], "embeddings.shape")
        s = g.node(
            "Gather", [ids_shape, g.const("const.idx1", 1, i64)], "embeddings.seq_len", axis=0
        )
        s1 = g.node("Unsqueeze", [s, g.const("const.axes0", [0], i64)], "embeddings.seq_len_1d")
        pos_ids = g.node(
            "Slice",
            [ids_all, g.const("const.zero_1d", [0], i64), s1, g.const("const.axes1", [1], i64)],
            "embeddings.position_ids_slice",
        )
    else:
        pos_ids = g.init("embeddings.position_ids", np.arange(seq, dtype=i64)[None])
    we = g.node("Gather", [word, "input_ids"], "embeddings.word_embeddings", axis=0)
    pe = g.node("Gather", [pos, pos_ids], "embeddings.position_embeddings", axis=0)
    x = g.node("Add", [we, pe], "embeddings.add")
    x = _layer_norm(g, x, "embeddings.LayerNorm", hidden)

    # -- extended attention mask: (1 - mask.float()) * -10000, shaped [b, 1, 1, s] -----------
    m = g.node(
        "Unsqueeze", ["attention_mask", g.const("const.axes12", [1, 2], i64)], "mask.unsqueeze"
    )
    m = g.node("Cast", [m], "mask.cast", to=TensorProto.FLOAT)
    m = g.node("Sub", [g.const("const.one", 1.0), m], "mask.invert")
    mask = g.node("Mul", [m, g.const("const.mask_value", -10000.0)], "mask.scale")

    scale = g.const("const.attention_scale", math.sqrt(head_dim))
    b_static = -1 if isinstance(batch, str) else batch
    if not dynamic_shapes:
        split_shape = g.const("const.split_heads_shape", [b_static, seq, heads, head_dim], i64)
        merge_shape = g.const("const.merge_heads_shape", [b_static, seq, hidden], i64)

    for layer in range(layers):
        p = f"encoder.layer.{layer}"
        a = f"{p}.attention"
        if dynamic_shapes:
            # Exporter-style shape arithmetic from the layer input [b, s, hidden].
            shp = g.node("Shape", [x], f"{a}.shape")
            bd = g.node("Gather", [shp, g.const("const.idx0", 0, i64)], f"{a}.shape_b", axis=0)
            sd = g.node("Gather", [shp, g.const("const.idx1", 1, i64)], f"{a}.shape_s", axis=0)
            b1 = g.node("Unsqueeze", [bd, g.const("const.axes0", [0], i64)], f"{a}.shape_b_1d")
            s1 = g.node("Unsqueeze", [sd, g.const("const.axes0", [0], i64)], f"{a}.shape_s_1d")
            split_shape = g.node(
                "Concat",
                [
                    b1,
                    s1,
                    g.const("const.heads_1d", [heads], i64),
                    g.const("const.head_dim_1d", [head_dim], i64),
                ],
                f"{a}.split_heads_shape",
                axis=0,
            )
            merge_shape = g.node(
                "Concat",
                [b1, s1, g.const("const.hidden_1d", [hidden], i64)],
                f"{a}.merge_heads_shape",
                axis=0,
            )

        q = _split_heads(g, x, f"{a}.self.query", hidden, split_shape, [0, 2, 1, 3])  # [b,h,s,d]
        # K^T [b, h, d, s]: transpose(1, 2) then transpose(-1, -2), merged as exporters do.
        k = _split_heads(g, x, f"{a}.self.key", hidden, split_shape, [0, 2, 3, 1])
        v = _split_heads(g, x, f"{a}.self.value", hidden, split_shape, [0, 2, 1, 3])
        sc = g.node("MatMul", [q, k], f"{a}.self.scores")
        sc = g.node("Div", [sc, scale], f"{a}.self.scale")
        sc = g.node("Add", [sc, mask], f"{a}.self.mask")
        pr = g.node("Softmax", [sc], f"{a}.self.softmax", axis=-1)
        ctx = g.node("MatMul", [pr, v], f"{a}.self.context")
        ctx = g.node("Transpose", [ctx], f"{a}.self.context.transpose", perm=[0, 2, 1, 3])
        ctx = g.node("Reshape", [ctx, merge_shape], f"{a}.self.context.reshape")
        y = _linear(g, ctx, f"{a}.output.dense", hidden, hidden)
        y = g.node("Add", [y, x], f"{a}.output.residual")
        x = _layer_norm(g, y, f"{a}.output.LayerNorm", hidden)

        y = _linear(g, x, f"{p}.intermediate.dense", hidden, ffn)
        y = _gelu_erf(g, y, f"{p}.intermediate.gelu")
        y = _linear(g, y, f"{p}.output.dense", ffn, hidden)
        y = g.node("Add", [y, x], f"{p}.output.residual")
        out = "last_hidden_state" if layer == layers - 1 else None
        x = _layer_norm(g, y, f"{p}.output.LayerNorm", hidden, output=out)

    if dynamic_shapes:
        b_dim: Dim = batch if isinstance(batch, str) else "batch"
        s_dim: Dim = "seq"
    else:
        b_dim, s_dim = batch, seq
    inputs = [
        _value_info("input_ids", TensorProto.INT64, [b_dim, s_dim]),
        _value_info("attention_mask", TensorProto.INT64, [b_dim, s_dim]),
    ]
    outputs = [_value_info("last_hidden_state", TensorProto.FLOAT, [b_dim, s_dim, hidden])]
    return g.model("bert_encoder", inputs, outputs, "BERT-style encoder, random weights")


# ----------------------------------------------------------------------------------------------
# Helpers
# ----------------------------------------------------------------------------------------------

ZOO: dict[str, Callable[..., onnx.ModelProto]] = {
    "resnet18": resnet18,
    "mobilenet_v2": mobilenet_v2,
    "bert": bert_encoder,
}

# the input shapes the zoo is compiled, tested and benchmarked at: batch 1
SHAPES: dict[str, dict[str, tuple[int, ...]]] = {
    "resnet18": {"input": (1, 3, 224, 224)},
    "mobilenet_v2": {"input": (1, 3, 224, 224)},
    "bert": {"input_ids": (1, 128), "attention_mask": (1, 128)},
}

_NOT_PARAMETERS = (".running_mean", ".running_var", ".position_ids")


def parameter_count(model: onnx.ModelProto) -> int:
    """Trainable parameters, counted the way torch's `sum(p.numel() for p in m.parameters())`
    does: float initializers of rank >= 1, excluding BN running statistics and buffers (scalar
    and integer constants are graph constants, not parameters)."""
    total = 0
    for t in model.graph.initializer:
        if t.data_type not in (TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.DOUBLE):
            continue
        if not t.dims or t.name.endswith(_NOT_PARAMETERS):
            continue
        total += math.prod(t.dims)
    return total


def _index_bound(model: onnx.ModelProto, input_name: str, default: int) -> int:
    """Rows of the initializer table a Gather indexes with `input_name` (the vocab size)."""
    tables = {t.name: t for t in model.graph.initializer}
    for n in model.graph.node:
        if n.op_type == "Gather" and len(n.input) > 1 and n.input[1] == input_name:
            table = tables.get(n.input[0])
            if table is not None and table.dims:
                axis = next((a.i for a in n.attribute if a.name == "axis"), 0)
                return int(table.dims[axis])
    return default


def random_inputs(
    model: onnx.ModelProto,
    seed: int = 0,
    shapes: dict[str, int | Sequence[int]] | None = None,
    max_id: int | None = None,
) -> dict[str, np.ndarray]:
    """Seeded random feeds for every graph input (initializers excluded).

    Floats are standard normal. Integer inputs whose name contains "mask" are all ones; other
    integer inputs (token ids) are uniform in [0, bound), where bound is `max_id` if given, else
    the row count of the embedding table the model Gathers from, else 1000.
    `shapes` fills symbolic dimensions: either a dim name -> size (e.g. {"batch": 2, "seq": 16})
    or an input name -> full shape. Unnamed or unlisted symbolic dims get 1.
    """
    shapes = dict(shapes or {})
    rng = np.random.default_rng(seed)
    init_names = {t.name for t in model.graph.initializer}
    feeds: dict[str, np.ndarray] = {}
    for vi in model.graph.input:
        if vi.name in init_names:
            continue
        tt = vi.type.tensor_type
        if vi.name in shapes and not isinstance(shapes[vi.name], int):
            shape = tuple(int(d) for d in shapes[vi.name])  # type: ignore[union-attr]
        else:
            shape = tuple(
                d.dim_value if d.HasField("dim_value") else int(shapes.get(d.dim_param, 1))
                for d in tt.shape.dim
            )
        dtype = helper.tensor_dtype_to_np_dtype(tt.elem_type)
        if np.issubdtype(dtype, np.floating):
            feeds[vi.name] = rng.standard_normal(shape).astype(dtype)
        elif dtype == np.bool_:
            feeds[vi.name] = np.ones(shape, dtype=dtype)
        elif np.issubdtype(dtype, np.integer):
            if "mask" in vi.name.lower():
                feeds[vi.name] = np.ones(shape, dtype=dtype)
            else:
                bound = max_id if max_id is not None else _index_bound(model, vi.name, 1000)
                feeds[vi.name] = rng.integers(0, bound, size=shape).astype(dtype)
        else:
            raise TypeError(f"random_inputs: unsupported dtype {dtype} for input {vi.name!r}")
    return feeds
