"""Block and N:M weight sparsity: pruning patterns, packing, the specialized kernels against
the dense computation with the same pruned weights, detection of weights already sparse, and
the compile() / CLI options."""

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

import edlc
from edlc.cli import main
from edlc.driver import import_model
from edlc.passes.sparsity import densify, detect_sparsity, sparsify
from edlc.passes.sparsity.ops import bsr_to_dense, nm_to_dense
from edlc.passes.sparsity.weights import block_prune, is_nm, nm_prune, pack_bsr, zero_block_fraction


def _layer(w: np.ndarray, rows: int, gemm_bias: np.ndarray | None = None):
    k, n = w.shape
    inits = [numpy_helper.from_array(w, "w")]
    if gemm_bias is None:
        node = helper.make_node("MatMul", ["x", "w"], ["y"], name="fc")
    else:
        inits.append(numpy_helper.from_array(gemm_bias, "b"))
        node = helper.make_node("Gemm", ["x", "w", "b"], ["y"], name="fc", alpha=0.5)
    g = helper.make_graph([node], "layer", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [rows, k])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [rows, n])], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def test_patterns_and_packing(rng):
    wt = rng.standard_normal((32, 64)).astype(np.float32)
    pruned = block_prune(wt, (4, 4), 0.75)
    assert zero_block_fraction(pruned, (4, 4)) == 0.75
    values, indices = pack_bsr(pruned, (4, 4))
    assert values.shape == (8, 4, 4, 4) and indices.dtype == np.int32
    np.testing.assert_array_equal(bsr_to_dense(values, indices, 64), pruned.T)
    ragged = pruned.copy()
    ragged[:4] = 0  # an empty row block: padded, still exact
    np.testing.assert_array_equal(bsr_to_dense(*pack_bsr(ragged, (4, 4)), 64), ragged.T)
    values, pos = nm_prune(wt, 2, 4)
    dense = nm_to_dense(values, pos, 2, 4, 64)
    assert is_nm(dense.T, 2, 4) and np.mean(dense == 0) == 0.5
    kept = np.sort(np.abs(wt.reshape(32, 16, 4)), axis=2)[:, :, 2:]  # the two largest stay
    np.testing.assert_array_equal(np.sort(np.abs(dense.T.reshape(32, 16, 4)), axis=2)[:, :, 2:], kept)


@pytest.mark.parametrize("spec,rows,bias", [("block:1x4:0.9", 1, False), ("block:4x4:0.8", 3, True),
                                            ("block:16x1:0.9", 2, False), ("2:4", 1, True), ("1:4", 3, False)])
def test_sparse_kernels_equal_dense_on_the_same_weights(rng, spec, rows, bias):
    w = rng.standard_normal((64, 96)).astype(np.float32)
    b = rng.standard_normal(96).astype(np.float32) if bias else None
    sparse, report = sparsify(import_model(_layer(w, rows, b)), spec)
    assert sparse.nodes[0].domain == "edlc" and report.layers[0].kind != "dense"
    assert [v.name for v in sparse.outputs] == ["y"]
    dense = densify(sparse.copy())
    assert dense.op_histogram().get("MatMul") == 1
    x = {"x": rng.standard_normal((rows, 64)).astype(np.float32)}
    want = edlc.compile(dense).run(x)["y"]
    np.testing.assert_allclose(edlc.compile(sparse).run(x)["y"], want, rtol=1e-5, atol=1e-5)
    from tests.conftest import ort_run  # the export writes the dense MatMul
    np.testing.assert_allclose(ort_run(sparse.to_onnx(), x)["y"], want, rtol=1e-5, atol=1e-5)


def test_detect_existing_sparsity(rng):
    wt = block_prune(rng.standard_normal((96, 64)).astype(np.float32), (4, 4), 0.8)
    g, report = detect_sparsity(import_model(_layer(np.ascontiguousarray(wt.T), 1)))
    assert g.nodes[0].op == "bsr_matmul" and "4x4 blocks found" in report.layers[0].detail
    np.testing.assert_array_equal(bsr_to_dense(g.nodes[0].inputs[1].const, g.nodes[0].inputs[2].const, 64), wt.T)
    values, pos = nm_prune(rng.standard_normal((96, 64)).astype(np.float32), 2, 4)
    g, report = sparsify(import_model(_layer(nm_to_dense(values, pos, 2, 4, 64), 1)), "detect")
    assert g.nodes[0].op == "nm_matmul" and report.layers[0].kind == "nm"
    g, report = detect_sparsity(import_model(_layer(rng.standard_normal((64, 96)).astype(np.float32), 1)))
    assert g.nodes[0].op == "MatMul" and not report.layers


def test_compile_option_manifest_and_cli(rng, tmp_path, capsys):
    import onnx

    model = _layer(rng.standard_normal((64, 96)).astype(np.float32), 1)
    m = edlc.compile(model, sparsity="block:4x4:0.5")
    assert m.manifest["sparsity"]["spec"] == "block:4x4:0.5" and m.manifest["sparsity"]["sparse_layers"] == 1
    with pytest.raises(edlc.errors.InputError, match="not understood"):
        edlc.compile(model, sparsity="blocky")
    onnx.save(model, tmp_path / "m.onnx")
    assert main(["compile", str(tmp_path / "m.onnx"), "--sparsity", "2:4", "-o", str(tmp_path / "out")]) == 0
    assert "sparsity 2:4: 1 of 1 layers sparse" in capsys.readouterr().out
