"""Tensors with a zero-sized dim: no TVM kernel runs on one, and none is kept as a constant
in the built code. Found by the fuzzer (fuzz/run.py with builds): CumSum's scan kernel writes
its first element whatever the axis length (heap corruption after Clip -> CumSum on a 0x3x8
input), and an empty constant made the built model unloadable ("Invalid DLTensor file
format"). Outputs must equal onnxruntime's: empty arrays of the right shape and dtype."""

import numpy as np
import pytest
from onnx import TensorProto, helper

import edlc
from edlc.cli import main
from edlc.errors import InputError
from tests.conftest import assert_matches_ort, make_model, tensor_info


def _clip_cumsum(shape) -> object:
    nodes = [helper.make_node("Clip", ["x", "lo", "hi"], ["c"]),
             helper.make_node("CumSum", ["c", "axis"], ["y"])]
    inits = {"lo": np.float32(-1.0), "hi": np.float32(0.0), "axis": np.array(-3, np.int64)}
    return make_model(nodes, [tensor_info("x", shape)], [tensor_info("y", shape)], inits)


@pytest.mark.parametrize("opt_level", [0, 2])
def test_clip_cumsum_on_an_empty_input_runs_no_kernel(opt_level):
    model = _clip_cumsum([0, 3, 8])
    module = edlc.compile(model, opt_level=opt_level)
    # the kernels are what corrupted the heap: none may be left to run on the empty tensor
    assert module.manifest["kernels"] == 0
    x = np.zeros((0, 3, 8), np.float32)
    for _ in range(3):
        assert_matches_ort(module, model, {"x": x})


def test_empty_node_between_kernels_is_skipped(rng):
    """An empty Slice of a real input feeds a Concat: the Slice runs no kernel, the Concat
    gets an empty tensor the VM allocates, and the result equals onnxruntime's."""
    nodes = [helper.make_node("Slice", ["x", "st", "en", "ax"], ["e"]),
             helper.make_node("CumSum", ["e", "ax0"], ["s"]),
             helper.make_node("Concat", ["x", "s"], ["y"], axis=1)]
    inits = {"st": np.array([2], np.int64), "en": np.array([2], np.int64), "ax": np.array([1], np.int64),
             "ax0": np.array(0, np.int64)}
    model = make_model(nodes, [tensor_info("x", [3, 4])], [tensor_info("y", [3, 4])], inits)
    x = rng.standard_normal((3, 4)).astype(np.float32)
    for opt_level in (0, 2):
        assert_matches_ort(edlc.compile(model, opt_level=opt_level), model, {"x": x})


@pytest.mark.parametrize("opt_level", [0, 2])
@pytest.mark.parametrize("axis", [0, 1])
def test_zero_size_initializer_survives_export_and_load(tmp_path, rng, opt_level, axis):
    """An initializer with a 0 dim concatenated to a real input, and an output that is empty
    by itself: the built model loads (in this process and from its artifact) and runs. TVM
    cannot read back an empty constant whose first dim is not the 0 one."""
    empty = (0, 4) if axis == 0 else (2, 0)
    nodes = [helper.make_node("Concat", ["x", "e"], ["y"], axis=axis),
             helper.make_node("Mul", ["e", "two"], ["z"])]
    inits = {"e": np.zeros(empty, np.float32), "two": np.float32(2.0)}
    model = make_model(nodes, [tensor_info("x", [2, 4])],
                       [tensor_info("y", [2, 4]), tensor_info("z", list(empty))], inits)
    x = rng.standard_normal((2, 4)).astype(np.float32)
    module = edlc.compile(model, opt_level=opt_level)
    assert_matches_ort(module, model, {"x": x})
    module.export(tmp_path / "out")
    assert_matches_ort(edlc.load(tmp_path / "out"), model, {"x": x})


@pytest.mark.parametrize("op", ["ReduceSum", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL2", "ReduceLogSumExp"])
def test_reduction_over_an_empty_axis(op):
    """The result is the reduction's identity (0, -inf, +inf, 1, ...), computed at compile
    time from the empty input: nothing is left for a kernel to get wrong."""
    model = make_model([helper.make_node(op, ["x"], ["y"], axes=[1], keepdims=1)],
                       [tensor_info("x", [2, 0, 4])], [tensor_info("y", [2, 1, 4])], {}, opset=12)
    module = edlc.compile(model)
    assert module.manifest["kernels"] == 0
    assert_matches_ort(module, model, {"x": np.zeros((2, 0, 4), np.float32)})


def test_matmul_with_an_empty_inner_dim(rng):
    nodes = [helper.make_node("MatMul", ["x", "w"], ["m"]), helper.make_node("Add", ["m", "b"], ["y"])]
    inits = {"w": np.zeros((0, 4), np.float32), "b": rng.standard_normal(4).astype(np.float32)}
    model = make_model(nodes, [tensor_info("x", [3, 0])], [tensor_info("y", [3, 4])], inits)
    assert_matches_ort(edlc.compile(model, opt_level=0), model, {"x": np.zeros((3, 0), np.float32)})


def test_zero_size_splits():
    """The ONNX test `split_zero_size_splits`: a (0,) input split into three empty outputs."""
    outs = [tensor_info(f"y{i}", [0]) for i in range(3)]
    node = helper.make_node("Split", ["x", "s"], ["y0", "y1", "y2"], axis=0)
    model = make_model([node], [tensor_info("x", [0])], outs, {"s": np.zeros(3, np.int64)}, opset=18)
    assert_matches_ort(edlc.compile(model), model, {"x": np.zeros((0,), np.float32)})


def test_symbolic_dim_of_zero_is_refused_at_run_time(tmp_path):
    """A model built for any N has kernels that are not safe on N = 0: a clear InputError
    naming the input and the dim (exit 2 from `edlc run`), not a crash in the kernel."""
    model = _clip_cumsum(["N", 3, 8])
    module = edlc.compile(model)
    ok = np.ones((2, 3, 8), np.float32)
    assert_matches_ort(module, model, {"x": ok})
    with pytest.raises(InputError, match=r"input 'x'.*dim 'N'.*--input-shape x=0x3x8") as e:
        module.run({"x": np.zeros((0, 3, 8), np.float32)})
    assert "\n" not in str(e.value)
    out = module.export(tmp_path / "out")
    np.savez(tmp_path / "in.npz", x=np.zeros((0, 3, 8), np.float32))
    assert main(["run", str(out), "--inputs", str(tmp_path / "in.npz")]) == 2
    # bound to the empty shape at compile time, it runs
    bound = edlc.compile(model, input_shapes={"x": (0, 3, 8)})
    assert_matches_ort(bound, model, {"x": np.zeros((0, 3, 8), np.float32)})


def test_empty_dtype_is_kept_for_int_outputs():
    """An empty int64 result (Shape of nothing sliced away, ArgMax over a non-empty axis of
    an empty tensor) keeps its dtype."""
    node = helper.make_node("ArgMax", ["x"], ["y"], axis=1, keepdims=0)
    model = make_model([node], [tensor_info("x", [0, 5])], [tensor_info("y", [0], TensorProto.INT64)], {})
    assert_matches_ort(edlc.compile(model), model, {"x": np.zeros((0, 5), np.float32)})
