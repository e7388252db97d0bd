"""Default CPU schedules: every rule's op class gets a parallel, vectorized kernel and the
model's results still match onnxruntime.

Models are built through `edlc.compile` with `apply_default_schedules` applied right after
fusion (`pipeline.fuse`), the place the build pipeline calls it from; the scheduled modules are
captured to check the kernels.
"""

import re

import numpy as np
import pytest
import tvm
from onnx import helper
from tvm import te, tirx

import edlc
from edlc.lower import pipeline
from edlc.schedules import apply_default_schedules, contraction
from edlc.target import get_target
from tests.conftest import assert_matches_ort, make_model, tensor_info


@pytest.fixture
def scheduled(monkeypatch):
    """Compile with the default schedules; returns the list of scheduled modules."""
    seen = []
    fuse = pipeline.fuse

    def fuse_and_schedule(mod, target):
        mod = apply_default_schedules(fuse(mod, target), target)
        seen.append(mod)
        return mod

    monkeypatch.setattr(pipeline, "fuse", fuse_and_schedule)
    return seen


def _kernels(mod) -> dict:
    return {gv.name_hint: f for gv, f in mod.functions.items() if isinstance(f, tirx.PrimFunc)}


def _is_scheduled(f) -> bool:
    return bool(f.attrs is not None and f.attrs.get("tirx.is_scheduled", False))


def _check(scheduled, model, inputs, opt_level=2, rtol=1e-4, atol=1e-4):
    module = edlc.compile(model, opt_level=opt_level)
    assert_matches_ort(module, model, inputs, rtol=rtol, atol=atol)
    return _kernels(scheduled[-1])


def _main_kernel(kernels, *words):
    """The kernel whose TIR mentions all `words` (block names such as conv2d_nchw)."""
    found = [f for f in kernels.values() if all(w in f.script() for w in words)]
    assert found, f"no kernel has {words}: {sorted(kernels)}"
    return found[0]


def _assert_tiled(f):
    """Vectorized, and parallel where the target has more than one core."""
    text = f.script()
    assert _is_scheduled(f)
    assert "T.vectorized" in text, text
    if int(get_target("x86").tvm_target().attrs.get("num-cores", 1)) > 1:
        assert "T.parallel" in text, text


def _vector_or_parallel(f) -> bool:
    """Small shapes stay on one thread (a parallel region would cost more), so a reduction
    rule shows as either."""
    text = f.script()
    return "T.parallel" in text or "T.vectorized" in text


def _conv_w(rng, shape):
    fan_in = int(np.prod(shape[1:]))
    return (rng.standard_normal(shape) * np.sqrt(2.0 / fan_in)).astype(np.float32)


@pytest.mark.parametrize("width", [16, 12])  # vector over the width / over the channels
def test_conv3x3_bias_residual_relu(scheduled, rng, width):
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("Add", ["c", "x"], ["a"]),
             helper.make_node("Relu", ["a"], ["y"])]
    shape = [1, 16, width, width]
    model = make_model(nodes, [tensor_info("x", shape)], [tensor_info("y", shape)],
                   {"w": _conv_w(rng, (16, 16, 3, 3)), "b": rng.standard_normal(16).astype("f")})
    x = rng.standard_normal(shape).astype(np.float32)
    kernels = _check(scheduled, model, {"x": x})
    conv = _main_kernel(kernels, "conv2d_nchw")
    _assert_tiled(conv)
    text = conv.script()
    assert 'scope="local"' in text  # accumulators in a register tile
    assert "T_add" not in text or "T.max" in text  # epilogue fused into the conv's loop nest


@pytest.mark.parametrize("width", [32, 16, 7])  # phase-split width / channels / narrow
def test_conv3x3_stride_and_narrow_width(scheduled, rng, width):
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1],
                              strides=[2, 2]),
             helper.make_node("Relu", ["c"], ["y"])]
    out = (width + 1) // 2
    model = make_model(nodes, [tensor_info("x", [1, 8, width, width])], [tensor_info("y", [1, 24, out, out])],
                   {"w": _conv_w(rng, (24, 8, 3, 3)), "b": rng.standard_normal(24).astype("f")})
    x = rng.standard_normal((1, 8, width, width)).astype(np.float32)
    _assert_tiled(_main_kernel(_check(scheduled, model, {"x": x}), "conv2d_nchw"))


