"""Channel pruning: propagation through BN, residual groups, depthwise, Concat, Reshape and
the next layer, checked numerically (exactly, where the pruned channels were zero) and by
compiling the pruned graph with edlc against onnxruntime on its ONNX export."""

import numpy as np
import pytest

import edlc
from edlc.driver import import_model
from edlc.errors import InputError
from edlc.passes.sparsity import parse_spec, prune_channels, sparsify
from edlc.passes.sparsity.spec import SparsitySpec
from tests.conftest import ort_run
from tests.passes.sparsity.helpers import residual_cnn


def _node(g, name):
    return next(n for n in g.nodes if n.name == name)


def test_zero_channels_are_pruned_exactly(rng):
    graph = import_model(residual_cnn(rng))
    pruned, report = prune_channels(graph, 0.25, layers={"conv3": 1 / 6})
    pruned.verify()
    assert _node(pruned, "conv1").inputs[1].const.shape == (6, 4, 3, 3)
    assert _node(pruned, "conv2").inputs[1].const.shape == (6, 6, 3, 3)
    assert _node(pruned, "conv3").inputs[1].const.shape == (5, 6, 1, 1)
    dw = _node(pruned, "dw")
    assert dw.attrs["group"] == 6 and dw.inputs[1].const.shape == (6, 1, 3, 3)
    assert sorted(_node(pruned, "fc").inputs[1].const.shape) == [5, 11]
    assert list(_node(pruned, "flat").inputs[1].const) == [1, 11]
    assert report.output_error["logits"] < 1e-5  # the removed channels were exactly zero
    rows = {r.name: r for r in report.layers}
    assert rows["conv2"].kind == "channel" and "group of 2" in rows["conv2"].detail
    assert rows["fc"].kind == "inputs" and "graph output" in rows["fc"].detail
    assert report.flops_after < report.flops_before and report.size_after < report.size_before
    assert "kept parameters" in report.format()


def test_pruned_graph_compiled_by_edlc_matches_onnxruntime(rng):
    graph = import_model(residual_cnn(rng, zero=False))
    pruned, _ = prune_channels(graph, 0.5, criterion="l2", measure=False)
    x = {"x": rng.standard_normal((1, 4, 8, 8)).astype(np.float32)}
    got = edlc.compile(pruned).run(x)["logits"]
    np.testing.assert_allclose(got, ort_run(pruned.to_onnx(), x)["logits"], rtol=1e-4, atol=1e-4)


def test_residual_exclude_and_callable_criterion(rng):
    graph = import_model(residual_cnn(rng))
    pruned, report = prune_channels(graph, 0.5, residual=False, exclude=["conv3"], measure=False)
    rows = {r.name: r for r in report.layers}
    assert rows["conv1"].kind == "dense" and "residual" in rows["conv1"].detail
    assert rows["conv3"].kind == "dense" and "excluded" in rows["conv3"].detail
    keep_last = lambda node, w: np.arange(w.shape[0], dtype=float)  # noqa: E731
    pruned, _ = prune_channels(graph, 0.5, criterion=keep_last, measure=False)
    conv3 = _node(pruned, "conv3").inputs[1].const
    w3 = _node(prune_channels(graph, 0.0, measure=False)[0], "conv3").inputs[1].const
    np.testing.assert_array_equal(conv3, w3[3:, [i for i in range(8) if i in (4, 5, 6, 7)]])
    with pytest.raises(InputError, match="no prunable layers"):
        prune_channels(graph, 0.5, layers={"nope": 0.5})
    with pytest.raises(InputError, match="criterion"):
        prune_channels(graph, 0.5, criterion="l7")
    with pytest.raises(InputError, match="ratio"):
        sparsify(graph, "channel:1.5")


@pytest.mark.parametrize("name,compile", [("resnet18", True), ("mobilenet_v2", False)])
def test_zoo_models_prune_compile_and_run(name, compile):
    """Both prune; ResNet-18's pruned build is checked here (MobileNetV2's in the benchmark
    runs: a second zoo build would double this test's CI time)."""
    from edlc.testing.zoo import ZOO

    graph = import_model(ZOO[name](image=32), {"input": (1, 3, 32, 32)})
    pruned, report = prune_channels(graph, 0.5, measure=False)
    assert sum(r.kind == "channel" for r in report.layers) >= 20
    assert report.estimated_speedup > 2.5
    x = {"input": np.random.default_rng(0).standard_normal((1, 3, 32, 32)).astype(np.float32)}
    want = ort_run(pruned.to_onnx(), x)["logits"]
    assert want.shape == (1, 1000)
    if compile:
        np.testing.assert_allclose(edlc.compile(pruned).run(x)["logits"], want, rtol=1e-4, atol=1e-4)


def test_spec_parsing():
    assert parse_spec("channel:0.5") == SparsitySpec("channel", 0.5)
    assert parse_spec("block:4x4:0.9") == SparsitySpec("block", 0.9, (4, 4))
    assert parse_spec(" 2:4 ") == SparsitySpec("nm", n=2, m=4)
    assert str(parse_spec("block:1x4:0.9")) == "block:1x4:0.9"
    for bad in ("channel", "block:4:0.9", "4:2", "dense", "channel:x"):
        with pytest.raises(InputError):
            parse_spec(bad)
