import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import edlc
from edlc.errors import ModelError, ShapeError
from tests.conftest import ort_run, parse

MLP = """
<ir_version: 8, opset_import: ["" : 17]>
mlp (float[N, 4] x) => (float[N, 3] y) {
    w = Constant <value = float[4, 3] {1,2,3,4,5,6,7,8,9,10,11,12}> ()
    m = MatMul(x, w)
    shape = Shape(m)
    y = Relu(m)
}
"""


def test_import_binds_shapes_and_folds_constant_nodes():
    g = edlc.load_onnx(parse(MLP), {"x": (2, 4)})
    assert g.inputs[0].type.shape == (2, 4)
    assert g.outputs[0].type.shape == (2, 3)
    assert [n.op for n in g.nodes] == ["MatMul", "Shape", "Relu"]
    assert g.nodes[0].inputs[1].is_constant
    g.verify()


def test_export_round_trip_runs_in_onnxruntime(rng):
    model = parse(MLP)
    g = edlc.load_onnx(model, {"x": (2, 4)})
    exported = g.to_onnx()
    onnx.checker.check_model(exported, full_check=True)
    x = rng.standard_normal((2, 4)).astype(np.float32)
    np.testing.assert_allclose(ort_run(exported, {"x": x})["y"], ort_run(model, {"x": x})["y"], rtol=1e-6)


def test_symbolic_dims_stay_symbolic_without_binding():
    g = edlc.load_onnx(parse(MLP))
    assert g.inputs[0].type.shape == ("N", 4)


def test_bad_bindings_are_named():
    with pytest.raises(ShapeError, match="inputs are"):
        edlc.load_onnx(parse(MLP), {"nope": (1, 4)})
    with pytest.raises(ShapeError, match="rank 2"):
        edlc.load_onnx(parse(MLP), {"x": (1, 2, 4)})
    with pytest.raises(ShapeError, match="fixed dim 4"):
        edlc.load_onnx(parse(MLP), {"x": (1, 5)})


def test_corrupt_and_missing_files(tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\x00not a model\xff" * 10)
    with pytest.raises(ModelError, match="not a valid ONNX model"):
        edlc.load_onnx(bad)
    with pytest.raises(ModelError, match="no such model file"):
        edlc.load_onnx(tmp_path / "missing.onnx")


def test_too_old_opset_is_refused():
    m = parse(MLP.replace('"" : 17', '"" : 6').replace("Constant <value = float[4, 3] {1,2,3,4,5,6,7,8,9,10,11,12}> ()", "Identity(x)"))
    with pytest.raises(ModelError, match="opset 6"):
        edlc.load_onnx(m)


def _external_model(tmp_path, location: str):
    w = numpy_helper.from_array(np.ones((4, 3), np.float32), "w")
    w.data_location = TensorProto.EXTERNAL
    w.ClearField("raw_data")
    for k, v in (("location", location), ("offset", "0"), ("length", "48")):
        e = w.external_data.add()
        e.key, e.value = k, v
    g = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "ext",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])], [w])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    path = tmp_path / "model" / "m.onnx"
    path.parent.mkdir(exist_ok=True)
    path.write_bytes(m.SerializeToString())
    return path


def test_external_data_inside_the_folder_is_read(tmp_path):
    path = _external_model(tmp_path, "weights.bin")
    (path.parent / "weights.bin").write_bytes(np.arange(12, dtype=np.float32).tobytes())
    g = edlc.load_onnx(path)
    np.testing.assert_array_equal(g.nodes[0].inputs[1].const.ravel(), np.arange(12))


@pytest.mark.parametrize("location", ["../secret.bin", "/etc/passwd", "link.bin"])
def test_external_data_outside_the_folder_is_refused(tmp_path, location):
    (tmp_path / "secret.bin").write_bytes(b"\x00" * 48)
    path = _external_model(tmp_path, location)
    (path.parent / "link.bin").symlink_to(tmp_path / "secret.bin")
    with pytest.raises(ModelError, match="outside the model's folder"):
        edlc.load_onnx(path)


