"""Block and N:M weight sparsity: pruning patterns, packing, the specialized kernels against
the dense computation with the same pruned weights (every kernel the lowering picks between,
on x86 with AVX, on x86 without it, and on aarch64 under qemu), detection of weights already
sparse, and the compile() / CLI options."""

import shutil

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

import edlc
from edlc.cli import main
from edlc.driver import import_model
from edlc.passes.sparsity import densify, detect_sparsity, sparsify
from edlc.passes.sparsity.ops import bsr_to_dense, nm_positions, nm_to_dense
from edlc.passes.sparsity.weights import (
    block_prune,
    is_nm,
    nm_lanes,
    nm_prune,
    pack_bsr,
    pack_nm,
    zero_block_fraction,
)


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
    # 8 row blocks of 4 rows, interleaved two at a time (8 rows of accumulators), 4 blocks each
    assert values.shape == (4, 4, 2, 4, 4) and indices.shape == (4, 4, 2) and indices.dtype == np.uint8
    np.testing.assert_array_equal(bsr_to_dense(values, indices, 64), pruned.T)
    ragged = pruned.copy()
    ragged[:4] = 0  # an empty row block: padded, still exact
    np.testing.assert_array_equal(bsr_to_dense(*pack_bsr(ragged, (4, 4)), 64), ragged.T)
    rows = block_prune(wt, (1, 4), 0.75)
    values, indices = pack_bsr(rows, (1, 4))
    assert values.shape == (4, 4, 8, 1, 4)  # 1x4: eight outputs interleaved
    np.testing.assert_array_equal(bsr_to_dense(values, indices, 64), rows.T)
    assert pack_bsr(block_prune(rng.standard_normal((4, 2048)).astype(np.float32), (1, 4), 0.5),
                    (1, 4))[1].dtype == np.uint16  # 512 block columns

    values, pos = nm_prune(wt, 2, 4)
    kept = np.sort(np.abs(wt.reshape(32, 16, 4)), axis=2)[:, :, 2:]  # the two largest stay
    packed, bits = pack_nm(values, pos, 2, 4)
    assert packed.shape == (1, 32, 32) and bits.shape == (1, 16, 32) and bits.dtype == np.uint8
    # group g of output o: the two positions in bits 0-1 and 2-3 of one byte
    np.testing.assert_array_equal(nm_positions(bits, 2, 4)[0, 3, :, 5], pos[5, 6:8])
    dense = nm_to_dense(packed, bits, 2, 4, 64)
    assert is_nm(dense.T, 2, 4) and np.mean(dense == 0) == 0.5
    np.testing.assert_array_equal(np.sort(np.abs(dense.T.reshape(32, 16, 4)), axis=2)[:, :, 2:], kept)
    assert [nm_lanes(n) for n in (96, 40, 12, 7)] == [32, 8, 4, 1]
    values, pos = nm_prune(rng.standard_normal((12, 64)).astype(np.float32), 3, 8)  # 9 bits a group
    packed, bits = pack_nm(values, pos, 3, 8)
    assert bits.dtype == np.uint16
    np.testing.assert_array_equal(nm_to_dense(packed, bits, 3, 8, 64), _rows_to_dense(values, pos, 3, 8, 64))


