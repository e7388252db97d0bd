import numpy as np
import pytest

import edlc
from edlc.errors import InputError
from tests.conftest import parse

MODEL = """
<ir_version: 8, opset_import: ["" : 17]>
g (float[2, 3] x, int64[2] ids) => (float[2, 3] y) {
    y = Relu(x)
}
"""


@pytest.fixture(scope="module")
def module():
    return edlc.compile(parse(MODEL))


def test_run_checks_names_dtypes_and_shapes(module):
    x, ids = np.ones((2, 3), np.float32), np.zeros(2, np.int64)
    assert module.run({"x": x, "ids": ids})["y"].shape == (2, 3)
    with pytest.raises(InputError, match=r"missing \['ids'\].*x: float32\[2, 3\]"):
        module.run({"x": x})
    with pytest.raises(InputError, match="unknown input"):
        module.run({"x": x, "ids": ids, "z": x})
    with pytest.raises(InputError, match="dtype float64"):
        module.run({"x": x.astype(np.float64), "ids": ids})
    with pytest.raises(InputError, match=r"shape \[3, 2\]"):
        module.run({"x": x.reshape(3, 2), "ids": ids})
    with pytest.raises(InputError, match="dict"):
        module.run([x, ids])


def test_inputs_that_are_not_arrays(module):
    ids = np.zeros(2, np.int64)
    with pytest.raises(InputError, match=r"input 'x': not an array .* expected x: float32\[2, 3\]"):
        module.run({"x": [[1.0, 2.0], [3.0]], "ids": ids})
    with pytest.raises(InputError, match=r"convert with \.astype\(np\.float32\)"):
        module.run({"x": np.ones((2, 3)), "ids": ids})
