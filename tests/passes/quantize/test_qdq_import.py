"""Already-quantized ONNX: QDQ models import onto edlc's int8 ops (the QDQ that `edlc quantize`
writes comes back as the graph it was written from), QOperator ops lower directly."""

import numpy as np
import onnx
from onnx import TensorProto, helper
from onnx.reference import ReferenceEvaluator

import edlc
from edlc.ir.interpreter import run_graph
from edlc.pass_manager import PassManager
from edlc.passes.quantize import quantize
from tests.conftest import make_model, tensor_info
from tests.passes.quantize.helpers import samples_for, small_cnn


def test_qdq_export_imports_back_to_int8_ops(rng):
    model = small_cnn(rng)
    samples = samples_for(rng, (1, 1, 16, 16), 8)
    g8, _ = quantize(edlc.load_onnx(model), samples)
    qdq = g8.to_onnx()
    back = PassManager(["import-qdq", "eliminate-dead-code"]).run(edlc.load_onnx(qdq))
    assert back.op_histogram() == g8.op_histogram()
    records: list = []
    m = edlc.compile(qdq, pass_records=records)  # the default pipeline imports QDQ first
    assert records[0].name == "import-qdq" and records[0].modified
    for s in samples[:3]:
        want = run_graph(g8, s)[0]
        np.testing.assert_array_equal(run_graph(back, s)[0], want)
        np.testing.assert_array_equal(m.run(s)["logits"], want)


def test_qoperator_ops_lower_directly(rng):
    w = rng.integers(-127, 128, (8, 4, 3, 3)).astype(np.int8)
    inits = {"xs": np.float32(0.05), "xz": np.uint8(120), "w": w,
             "ws": rng.uniform(0.001, 0.002, 8).astype(np.float32), "wz": np.zeros(8, np.int8),
             "ys": np.float32(0.05), "yz": np.uint8(128),
             "b": rng.integers(-1000, 1000, 8).astype(np.int32), "shape": np.array([1, 32], np.int64),
             "m": rng.integers(-127, 128, (32, 6)).astype(np.int8), "ms": np.float32(0.002),
             "mz": np.int8(0), "zs": np.float32(0.02)}
    nodes = [helper.make_node("QLinearConv", ["x", "xs", "xz", "w", "ws", "wz", "ys", "yz", "b"], ["y"],
                              pads=[1, 1, 1, 1], strides=[2, 2]),
             helper.make_node("Reshape", ["y", "shape"], ["yr"]),
             helper.make_node("QLinearMatMul", ["yr", "ys", "yz", "m", "ms", "mz", "zs", "yz"], ["z"])]
    model = make_model(nodes, [tensor_info("x", [1, 4, 4, 4], TensorProto.UINT8)],
                       [tensor_info("z", [1, 6], TensorProto.UINT8)], inits)
    x = rng.integers(0, 256, (1, 4, 4, 4)).astype(np.uint8)
    want = ReferenceEvaluator(model).run(None, {"x": x})[0]
    assert len(np.unique(want)) > 2  # not all saturated
    got = edlc.compile(model, passes=[]).run({"x": x})["z"]
    np.testing.assert_array_equal(got, want)
    onnx.checker.check_model(model)
