"""A small CNN trained on scikit-learn's bundled digits (8x8 images, offline) in about a second:
the int8 test and tutorial need a model whose accuracy means something.

    data = load_digits_split()
    model = train_digits_cnn(data)          # onnx.ModelProto, input "x" [N, 1, 8, 8], "logits" [N, 10]
    accuracy(outputs["logits"], data.y_test)

The network is conv 3x3 (16 filters) -> ReLU -> max-pool 2x2 -> flatten -> linear. The conv
filters are random (a fixed random feature map), the linear layer is fit in closed form (ridge
regression onto one-hot targets): no gradient loop, deterministic, > 95% held-out accuracy.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

FILTERS = 16


@dataclass
class DigitsSplit:
    x_train: np.ndarray  # [N, 1, 8, 8] float32 in [0, 1]
    y_train: np.ndarray  # [N] int
    x_test: np.ndarray
    y_test: np.ndarray


def load_digits_split(test_fraction: float = 0.25, seed: int = 0) -> DigitsSplit:
    """sklearn's digits (bundled with the package: no download), shuffled and split."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = (d.images / 16.0).astype(np.float32)[:, None]
    order = np.random.default_rng(seed).permutation(len(x))
    n_test = int(len(x) * test_fraction)
    test, train = order[:n_test], order[n_test:]
    return DigitsSplit(x[train], d.target[train], x[test], d.target[test])


def _features(x: np.ndarray, w: np.ndarray, b: np.ndarray) -> np.ndarray:
    """conv 3x3 pad 1 -> ReLU -> max-pool 2x2 -> flatten, in numpy (the training forward pass)."""
    from numpy.lib.stride_tricks import sliding_window_view

    xp = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
    win = sliding_window_view(xp, (3, 3), axis=(2, 3))  # [n, 1, 8, 8, 3, 3]
    y = np.einsum("ncyxij,ocij->noyx", win, w) + b[None, :, None, None]
    y = np.maximum(y, 0)
    n, o, h, wd = y.shape
    y = y.reshape(n, o, h // 2, 2, wd // 2, 2).max(axis=(3, 5))
    return y.reshape(n, -1)


def train_digits_cnn(data: DigitsSplit, seed: int = 0, ridge: float = 1e-1) -> onnx.ModelProto:
    """The trained model as ONNX (batch dim symbolic, "N")."""
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((FILTERS, 1, 3, 3)).astype(np.float32)
    b = (rng.standard_normal(FILTERS) * 0.1).astype(np.float32)
    f = _features(data.x_train, w, b).astype(np.float64)
    f1 = np.concatenate([f, np.ones((len(f), 1))], axis=1)
    targets = np.eye(10)[data.y_train]
    sol = np.linalg.solve(f1.T @ f1 + ridge * np.eye(f1.shape[1]), f1.T @ targets)
    wf, bf = sol[:-1].astype(np.float32), sol[-1].astype(np.float32)
    inits = [numpy_helper.from_array(a, n) for a, n in ((w, "w1"), (b, "b1"), (wf, "wf"), (bf, "bf"))]
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1], name="conv1"),
             helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
             helper.make_node("MaxPool", ["r1"], ["p1"], kernel_shape=[2, 2], strides=[2, 2], name="pool1"),
             helper.make_node("Flatten", ["p1"], ["f"], name="flatten"),
             helper.make_node("MatMul", ["f", "wf"], ["mm"], name="fc"),
             helper.make_node("Add", ["mm", "bf"], ["logits"], name="fc_bias")]
    graph = helper.make_graph(nodes, "digits_cnn",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1, 8, 8])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 10])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def accuracy(logits: np.ndarray, labels: np.ndarray) -> float:
    """Top-1 accuracy in percent."""
    return 100.0 * float(np.mean(np.argmax(logits, axis=-1) == labels))


__all__ = ["DigitsSplit", "accuracy", "load_digits_split", "train_digits_cnn"]
