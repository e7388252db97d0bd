"""Weights re-laid once when compiling (edlc.lower.pipeline.prepack_weights): a schedule that
wants a weight tile-major gets it as a new parameter of `main`, no kernel copies it at run time,
and the results still match onnxruntime, also after save and load."""

import numpy as np
from onnx import helper

import edlc
from edlc.lower import pipeline
from tests.conftest import assert_matches_ort, make_model, tensor_info


def _conv_model(rng, shared: bool):
    """Conv (7x7 spatial: output channels are the vector axis, the weight is repacked), then a
    second conv; with `shared` both read the same weight."""
    w1 = rng.standard_normal((32, 32, 3, 3)).astype(np.float32) * 0.1
    w2 = w1 if shared else rng.standard_normal((32, 32, 3, 3)).astype(np.float32) * 0.1
    inits = {"w1": w1, "b": rng.standard_normal(32).astype(np.float32)}
    if not shared:
        inits["w2"] = w2
    nodes = [helper.make_node("Conv", ["x", "w1", "b"], ["h"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["h"], ["r"]),
             helper.make_node("Conv", ["r", "w1" if shared else "w2"], ["y"], pads=[1, 1, 1, 1])]
    return make_model(nodes, [tensor_info("x", [1, 32, 7, 7])], [tensor_info("y", [1, 32, 7, 7])],
                      inits)


def _assert_no_copy_in_kernels(module):
    """No built kernel is a weight re-layout, and the re-laid weights are parameters."""
    prepacked = [n for n in module.manifest["params"] if ".prepacked" in n]
    assert prepacked, module.manifest["params"]
    for name in prepacked:
        assert module.params[name].ndim == 5  # [O/T, I, KH, KW, T]
    return prepacked


def test_conv_weights_are_prepacked_and_match(rng, tmp_path):
    model = _conv_model(rng, shared=False)
    module = edlc.compile(model, opt_level=2)
    prepacked = _assert_no_copy_in_kernels(module)
    assert len(prepacked) == 2
    assert "w1" not in module.manifest["params"]  # nothing reads the OIHW weight any more
    x = {"x": rng.standard_normal((1, 32, 7, 7)).astype(np.float32)}
    assert_matches_ort(module, model, x)
    module.export(tmp_path / "out")
    assert_matches_ort(edlc.load(tmp_path / "out"), model, x)


def test_weight_shared_by_two_kernels(rng):
    model = _conv_model(rng, shared=True)
    module = edlc.compile(model, opt_level=2)
    _assert_no_copy_in_kernels(module)
    assert_matches_ort(module, model, {"x": rng.standard_normal((1, 32, 7, 7)).astype(np.float32)})


def test_matmul_weight_prepacked(rng):
    """x @ W with W [K, N]: each N-tile of W becomes one contiguous [K, T] block."""
    w = rng.standard_normal((64, 256)).astype(np.float32)
    model = make_model([helper.make_node("MatMul", ["x", "w"], ["y"])],
                       [tensor_info("x", [16, 64])], [tensor_info("y", [16, 256])], {"w": w})
    module = edlc.compile(model, opt_level=2)
    packed = [module.params[n] for n in module.manifest["params"] if ".prepacked" in n]
    assert len(packed) == 1 and packed[0].ndim == 3  # [N/T, K, T]
    t = packed[0].shape[-1]
    np.testing.assert_array_equal(packed[0][1], w[:, t:2 * t])
    assert_matches_ort(module, model, {"x": rng.standard_normal((16, 64)).astype(np.float32)})


def test_weights_read_as_inputs_are_not_marked(rng):
    """Only parameters every call passes a weight for are layout-free: a kernel reading a model
    input there keeps its in-kernel copy."""
    model = make_model([helper.make_node("MatMul", ["x", "w"], ["y"])],
                       [tensor_info("x", [16, 64]), tensor_info("w", [64, 256])],
                       [tensor_info("y", [16, 256])], {})
    module = edlc.compile(model, opt_level=2)
    assert not [n for n in module.manifest["params"] if ".prepacked" in n]
    inputs = {"x": rng.standard_normal((16, 64)).astype(np.float32),
              "w": rng.standard_normal((64, 256)).astype(np.float32)}
    assert_matches_ort(module, model, inputs)


def test_mark_weight_params_names_weight_indices():
    import tvm
    from tvm import relax
    from tvm.script import relax as R
    from tvm.script import tirx as T

    @tvm.script.ir_module
    class Mod:
        @T.prim_func(s_tir=True)
        def add(a: T.Buffer((4,), "float32"), b: T.Buffer((4,), "float32"),
                c: T.Buffer((4,), "float32")):
            for i in range(4):
                with T.sblock("c"):
                    v = T.axis.spatial(4, i)
                    c[v] = a[v] + b[v]

        @R.function
        def main(x: R.Tensor((4,), "float32"), w: R.Tensor((4,), "float32")):
            R.func_attr({"num_input": 1})
            cls = Mod
            y = R.call_tir(cls.add, (x, w), out_ty=R.Tensor((4,), "float32"))
            return y

    marked = pipeline.mark_weight_params(Mod)
    assert [int(k) for k in marked["add"].attrs["layout_free_buffers"]] == [1]
    assert isinstance(marked["main"], relax.Function)
