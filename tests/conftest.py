"""Shared test helpers: onnxruntime as the reference, tiny models in ONNX text syntax."""

from __future__ import annotations

import os

import numpy as np
import onnx
import onnx.parser
import pytest

from edlc.testing.reference import ort_outputs

# every pass run in the tests is followed by a graph verification
os.environ.setdefault("EDLC_VERIFY_EACH", "1")


def ort_run(model: onnx.ModelProto, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Outputs of onnxruntime (the reference executor), keyed by output name."""
    return ort_outputs(model, inputs)


def assert_matches_ort(module, model: onnx.ModelProto, inputs: dict[str, np.ndarray],
                       rtol: float = 1e-4, atol: float = 1e-4) -> None:
    got = module.run(inputs)
    want = ort_run(model, inputs)
    assert list(got) == list(want)
    for name in want:
        assert got[name].shape == want[name].shape, name
        assert got[name].dtype == want[name].dtype, name
        np.testing.assert_allclose(got[name], want[name], rtol=rtol, atol=atol, err_msg=name)


def make_model(nodes, inputs, outputs, inits: dict[str, np.ndarray], opset: int = 17) -> onnx.ModelProto:
    """A checked model from onnx.helper nodes, value infos and named initializer arrays."""
    from onnx import helper, numpy_helper

    g = helper.make_graph(nodes, "g", inputs, outputs,
                          [numpy_helper.from_array(a, n) for n, a in inits.items()])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])
    onnx.checker.check_model(m)
    return m


def tensor_info(name: str, shape, elem: int = onnx.TensorProto.FLOAT) -> onnx.ValueInfoProto:
    return onnx.helper.make_tensor_value_info(name, elem, shape)


def parse(text: str) -> onnx.ModelProto:
    """A model from ONNX text syntax, checked."""
    model = onnx.parser.parse_model(text)
    onnx.checker.check_model(model)
    return model


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)