def test_pointwise_conv(scheduled, rng):
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"]),
             helper.make_node("Clip", ["c", "lo", "hi"], ["y"])]
    model = make_model(nodes, [tensor_info("x", [1, 12, 16, 16])], [tensor_info("y", [1, 32, 16, 16])],
                   {"w": _conv_w(rng, (32, 12, 1, 1)), "b": rng.standard_normal(32).astype("f"),
                    "lo": np.array(0, np.float32), "hi": np.array(6, np.float32)})
    x = rng.standard_normal((1, 12, 16, 16)).astype(np.float32)
    _assert_tiled(_main_kernel(_check(scheduled, model, {"x": x}), "conv2d_nchw"))


@pytest.mark.parametrize("stride", [1, 2])
def test_depthwise_conv(scheduled, rng, stride):
    c = 16
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["d"], pads=[1, 1, 1, 1], group=c,
                              strides=[stride, stride]),
             helper.make_node("Relu", ["d"], ["y"])]
    out = 16 // stride
    model = make_model(nodes, [tensor_info("x", [1, c, 16, 16])], [tensor_info("y", [1, c, out, out])],
                   {"w": _conv_w(rng, (c, 1, 3, 3)), "b": rng.standard_normal(c).astype("f")})
    x = rng.standard_normal((1, c, 16, 16)).astype(np.float32)
    dw = _main_kernel(_check(scheduled, model, {"x": x}), "group_conv2d")
    _assert_tiled(dw)
    if stride == 2:  # padded input stored split by column parity (5-D): contiguous loads
        alloc = re.search(r"pad_temp = T.sblock_alloc_buffer\(\((.*?)\)\)\n", dw.script())
        assert alloc is not None and alloc.group(1).count("T.int64(") == 5, dw.script()


