"""MLPerf Tiny-shaped models built in code (fp32, seeded random weights, BatchNorm unfolded as
exporters write it): the four benchmark networks of MLPerf Tiny v1, for the microcontroller
targets. Shapes, layer counts and parameter counts follow the reference models; the weights
are random (He-normal), so accuracy means nothing but numerics and memory do.

- `ds_cnn_kws`: keyword spotting, DS-CNN (small) on 49x10 MFCC features, 12 classes
- `resnet8`: image classification, the CIFAR-10 ResNet-8 (3 residual stacks)
- `mobilenet_v1_vww`: visual wake words, MobileNetV1 x0.25 on 96x96 RGB, 2 classes
- `fc_autoencoder`: anomaly detection, the dense autoencoder on 640 log-mel features
"""

from __future__ import annotations

import math

import onnx
from onnx import TensorProto

from edlc.testing.zoo import _Builder, _value_info

__all__ = ["TINY", "ds_cnn_kws", "fc_autoencoder", "mobilenet_v1_vww", "resnet8"]


def _conv(g: _Builder, x: str, name: str, cin: int, cout: int, k: tuple[int, int],
          stride: int = 1, group: int = 1, pads: list[int] | None = None) -> str:
    fan_in = cin // group * k[0] * k[1]
    w = g.normal(f"{name}.weight", (cout, cin // group, *k), math.sqrt(2.0 / fan_in))
    b = g.normal(f"{name}.bias", (cout,), 0.01)
    pads = pads if pads is not None else [k[0] // 2, k[1] // 2, k[0] // 2, k[1] // 2]
    return g.node("Conv", [x, w, b], name, kernel_shape=list(k), strides=[stride, stride],
                  pads=pads, group=group)


def _conv_bn_relu(g: _Builder, x: str, name: str, cin: int, cout: int, k: int = 3,
                  stride: int = 1, group: int = 1, relu: bool = True) -> str:
    x = _conv(g, x, f"{name}.conv", cin, cout, (k, k), stride, group)
    x = g.bn(x, f"{name}.bn", cout)
    return g.node("Relu", [x], f"{name}.relu") if relu else x


def _head(g: _Builder, x: str, cin: int, classes: int, softmax: bool = True) -> str:
    x = g.node("GlobalAveragePool", [x], "pool")
    x = g.node("Flatten", [x], "flatten", axis=1)
    w = g.normal("fc.weight", (classes, cin), 1.0 / math.sqrt(cin))
    b = g.normal("fc.bias", (classes,), 0.01)
    out = "logits" if not softmax else "fc"
    x = g.node("Gemm", [x, w, b], "fc", output=out, transB=1)
    return g.node("Softmax", [x], "softmax", output="probs", axis=1) if softmax else x


def ds_cnn_kws(seed: int = 0) -> onnx.ModelProto:
    """DS-CNN small (MLPerf Tiny keyword spotting): input "input" [1, 1, 49, 10], output
    "probs" [1, 12]; a 10x4 stride-2 conv (64), four depthwise-separable blocks, average pool,
    dense, softmax (about 24k parameters)."""
    g = _Builder(seed)
    g.add_input_name("input")
    # TF 'same' padding of a 10x4 kernel at stride 2 on 49x10: 4 top, 5 bottom, 1 each side
    x = _conv(g, "input", "conv1", 1, 64, (10, 4), stride=2, pads=[4, 1, 5, 1])
    x = g.node("Relu", [g.bn(x, "conv1.bn", 64)], "conv1.relu")
    for i in range(4):
        x = _conv_bn_relu(g, x, f"dw{i}", 64, 64, 3, group=64)
        x = _conv_bn_relu(g, x, f"pw{i}", 64, 64, 1)
    x = _head(g, x, 64, 12)
    return g.model("ds_cnn_kws", [_value_info("input", TensorProto.FLOAT, [1, 1, 49, 10])],
                   [_value_info("probs", TensorProto.FLOAT, [1, 12])],
                   "MLPerf Tiny KWS DS-CNN (random weights)")


def resnet8(seed: int = 0) -> onnx.ModelProto:
    """The CIFAR-10 ResNet-8 of MLPerf Tiny: input "input" [1, 3, 32, 32], output "probs"
    [1, 10]; a 16-channel stem, three residual stacks (16, 32, 64 channels; 1x1 projection
    shortcuts when downsampling), average pool, dense, softmax (about 78k parameters)."""
    g = _Builder(seed)
    g.add_input_name("input")
    x = _conv_bn_relu(g, "input", "stem", 3, 16)
    cin = 16
    for i, (cout, stride) in enumerate([(16, 1), (32, 2), (64, 2)]):
        y = _conv_bn_relu(g, x, f"s{i}.a", cin, cout, 3, stride)
        y = _conv_bn_relu(g, y, f"s{i}.b", cout, cout, 3, relu=False)
        if stride != 1 or cin != cout:
            x = _conv(g, x, f"s{i}.short", cin, cout, (1, 1), stride, pads=[0, 0, 0, 0])
        x = g.node("Add", [x, y], f"s{i}.add")
        x = g.node("Relu", [x], f"s{i}.relu")
        cin = cout
    x = _head(g, x, 64, 10)
    return g.model("resnet8", [_value_info("input", TensorProto.FLOAT, [1, 3, 32, 32])],
                   [_value_info("probs", TensorProto.FLOAT, [1, 10])],
                   "MLPerf Tiny image classification ResNet-8 (random weights)")


def mobilenet_v1_vww(seed: int = 0, image: int = 96) -> onnx.ModelProto:
    """MobileNetV1 x0.25 (MLPerf Tiny visual wake words): input "input" [1, 3, 96, 96],
    output "probs" [1, 2]; a stride-2 stem and 13 depthwise-separable blocks (8 to 256
    channels), average pool, dense, softmax (about 210k parameters)."""
    g = _Builder(seed)
    g.add_input_name("input")
    x = _conv_bn_relu(g, "input", "stem", 3, 8, 3, 2)
    cin = 8
    blocks = [(16, 1), (32, 2), (32, 1), (64, 2), (64, 1), (128, 2), (128, 1), (128, 1),
              (128, 1), (128, 1), (128, 1), (256, 2), (256, 1)]
    for i, (cout, stride) in enumerate(blocks):
        x = _conv_bn_relu(g, x, f"b{i}.dw", cin, cin, 3, stride, group=cin)
        x = _conv_bn_relu(g, x, f"b{i}.pw", cin, cout, 1)
        cin = cout
    x = _head(g, x, 256, 2)
    return g.model("mobilenet_v1_vww", [_value_info("input", TensorProto.FLOAT, [1, 3, image, image])],
                   [_value_info("probs", TensorProto.FLOAT, [1, 2])],
                   "MLPerf Tiny visual wake words MobileNetV1 0.25 (random weights)")


def fc_autoencoder(seed: int = 0) -> onnx.ModelProto:
    """The MLPerf Tiny anomaly-detection autoencoder: input "input" [1, 640], output "recon"
    [1, 640]; dense 128 x4, an 8-wide bottleneck, dense 128 x4 (BatchNorm and ReLU after each),
    dense 640 (about 270k parameters)."""
    g = _Builder(seed)
    g.add_input_name("input")
    x, cin = "input", 640
    for i, cout in enumerate([128, 128, 128, 128, 8, 128, 128, 128, 128]):
        w = g.normal(f"fc{i}.weight", (cout, cin), math.sqrt(2.0 / cin))
        b = g.normal(f"fc{i}.bias", (cout,), 0.01)
        x = g.node("Gemm", [x, w, b], f"fc{i}", transB=1)
        x = g.node("Relu", [g.bn(x, f"fc{i}.bn", cout)], f"fc{i}.relu")
        cin = cout
    w = g.normal("out.weight", (640, cin), 1.0 / math.sqrt(cin))
    b = g.normal("out.bias", (640,), 0.01)
    g.node("Gemm", [x, w, b], "out", output="recon", transB=1)
    return g.model("fc_autoencoder", [_value_info("input", TensorProto.FLOAT, [1, 640])],
                   [_value_info("recon", TensorProto.FLOAT, [1, 640])],
                   "MLPerf Tiny anomaly detection FC autoencoder (random weights)")


TINY = {"ds_cnn_kws": ds_cnn_kws, "resnet8": resnet8, "mobilenet_v1_vww": mobilenet_v1_vww,
        "fc_autoencoder": fc_autoencoder}
