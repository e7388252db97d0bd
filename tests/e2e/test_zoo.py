"""Each zoo model, full size, compiled for x86 and checked against onnxruntime (fp32:
rtol 1e-4, atol 1e-4), then exported, loaded back and run again."""

import numpy as np
import pytest

import edlc
from edlc.testing.zoo import ZOO, random_inputs
from tests.conftest import assert_matches_ort

SHAPES = {"resnet18": {"input": (1, 3, 224, 224)}, "mobilenet_v2": {"input": (1, 3, 224, 224)},
          "bert": {"input_ids": (1, 128), "attention_mask": (1, 128)}}


@pytest.mark.parametrize("name", sorted(ZOO))
def test_zoo_model_matches_onnxruntime(name, tmp_path):
    model = ZOO[name](batch="N") if name != "bert" else ZOO[name](batch="N", dynamic_shapes=True)
    module = edlc.compile(model, target="x86", input_shapes=SHAPES[name])
    inputs = random_inputs(model, shapes=SHAPES[name])
    assert_matches_ort(module, model, inputs)
    loaded = edlc.load(module.export(tmp_path / name))
    first = next(iter(module.outputs))["name"]
    np.testing.assert_array_equal(loaded.run(inputs)[first], module.run(inputs)[first])
