"""Default schedules of the Winograd transforms: channels in vector lanes, tile positions in
parallel, the group's epilogue inside the output transform; and the product tunes as an
ordinary batch matmul."""

from __future__ import annotations

import tvm
import tvm_ffi
from tvm import tirx

import edlc
from edlc.driver import import_model, optimize
from edlc.lower import lower, pipeline
from edlc.records import DEFAULT, read_choices
from edlc.schedules import apply_default_schedules
from edlc.target import get_target
from edlc.tune import tune
from tests.conftest import assert_matches_ort
from tests.passes.test_winograd import _inputs, block


def _kernels(model):
    tgt = get_target("x86")
    graph, _ = optimize(import_model(model), 3, target=tgt)
    target = tgt.tvm_target()
    with tvm.transform.PassContext(opt_level=3):
        fused = pipeline.fuse(lower(graph, tgt).mod, target)
        scheduled = apply_default_schedules(fused, target)
    return {gv.name_hint: f for gv, f in scheduled.functions.items() if isinstance(f, tirx.PrimFunc)}


def _loop_kinds(func) -> set:
    loops: list = []
    tvm_ffi.structural_walk(func.body, (tirx.For, loops.append), order="post")
    return {lp.kind for lp in loops}


def test_transforms_are_vectorized_parallel_and_the_epilogue_joins_the_output():
    kernels = _kernels(block(32, 32, 16))
    transforms = {n: f for n, f in kernels.items() if "winograd_input" in n or "Conv_2" in n}
    assert len(transforms) == 2, list(kernels)
    for name, func in transforms.items():
        assert func.attrs["tirx.is_scheduled"], name
        kinds = _loop_kinds(func)
        assert {tirx.ForKind.PARALLEL, tirx.ForKind.VECTORIZED, tirx.ForKind.UNROLLED} <= kinds, name
    output = next(f for n, f in transforms.items() if "Conv_2" in n)
    blocks: list = []
    tvm_ffi.structural_walk(output.body, (tvm.s_tir.SBlock, blocks.append), order="post")
    # transform rows, transform (with bias, residual add and ReLU inlined), no other pass
    assert sorted(b.name_hint for b in blocks if b.name_hint != "root") == \
        ["winograd_output", "winograd_output_rows"]


def test_the_product_tunes_and_the_records_apply(tmp_path):
    model = block(16, 16, 8)
    result = tune(model, records=tmp_path / "rec", trials=8, opt_level=3, population=16,
                  trials_per_iter=2)
    names = [t.name for t in result.tasks]
    assert any("matmul" in n for n in names), names
    module = edlc.compile(model, opt_level=3, records=tmp_path / "rec")
    # the product's record applies, unless the closing check found edlc's default faster
    choice = next(c for c in read_choices(tmp_path / "rec").values() if "matmul" in c["kernel"])
    applied = module.manifest["tuning"]["kernels_with_record" if choice["record"] != DEFAULT
                                        else "kernels_without_record"]
    assert any("matmul" in k for k in applied), (choice, module.manifest["tuning"])
    assert_matches_ort(module, model, _inputs(model))