def _rows_to_dense(values, pos, n, m, k):
    """[K, N] from nm_prune's per-output rows, the plain way."""
    wt = np.zeros((values.shape[0], k), values.dtype)
    cols = (np.arange(values.shape[1]) // n * m)[None, :] + pos.astype(np.int64)
    np.put_along_axis(wt, cols, values, axis=1)
    return wt.T


def _kernel(graph, target) -> str:
    """Which kernel the lowering picked for the graph's sparse layer (see edlc/lower/sparse.py)."""
    import tvm

    from edlc.lower import lower
    from edlc.target import get_target

    text = "".join(f.script() for f in lower(graph, get_target(target[0], **(target[1] if len(target) > 1 else {}))).mod.functions.values()
                   if isinstance(f, tvm.tirx.PrimFunc))
    for marker, kind in (("call_llvm_pure_intrin", "permute"), ('sblock("bsr_row")', "row"),
                         ("xp: T.Buffer", "batched")):
        if marker in text:
            return kind
    return "loop"


X86 = ("x86",)
NO_AVX = ("x86", {"mcpu": "x86-64"})  # SSE2 only: the portable kernels


@pytest.mark.parametrize("spec,rows,k,n,bias,target,kernel", [
    ("2:4", 1, 64, 96, True, X86, "permute"),      # one row: 4 vectors of 8 columns
    ("2:4", 3, 64, 96, False, X86, "permute"),     # 3 x 2 register block
    ("1:4", 8, 64, 40, True, X86, "permute"),      # 4 x 1 (40 columns: blocks of 8)
    ("3:4", 2, 64, 32, False, X86, "permute"),
    ("2:8", 2, 64, 48, True, X86, "loop"),         # groups of 8: no 4-way permute
    ("2:4", 3, 64, 96, True, NO_AVX, "loop"),
    ("2:4", 16, 64, 96, False, NO_AVX, "batched"),
    ("block:1x4:0.9", 1, 64, 96, False, X86, "row"),  # two blocks per vector
    ("block:1x4:0.7", 3, 68, 20, True, X86, "row"),   # 5 blocks a row: the odd one half a vector
    ("block:1x8:0.5", 2, 64, 24, False, X86, "row"),
    ("block:1x16:0.5", 2, 64, 24, True, X86, "row"),  # two vectors per block
    ("block:4x4:0.8", 3, 64, 96, True, X86, "loop"),
    ("block:16x1:0.9", 2, 64, 96, False, X86, "loop"),
    ("block:2x1:0.5", 1, 64, 24, False, X86, "loop"),
    ("block:1x4:0.7", 16, 64, 36, True, X86, "batched"),
    ("block:4x4:0.8", 8, 64, 96, False, X86, "batched"),
    ("block:16x1:0.8", 8, 64, 96, True, X86, "batched"),  # 16 rows: 8 at a time
])
def test_sparse_kernels_equal_dense_on_the_same_weights(rng, spec, rows, k, n, bias, target, kernel):
    w = rng.standard_normal((k, n)).astype(np.float32)
    b = rng.standard_normal(n).astype(np.float32) if bias else None
    sparse, report = sparsify(import_model(_layer(w, rows, b)), spec)
    assert sparse.nodes[0].domain == "edlc" and report.layers[0].kind != "dense"
    assert [v.name for v in sparse.outputs] == ["y"]
    assert _kernel(sparse, target) == kernel
    dense = densify(sparse.copy())
    assert dense.op_histogram().get("MatMul") == 1
    x = {"x": rng.standard_normal((rows, k)).astype(np.float32)}
    want = edlc.compile(dense).run(x)["y"]
    options = target[1] if len(target) > 1 else None
    np.testing.assert_allclose(edlc.compile(sparse, target=target[0], target_options=options).run(x)["y"],
                               want, rtol=1e-5, atol=1e-5)
    from tests.conftest import ort_run  # the export writes the dense MatMul
    np.testing.assert_allclose(ort_run(sparse.to_onnx(), x)["y"], want, rtol=1e-5, atol=1e-5)


def test_the_nm_kernel_permutes_in_registers(rng):
    """On AVX the 2:4 kernel selects each lane's input with vpermilps: no gather, no scalar
    loads of x in the loop."""
    sparse, _ = sparsify(import_model(_layer(rng.standard_normal((64, 96)).astype(np.float32), 1)), "2:4")
    asm = edlc.compile(sparse).executable.mod.imports[0].inspect_source("asm")
    assert "vpermilps" in asm and "vgatherdps" not in asm


@pytest.mark.skipif(not (shutil.which("qemu-aarch64") and shutil.which("aarch64-linux-gnu-g++")),
                    reason="needs qemu-user and g++-aarch64-linux-gnu")
@pytest.mark.parametrize("spec,rows,kernel", [("2:4", 3, "loop"), ("1:4", 8, "batched"),
                                              ("block:1x4:0.7", 1, "row"), ("block:1x4:0.7", 8, "batched")])
def test_sparse_kernels_under_qemu_aarch64(rng, spec, rows, kernel):
    """The portable kernels (the permute is x86's) built for aarch64 NEON equal the dense layer."""
    from tests.conftest import ort_run

    sparse, _ = sparsify(import_model(_layer(rng.standard_normal((68, 40)).astype(np.float32), rows)), spec)
    assert _kernel(sparse, ("arm",)) == kernel
    x = {"x": rng.standard_normal((rows, 68)).astype(np.float32)}
    want = ort_run(densify(sparse.copy()).to_onnx(), x)["y"]
    np.testing.assert_allclose(edlc.compile(sparse, target="arm").run(x)["y"], want, rtol=1e-5, atol=1e-5)


@pytest.mark.skipif(not (shutil.which("qemu-system-arm") and shutil.which("arm-none-eabi-gcc")),
                    reason="needs qemu-system-arm and gcc-arm-none-eabi")
@pytest.mark.parametrize("spec,rows", [("2:4", 1), ("block:1x4:0.5", 1), ("block:4x4:0.5", 8)])
def test_sparse_kernels_in_cortex_m4_firmware(rng, spec, rows):
    """No parallel loops on a microcontroller (the firmware has no thread pool): the kernels run
    serially there and equal the dense layer."""
    from tests.conftest import ort_run

    sparse, _ = sparsify(import_model(_layer(rng.standard_normal((64, 96)).astype(np.float32), rows)), spec)
    x = {"x": rng.standard_normal((rows, 64)).astype(np.float32)}
    want = ort_run(densify(sparse.copy()).to_onnx(), x)["y"]
    got = edlc.compile(sparse, target="cortex-m4").run(x)["y"]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_detect_existing_sparsity(rng):
    wt = block_prune(rng.standard_normal((96, 64)).astype(np.float32), (4, 4), 0.8)
    g, report = detect_sparsity(import_model(_layer(np.ascontiguousarray(wt.T), 1)))
    assert g.nodes[0].op == "bsr_matmul" and "4x4 blocks found" in report.layers[0].detail
    np.testing.assert_array_equal(bsr_to_dense(g.nodes[0].inputs[1].const, g.nodes[0].inputs[2].const, 64), wt.T)
    values, pos = nm_prune(rng.standard_normal((96, 64)).astype(np.float32), 2, 4)
    w = nm_to_dense(*pack_nm(values, pos, 2, 4), 2, 4, 64)
    g, report = sparsify(import_model(_layer(w, 1)), "detect")
    assert g.nodes[0].op == "nm_matmul" and report.layers[0].kind == "nm"
    np.testing.assert_array_equal(nm_to_dense(g.nodes[0].inputs[1].const, g.nodes[0].inputs[2].const, 2, 4, 64), w)
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


@pytest.mark.parametrize("spec", ["2:4", "block:4x4:0.75"])
def test_refit_recovers_weights_that_have_the_pattern(rng, spec):
    """Refitting the kept weights to the dense layer's outputs gives back the dense weights when
    those already have the pattern (the least squares problem is exactly solvable), and the
    kernels still equal the dense computation with the refit weights."""
    w = rng.standard_normal((64, 96)).astype(np.float32)
    pruned, _ = sparsify(import_model(_layer(w, 4)), spec)
    w_sparse = densify(pruned.copy()).nodes[0].inputs[1].const  # [K, N] with the pattern
    model = _layer(w_sparse, 4)
    calibration = [{"x": rng.standard_normal((4, 64)).astype(np.float32)} for _ in range(32)]
    plain, _ = sparsify(import_model(model), spec)
    scaled = plain.copy()  # the same pattern, every kept weight off by a factor: refit undoes it
    scaled.nodes[0].set_input(1, scaled.constant(plain.nodes[0].inputs[1].const * 1.5, "v"))
    from edlc.passes.sparsity.reconstruct import refit_sparse

    errors = refit_sparse(import_model(model), scaled, calibration)
    assert errors["fc"][0] > 0.4 and errors["fc"][1] < 1e-3
    got = densify(scaled.copy()).nodes[0].inputs[1].const
    np.testing.assert_allclose(got, w_sparse, rtol=1e-3, atol=1e-3)
    x = {"x": rng.standard_normal((4, 64)).astype(np.float32)}
    np.testing.assert_allclose(edlc.compile(scaled).run(x)["y"], x["x"] @ got, rtol=1e-4, atol=1e-4)


def test_refit_keeps_padding_blocks_empty(rng):
    """A row block with fewer blocks than the others is padded with zero blocks at column 0;
    where column 0 is kept too, the padding repeats it and must stay zero after a refit."""
    wt = block_prune(rng.standard_normal((16, 64)).astype(np.float32), (1, 4), 0.5)
    wt[0, 4:] = 0  # output 0 keeps only block column 0: 7 padding blocks at index 0
    from edlc.passes.sparsity.reconstruct import refit_sparse

    model = _layer(np.ascontiguousarray(wt.T), 2)
    sparse, _ = detect_sparsity(import_model(model), min_fraction=0.4)
    indices = sparse.nodes[0].inputs[2].const
    assert sparse.nodes[0].op == "bsr_matmul" and np.sum(indices[0, :, 0] == 0) == 8
    calibration = [{"x": rng.standard_normal((2, 64)).astype(np.float32)} for _ in range(64)]
    refit_sparse(import_model(model), sparse, calibration)
    values = sparse.nodes[0].inputs[1].const
    assert np.all(values[0, 1:, 0] == 0)  # the repeats
    np.testing.assert_allclose(bsr_to_dense(values, indices, 64), wt.T, rtol=1e-3, atol=1e-3)


def test_compile_refits_with_calibration(rng):
    """`edlc.compile(sparsity=..., calibration=...)` refits the kept weights: on inputs as
    correlated as real activations (here of rank 16), the layer's outputs come closer to the
    dense ones than pruning alone leaves them."""
    w = rng.standard_normal((64, 96)).astype(np.float32)
    model = _layer(w, 4)
    mix = rng.standard_normal((16, 64)).astype(np.float32)

    def sample():
        return {"x": rng.standard_normal((4, 16)).astype(np.float32) @ mix}

    calibration = [sample() for _ in range(32)]
    x = sample()
    dense = x["x"] @ w
    plain = edlc.compile(model, sparsity="2:4").run(x)["y"]
    refit = edlc.compile(model, sparsity="2:4", calibration=calibration)
    assert np.linalg.norm(refit.run(x)["y"] - dense) < np.linalg.norm(plain - dense)
    with pytest.raises(edlc.errors.InputError, match="only used with"):
        edlc.compile(model, calibration=calibration)
