import json

import numpy as np

import edlc
from edlc.target import available_targets, get_target
from tests.conftest import assert_matches_ort, parse

WEIGHTS = ", ".join(str((i % 7) / 7 - 0.4) for i in range(108))
CONV = f"""
<ir_version: 8, opset_import: ["" : 17]>
g (float[1, 3, 8, 8] x) => (float[1, 4, 8, 8] y) {{
    w = Constant <value = float[4, 3, 3, 3] {{{WEIGHTS}}}> ()
    c = Conv <pads = [1, 1, 1, 1]> (x, w)
    y = Relu(c)
}}
"""


def test_x86_detects_the_host():
    t = get_target("x86")
    assert t.tvm["kind"] == "llvm" and t.tvm["mcpu"]
    assert t.tvm["num-cores"] >= 1
    assert set(t.features) >= {"avx2", "avx512", "vnni"}
    assert "x86" in available_targets()
    assert get_target("x86", mcpu="x86-64").tvm["mcpu"] == "x86-64"


def test_build_run_export_load(tmp_path, rng):
    model = parse(CONV)
    m = edlc.compile(model, target="x86")
    x = rng.standard_normal((1, 3, 8, 8)).astype(np.float32)
    assert_matches_ort(m, model, {"x": x}, rtol=1e-5, atol=1e-5)
    out = m.export(tmp_path / "art")
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["inputs"] == [{"name": "x", "shape": [1, 3, 8, 8], "dtype": "float32"}]
    assert manifest["target"]["name"] == "x86" and len(manifest["model"]["sha256"]) == 64
    assert manifest["tvm_version"].startswith("0.27")
    m2 = edlc.load(out)
    np.testing.assert_array_equal(m2.run({"x": x})["y"], m.run({"x": x})["y"])
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp dirs left
