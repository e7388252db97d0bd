"""The code-built model zoo: valid ONNX, runs in onnxruntime, canonical sizes, sane numerics."""

from __future__ import annotations

import collections

import numpy as np
import onnx
import pytest

from edlc.testing import zoo
from edlc.testing.reference import ort_session

# torchvision's sum(p.numel() for p in model.parameters()).
RESNET18_PARAMS = 11_689_512
MOBILENET_V2_PARAMS = 3_504_872


def _run(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> np.ndarray:
    (out,) = ort_session(model).run(None, feeds)
    return out


# (id, builder, kwargs, shapes for symbolic dims, expected output shape)
CASES = [
    ("resnet18-224", zoo.resnet18, {}, None, (1, 1000)),
    ("resnet18-64-symbolic-batch", zoo.resnet18, {"image": 64, "batch": "N"}, {"N": 2}, (2, 1000)),
    ("mobilenet_v2-64", zoo.mobilenet_v2, {"image": 64, "batch": 2}, None, (2, 1000)),
    ("bert", zoo.bert_encoder, {"seq": 32}, None, (1, 32, 256)),
    ("bert-symbolic-batch", zoo.bert_encoder, {"seq": 16, "batch": "N"}, {"N": 3}, (3, 16, 256)),
]

_cache: dict[str, onnx.ModelProto] = {}


def _model(case_id: str) -> onnx.ModelProto:
    if case_id not in _cache:
        _, builder, kwargs, _, _ = next(c for c in CASES if c[0] == case_id)
        _cache[case_id] = builder(**kwargs)
    return _cache[case_id]


@pytest.mark.parametrize(
    ("case_id", "builder", "kwargs", "shapes", "out_shape"), CASES, ids=[c[0] for c in CASES]
)
def test_model_is_valid_and_runs(case_id, builder, kwargs, shapes, out_shape):
    model = _model(case_id)
    onnx.checker.check_model(model, full_check=True)
    assert model.opset_import[0].version == zoo.OPSET

    feeds = zoo.random_inputs(model, seed=1, shapes=shapes)
    out = _run(model, feeds)
    assert out.shape == out_shape
    assert out.dtype == np.float32
    assert np.isfinite(out).all()
    assert 0.1 <= float(out.std()) <= 100.0, f"output std {out.std()} is badly conditioned"


@pytest.mark.parametrize("case_id", [c[0] for c in CASES])
def test_names_are_unique_and_readable(case_id):
    graph = _model(case_id).graph
    node_names = [n.name for n in graph.node]
    assert all(node_names), "every node needs a name"
    assert len(set(node_names)) == len(node_names)
    init_names = [t.name for t in graph.initializer]
    assert all(init_names)
    assert len(set(init_names)) == len(init_names)
    produced = [o for n in graph.node for o in n.output]
    assert len(set(produced)) == len(produced)
    assert not set(produced) & set(init_names)


def test_parameter_counts_match_torchvision():
    resnet = _model("resnet18-64-symbolic-batch")  # parameter count does not depend on size
    mobilenet = _model("mobilenet_v2-64")
    assert zoo.parameter_count(resnet) == pytest.approx(RESNET18_PARAMS, rel=0.01)
    assert zoo.parameter_count(mobilenet) == pytest.approx(MOBILENET_V2_PARAMS, rel=0.01)
    # The layouts are the torchvision ones, so the counts are in fact exact.
    assert zoo.parameter_count(resnet) == RESNET18_PARAMS
    assert zoo.parameter_count(mobilenet) == MOBILENET_V2_PARAMS


def test_cnn_structure():
    resnet = collections.Counter(n.op_type for n in _model("resnet18-224").graph.node)
    # bn1 + 8 blocks x 2 + 3 downsample BNs, kept unfolded for the BN-folding pass.
    assert resnet["BatchNormalization"] == 20
    assert resnet["Conv"] == 20
    assert resnet["Add"] == 8
    assert resnet["Gemm"] == 1

    model = _model("mobilenet_v2-64")
    ops = collections.Counter(n.op_type for n in model.graph.node)
    assert ops["BatchNormalization"] == ops["Conv"] == 52
    assert ops["Add"] == 10  # residuals where stride 1 and in == out channels
    depthwise = [
        n
        for n in model.graph.node
        if n.op_type == "Conv" and onnx.helper.get_node_attr_value(n, "group") > 1
    ]
    assert len(depthwise) == 17
    clips = [n for n in model.graph.node if n.op_type == "Clip"]
    assert len(clips) == 35 and all(len(n.input) == 3 for n in clips)


def test_bert_is_written_decomposed():
    model = zoo.bert_encoder(seq=8, layers=2)
    ops = collections.Counter(n.op_type for n in model.graph.node)
    assert "LayerNormalization" not in ops and "Gelu" not in ops
    assert ops["Erf"] == 2
    assert ops["ReduceMean"] == 2 * (1 + 2 * 2)  # embeddings LN + 2 LNs per layer
    assert ops["Softmax"] == 2
    assert ops["Shape"] == 0  # static: every Reshape target is an initializer
    inits = {t.name for t in model.graph.initializer}
    for n in model.graph.node:
        if n.op_type == "Reshape":
            assert n.input[1] in inits


def test_bert_dynamic_shapes_runs_and_matches_static():
    dyn = zoo.bert_encoder(seq=16, layers=2, dynamic_shapes=True)
    onnx.checker.check_model(dyn, full_check=True)
    for vi in [*dyn.graph.input, *dyn.graph.output]:
        dims = vi.type.tensor_type.shape.dim
        assert dims[0].dim_param == "batch" and dims[1].dim_param == "seq"
    ops = collections.Counter(n.op_type for n in dyn.graph.node)
    assert ops["Shape"] and ops["Concat"] and ops["Unsqueeze"]
    inits = {t.name for t in dyn.graph.initializer}
    assert all(n.input[1] not in inits for n in dyn.graph.node if n.op_type == "Reshape")

    feeds = zoo.random_inputs(dyn, seed=3, shapes={"batch": 2, "seq": 16})
    assert feeds["input_ids"].shape == (2, 16)
    out = _run(dyn, feeds)
    assert out.shape == (2, 16, 256)
    assert np.isfinite(out).all()

    # Same seed, same weights: the static export must compute the same thing.
    static = zoo.bert_encoder(batch=2, seq=16, layers=2)
    np.testing.assert_allclose(_run(static, feeds), out, rtol=1e-5, atol=1e-5)

    # The same dynamic graph serves other shapes too.
    assert _run(dyn, zoo.random_inputs(dyn, shapes={"batch": 1, "seq": 7})).shape == (1, 7, 256)


def test_random_inputs():
    model = zoo.bert_encoder(seq=8, layers=1, vocab=50)
    feeds = zoo.random_inputs(model, seed=0)
    assert set(feeds) == {"input_ids", "attention_mask"}
    assert feeds["input_ids"].dtype == np.int64
    assert feeds["input_ids"].min() >= 0 and feeds["input_ids"].max() < 50
    assert (feeds["attention_mask"] == 1).all()
    assert zoo.random_inputs(model, max_id=3)["input_ids"].max() < 3
    again = zoo.random_inputs(model, seed=0)
    assert all(np.array_equal(feeds[k], again[k]) for k in feeds)

    cnn = _model("resnet18-64-symbolic-batch")
    assert zoo.random_inputs(cnn)["input"].shape == (1, 3, 64, 64)
    assert zoo.random_inputs(cnn, shapes={"N": 4})["input"].shape == (4, 3, 64, 64)
    assert zoo.random_inputs(cnn, shapes={"input": (5, 3, 64, 64)})["input"].shape[0] == 5


def test_seeds_are_deterministic():
    a = zoo.mobilenet_v2(image=32, seed=7)
    b = zoo.mobilenet_v2(image=32, seed=7)
    c = zoo.mobilenet_v2(image=32, seed=8)
    assert a.SerializeToString() == b.SerializeToString()
    assert a.graph.initializer[0].raw_data != c.graph.initializer[0].raw_data


def test_zoo_registry():
    assert set(zoo.ZOO) == {"resnet18", "mobilenet_v2", "bert"}
    assert zoo.ZOO["bert"] is zoo.bert_encoder


@pytest.mark.parametrize(
    "bad",
    [{"hidden": 250, "heads": 4}, {"seq": 600}, {"batch": 0}, {"batch": ""}, {"layers": 0}],
)
def test_bert_rejects_bad_arguments(bad):
    with pytest.raises(ValueError):
        zoo.bert_encoder(**bad)