@pytest.mark.parametrize("depthwise", [False, True])
def test_nhwc_conv_at_opt_level_3(scheduled, rng, depthwise):
    c = 16
    group = c if depthwise else 1
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1], group=group),
             helper.make_node("Relu", ["c"], ["r"]),
             helper.make_node("Conv", ["r", "w2", "b2"], ["y"])]
    model = make_model(nodes, [tensor_info("x", [1, c, 10, 10])], [tensor_info("y", [1, 8, 10, 10])],
                   {"w": _conv_w(rng, (c, c // group, 3, 3)),
                    "b": rng.standard_normal(c).astype("f"),
                    "w2": _conv_w(rng, (8, c, 1, 1)),
                    "b2": rng.standard_normal(8).astype("f")})
    x = rng.standard_normal((1, c, 10, 10)).astype(np.float32)
    kernels = _check(scheduled, model, {"x": x}, opt_level=3)
    convs = [f for f in kernels.values() if "conv2d_nhwc" in f.script()]
    assert convs, sorted(kernels)
    for f in convs:
        _assert_tiled(f)
    if depthwise:  # the taps read the unpadded input: no padded copy
        dw = [f for f in convs if "group_conv2d_nhwc" in f.script()]
        assert dw and all("pad_temp" not in f.script() for f in dw), dw[0].script()


def _gelu(x, y):
    return [helper.make_node("Div", [x, "sqrt2"], [y + "_d"]),
            helper.make_node("Erf", [y + "_d"], [y + "_e"]),
            helper.make_node("Add", [y + "_e", "one"], [y + "_a"]),
            helper.make_node("Mul", [x, y + "_a"], [y + "_m"]),
            helper.make_node("Mul", [y + "_m", "half"], [y])]


def test_matmul_3d_by_2d_bias_gelu(scheduled, rng):
    nodes = [helper.make_node("MatMul", ["x", "w"], ["mm"]),
             helper.make_node("Add", ["mm", "b"], ["h"])] + _gelu("h", "y")
    inits = {"w": (rng.standard_normal((32, 48)) * 0.2).astype("f"),
             "b": rng.standard_normal(48).astype("f"),
             "sqrt2": np.array(np.sqrt(2.0), np.float32), "one": np.array(1.0, np.float32),
             "half": np.array(0.5, np.float32)}
    model = make_model(nodes, [tensor_info("x", [2, 8, 32])], [tensor_info("y", [2, 8, 48])], inits)
    x = rng.standard_normal((2, 8, 32)).astype(np.float32)
    kernels = _check(scheduled, model, {"x": x})
    mm = _main_kernel(kernels, "matmul")
    _assert_tiled(mm)
    assert "T.erf" not in mm.script()  # the vectorizable erf


def test_gemm_with_transposed_weight(scheduled, rng):
    nodes = [helper.make_node("Gemm", ["x", "w", "b"], ["y"], transB=1)]
    model = make_model(nodes, [tensor_info("x", [4, 40])], [tensor_info("y", [4, 24])],
                   {"w": rng.standard_normal((24, 40)).astype("f"),
                    "b": rng.standard_normal(24).astype("f")})
    x = rng.standard_normal((4, 40)).astype(np.float32)
    kernels = _check(scheduled, model, {"x": x})
    assert all(_is_scheduled(f) for f in kernels.values())


def test_batch_matmul(scheduled, rng):
    nodes = [helper.make_node("MatMul", ["a", "b"], ["y"])]
    model = make_model(nodes, [tensor_info("a", [2, 3, 8, 16]), tensor_info("b", [2, 3, 16, 24])],
                   [tensor_info("y", [2, 3, 8, 24])], {})
    inputs = {"a": rng.standard_normal((2, 3, 8, 16)).astype(np.float32),
              "b": rng.standard_normal((2, 3, 16, 24)).astype(np.float32)}
    _assert_tiled(_main_kernel(_check(scheduled, model, inputs), "matmul"))


def test_attention_scores_softmax_context(scheduled, rng):
    nodes = [helper.make_node("MatMul", ["q", "kt"], ["s"]),
             helper.make_node("Mul", ["s", "scale"], ["ss"]),
             helper.make_node("Softmax", ["ss"], ["p"], axis=-1),
             helper.make_node("MatMul", ["p", "v"], ["y"])]
    model = make_model(nodes, [tensor_info("q", [1, 2, 16, 8]), tensor_info("kt", [1, 2, 8, 16]),
                           tensor_info("v", [1, 2, 16, 8])], [tensor_info("y", [1, 2, 16, 8])],
                   {"scale": np.array(0.35, np.float32)})
    inputs = {n: rng.standard_normal(s).astype(np.float32)
              for n, s in (("q", (1, 2, 16, 8)), ("kt", (1, 2, 8, 16)), ("v", (1, 2, 16, 8)))}
    kernels = _check(scheduled, model, inputs)
    assert all(_is_scheduled(f) for f in kernels.values())
    assert any("T.vectorized" in f.script() for f in kernels.values())


def test_softmax(scheduled, rng):
    model = make_model([helper.make_node("Softmax", ["x"], ["y"], axis=-1)],
                   [tensor_info("x", [2, 4, 16, 32])], [tensor_info("y", [2, 4, 16, 32])], {})
    x = (rng.standard_normal((2, 4, 16, 32)) * 4).astype(np.float32)
    kernels = _check(scheduled, model, {"x": x})
    assert all(_is_scheduled(f) for f in kernels.values())
    assert all("T.exp" not in f.script() for f in kernels.values())  # the vectorizable exp
    assert any(_vector_or_parallel(f) for f in kernels.values())


def test_layer_norm(scheduled, rng):
    nodes = [helper.make_node("LayerNormalization", ["x", "g", "b"], ["y"], axis=-1,
                              epsilon=1e-5)]
    model = make_model(nodes, [tensor_info("x", [4, 32, 64])], [tensor_info("y", [4, 32, 64])],
                   {"g": rng.uniform(0.5, 1.5, 64).astype("f"),
                    "b": rng.standard_normal(64).astype("f")})
    x = rng.standard_normal((4, 32, 64)).astype(np.float32)
    kernels = _check(scheduled, model, {"x": x})
    assert all(_is_scheduled(f) for f in kernels.values())
    assert any(_vector_or_parallel(f) for f in kernels.values())


@pytest.mark.parametrize("op, attrs, out", [
    ("MaxPool", {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1]}, 32),
    ("AveragePool", {"kernel_shape": [2, 2], "strides": [2, 2]}, 32),
    ("GlobalAveragePool", {}, 1),
    ("ReduceMean", {"axes": [2, 3], "keepdims": 1}, 1),
])
def test_pools_and_reductions(scheduled, rng, op, attrs, out):
    x = rng.standard_normal((1, 16, 64, 64)).astype(np.float32)
    model = make_model([helper.make_node(op, ["x"], ["y"], **attrs)],
                   [tensor_info("x", list(x.shape))], [tensor_info("y", [1, 16, out, out])], {})
    kernels = _check(scheduled, model, {"x": x})
    assert kernels and all(_is_scheduled(f) for f in kernels.values())
    assert any(_vector_or_parallel(f) for f in kernels.values())


def test_transpose_is_tiled(scheduled, rng):
    model = make_model([helper.make_node("Transpose", ["x"], ["y"], perm=[0, 2, 1])],
                   [tensor_info("x", [2, 64, 48])], [tensor_info("y", [2, 48, 64])], {})
    x = rng.standard_normal((2, 64, 48)).astype(np.float32)
    kernels = _check(scheduled, model, {"x": x})
    assert any("T.vectorized" in f.script() for f in kernels.values())


# -- the function itself, on PrimFuncs made directly ----------------------------------------


def _te_matmul(m=12, n=40, k=24):
    a = te.placeholder((m, k), "float32", name="A")
    b = te.placeholder((k, n), "float32", name="B")
    r = te.reduce_axis((0, k), name="k")
    c = te.compute((m, n), lambda i, j: te.sum(a[i, r] * b[r, j], axis=r), name="C")
    d = te.compute((m, n), lambda i, j: tvm.tirx.max(c[i, j], tvm.tirx.const(0, "float32")),
                   name="D")
    return tvm.IRModule({"mm": te.create_prim_func([a, b, d])})


def _x86():
    return get_target("x86").tvm_target()


def _run(func, target, *arrays):
    lib = tvm.tirx.build(tvm.IRModule({"main": func.with_attr("global_symbol", "main")}), target)
    args = [tvm.runtime.tensor(a) for a in arrays]
    lib["main"](*args)
    return args[-1].numpy()


def test_primfunc_scheduled_marked_and_exact(rng):
    mod, target = _te_matmul(), _x86()
    out = apply_default_schedules(mod, target)
    f = out["mm"]
    _assert_tiled(f)
    a = rng.standard_normal((12, 24)).astype(np.float32)
    b = rng.standard_normal((24, 40)).astype(np.float32)
    got = _run(f, target, a, b, np.zeros((12, 40), np.float32))
    np.testing.assert_allclose(got, np.maximum(a @ b, 0), rtol=1e-5, atol=1e-5)


def test_already_scheduled_and_non_cpu_targets_are_left_alone():
    mod = _te_matmul()
    marked = tvm.IRModule({"mm": mod["mm"].with_attr("tirx.is_scheduled", True)})
    assert apply_default_schedules(marked, _x86())["mm"].same_as(marked["mm"])
    legacy = tvm.IRModule({"mm": mod["mm"].with_attr("tir.is_scheduled", True)})
    assert apply_default_schedules(legacy, _x86())["mm"].same_as(legacy["mm"])
    cuda = tvm.target.Target({"kind": "cuda", "arch": "sm_80"}, host={"kind": "llvm"})
    assert apply_default_schedules(mod, cuda).same_as(mod)
    m4 = tvm.target.Target({"kind": "llvm", "mtriple": "thumbv7em-none-eabihf",
                            "mcpu": "cortex-m4"})
    assert apply_default_schedules(mod, m4).same_as(mod)


def test_failing_rule_leaves_kernel_unscheduled(monkeypatch, rng):
    def broken(*args, **kwargs):
        raise tvm.s_tir.ScheduleError("broken rule")

    monkeypatch.setattr(contraction, "apply", broken)
    mod, target = _te_matmul(), _x86()
    f = apply_default_schedules(mod, target)["mm"]  # no exception
    a = rng.standard_normal((12, 24)).astype(np.float32)
    b = rng.standard_normal((24, 40)).astype(np.float32)
    got = _run(f, target, a, b, np.zeros((12, 40), np.float32))
    np.testing.assert_allclose(got, np.maximum(a @ b, 0), rtol=1e-5, atol=1e-5)


def test_symbolic_shapes_do_not_raise():
    n = tvm.tirx.Var("n", "int64")
    a = te.placeholder((n, 16), "float32", name="A")
    b = te.compute((n, 16), lambda i, j: a[i, j] * 2.0, name="B")
    mod = tvm.IRModule({"f": te.create_prim_func([a, b])})
    out = apply_default_schedules(mod, _x86())
    assert isinstance(out["f"], tirx.PrimFunc)


def _matmul_plan(m: int, k: int, n: int, **kw) -> contraction.Plan:
    """The contraction plan for A[m, k] @ W[k, n] with W a weight, on an AVX2 CPU of 2 cores."""
    from tvm import s_tir

    from edlc.schedules.analysis import CPU

    a, w = te.placeholder((m, k), name="A"), te.placeholder((k, n), name="W")
    r = te.reduce_axis((0, k), "r")
    out = te.compute((m, n), lambda i, j: te.sum(a[i, r] * w[r, j], axis=r), name="C")
    f = te.create_prim_func([a, w, out]).with_attr("layout_free_buffers", [1])
    sch = s_tir.Schedule(f)
    return contraction.plan(contraction.match(sch, sch.get_sblock("C")), CPU(8, 16, 2), **kw)


def test_register_tiles_for_awkward_shapes():
    # 49 rows (a 1x1 conv over 7x7): 2 vectors x 4 rows, the last block partial
    p = _matmul_plan(49, 320, 1280)
    assert (p.T, p.Xb) == (16, 4)
    # 24 columns: one tile of 3 vectors rather than three of one
    assert _matmul_plan(3136, 144, 24).T == 24
    # a large input and a small weight: the j-tiles run inside blocks of rows
    assert _matmul_plan(12544, 16, 96).rows_outer
    assert not _matmul_plan(128, 768, 768).rows_outer


@pytest.mark.parametrize("m, k, n", [(49, 64, 48), (4096, 24, 48), (200, 32, 24), (1, 96, 80)])
def test_partial_row_blocks_rows_outer_and_three_vector_tiles(scheduled, rng, m, k, n):
    nodes = [helper.make_node("MatMul", ["x", "w"], ["mm"]),
             helper.make_node("Add", ["mm", "b"], ["h"]),
             helper.make_node("Relu", ["h"], ["y"])]
    model = make_model(nodes, [tensor_info("x", [m, k])], [tensor_info("y", [m, n])],
                       {"w": (rng.standard_normal((k, n)) / np.sqrt(k)).astype("f"),
                        "b": rng.standard_normal(n).astype("f")})
    x = rng.standard_normal((m, k)).astype(np.float32)
    mm = _main_kernel(_check(scheduled, model, {"x": x}), "matmul")
    _assert_tiled(mm)
    text = mm.script()
    if m == 49:
        assert "T.where" in text  # the partial last block of rows
    if n == 24:
        assert "T.unroll(T.int64(3))" in text  # 3 vectors of 8, not one 24-lane vector


def test_three_vector_tiles_take_four_rows_where_the_reduction_is_long():
    assert (_matmul_plan(3136, 144, 24).T, _matmul_plan(3136, 144, 24).Xb) == (24, 4)
    assert _matmul_plan(3136, 16, 24).Xb == 2  # 12 accumulators per 16 steps: not worth it
    # a matrix-vector product streams its weight tile by tile, packed when compiling
    assert _matmul_plan(1, 1280, 1000).pack is not None


def test_every_depthwise_variant_computes_the_same(rng):
    """Each variant tuning measures (register tiles, the channel tiles inside each block of
    pixels) gives the unscheduled kernel's result."""
    from edlc.schedules import default_schedule, schedule_variants
    from edlc.schedules.analysis import cpu_of
    from edlc.tune import extract

    c = 64
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["d"], pads=[1, 1, 1, 1], group=c),
             helper.make_node("Relu", ["d"], ["y"])]
    model = make_model(nodes, [tensor_info("x", [1, c, 14, 14])], [tensor_info("y", [1, c, 14, 14])],
                       {"w": _conv_w(rng, (c, 1, 3, 3)), "b": rng.standard_normal(c).astype("f")})
    _, target, tasks = extract(model, opt_level=3)
    func = next(t.dispatched[0]["main"] for t in tasks if "group_conv2d" in t.dispatched[0]["main"].script())
    cpu = cpu_of(target)
    variants = schedule_variants(func, cpu)
    assert contraction.Variant(j_inner=True) in variants

    def run(f):
        lib = tvm.compile(tvm.IRModule({"main": f}), target=target)
        args = [tvm.runtime.tensor(a) for a in arrays]
        lib["main"](*args)
        return args[-1].numpy()

    arrays = [rng.standard_normal([int(d) for d in p.shape]).astype("float32")
              for p in func.params]
    want = run(func)
    for v in [None, *variants]:
        sch = default_schedule(func, cpu, v)
        got = run(sch.mod["main"].with_attr("tirx.is_scheduled", True))
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5, err_msg=str(v))
