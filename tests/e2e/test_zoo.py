"""Each zoo model, full size, compiled for x86 and checked against onnxruntime (fp32:
rtol 1e-4, atol 1e-4): once through the Python API, once through `edlc compile` + `edlc run`."""

import numpy as np
import onnx
import pytest

import edlc
from edlc.cli import main
from edlc.testing.zoo import SHAPES, ZOO, random_inputs
from tests.conftest import assert_matches_ort, ort_run


def zoo_model(name: str) -> onnx.ModelProto:
    """Symbolic batch (and, for BERT, exporter-style shape subgraphs) as real exports have."""
    return ZOO[name](batch="N", dynamic_shapes=True) if name == "bert" else ZOO[name](batch="N")


@pytest.mark.parametrize("name", sorted(ZOO))
def test_zoo_model_matches_onnxruntime(name):
    model = zoo_model(name)
    module = edlc.compile(model, target="x86", input_shapes=SHAPES[name])
    assert_matches_ort(module, model, random_inputs(model, shapes=SHAPES[name]))


@pytest.mark.parametrize("name", sorted(ZOO))
def test_zoo_model_through_the_cli(name, tmp_path):
    model = zoo_model(name)
    onnx.save(model, tmp_path / "model.onnx")
    bindings = [a for n, s in SHAPES[name].items() for a in ("--input-shape", f"{n}={'x'.join(map(str, s))}")]
    assert main(["compile", str(tmp_path / "model.onnx"), "--target", "x86", *bindings, "-o", str(tmp_path / "out")]) == 0
    inputs = random_inputs(model, shapes=SHAPES[name], seed=3)
    np.savez(tmp_path / "in.npz", **inputs)
    assert main(["run", str(tmp_path / "out"), "--inputs", str(tmp_path / "in.npz"), "--output", str(tmp_path / "o.npz")]) == 0
    got = np.load(tmp_path / "o.npz")
    for out_name, want in ort_run(model, inputs).items():
        np.testing.assert_allclose(got[out_name], want, rtol=1e-4, atol=1e-4, err_msg=out_name)