def test_dangling_input_is_reported():
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])
    m = helper.make_model(helper.make_graph([helper.make_node("Add", ["x", "ghost"], ["y"])], "g", [x], [y]),
                          opset_imports=[helper.make_opsetid("", 17)])
    with pytest.raises(ModelError, match="ghost"):
        edlc.load_onnx(m)


def test_external_data_through_a_linked_folder_is_refused(tmp_path):
    (tmp_path / "secret.bin").write_bytes(b"\x00" * 48)
    path = _external_model(tmp_path, "up/secret.bin")
    (path.parent / "up").symlink_to(tmp_path)
    with pytest.raises(ModelError, match="outside the model's folder"):
        edlc.load_onnx(path)


@pytest.mark.parametrize("entries, match", [
    ({"offset": "40"}, r"asks for bytes 40..88 of 'weights.bin', which has 48"),
    ({"length": "4096"}, r"asks for bytes 0..4096"),
    ({"offset": "-4"}, "offset -4 is negative"),
    ({"length": "lots"}, "length 'lots' is not a number"),
])
def test_external_data_offsets_are_checked(tmp_path, entries, match):
    path = _external_model(tmp_path, "weights.bin")
    (path.parent / "weights.bin").write_bytes(np.arange(12, dtype=np.float32).tobytes())
    m = onnx.load(path, load_external_data=False)
    for e in m.graph.initializer[0].external_data:
        e.value = entries.get(e.key, e.value)
    path.write_bytes(m.SerializeToString())
    with pytest.raises(ModelError, match=match):
        edlc.load_onnx(path)


def test_external_data_location_with_a_nul_is_refused(tmp_path):
    path = _external_model(tmp_path, "weights.bin\x00.txt")
    with pytest.raises(ModelError, match="is not a file name"):
        edlc.load_onnx(path)


def test_model_files_over_protobufs_limit(tmp_path):
    big = tmp_path / "big.onnx"
    with open(big, "wb") as f:
        f.truncate(2 << 30)  # sparse: no disk used
    with pytest.raises(ModelError, match="over protobuf's 2 GiB limit; save the weights as external data"):
        edlc.load_onnx(big)


def test_evaluation_refuses_outputs_larger_than_memory():
    from edlc.frontend.onnx import evaluate_node
    from edlc.ir.graph import Graph
    from edlc.ir.types import TensorType

    g = Graph()
    start, limit, delta = (g.constant(np.array(v, np.int64)) for v in (0, 10**12, 1))
    node = g.add_node("Range", [start, limit, delta], output_types=[TensorType(None, "int64")])  # as declared
    with pytest.raises(ShapeError, match=r"node 'Range' \(Range\): evaluating it would make output 'range' "
                                         r"\[1000000000000\] of 8.0 TB"):
        evaluate_node(node, [start.const, limit.const, delta.const], g.opset)


def test_errors_inside_the_graph_name_the_file(tmp_path):
    w = helper.make_tensor("w", TensorProto.FLOAT4E2M1, [2], [1.0, 2.0])
    g = helper.make_graph([helper.make_node("Cast", ["w"], ["y"], to=TensorProto.FLOAT)], "g", [],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])], [w])
    path = tmp_path / "m.onnx"
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 23)]), path)
    with pytest.raises(ModelError, match=rf"^{path}: initializer 'w' has element type FLOAT4E2M1"):
        edlc.load_onnx(path)


def test_string_attributes_that_are_not_utf8_survive_export():
    node = helper.make_node("Pad", ["x", "pads"], ["y"], name="p", mode=b"\xe9dge")  # not UTF-8
    pads = numpy_helper.from_array(np.array([1, 1], np.int64), "pads")
    g = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])], [pads])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    out = edlc.load_onnx(m).to_onnx()
    assert [a.s for a in out.graph.node[0].attribute if a.name == "mode"] == [b"\xe9dge"]
